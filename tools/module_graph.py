#!/usr/bin/env python3
"""The crate's module import graph, from `use crate::`/`crate::` paths and `super::` paths.

Prints one line per top-level module with the modules it imports, then each cycle found
(top-level modules, and files inside one module), and exits 1 if there is any. Also lists
functions longer than --max-lines (default 120). Run from the repository root:

    python3 tools/module_graph.py
"""
import argparse
import pathlib
import re
import sys

SRC = pathlib.Path("src")


def module_of(path: pathlib.Path) -> list[str]:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "mod":
        parts = parts[:-1]
    return parts


def strip_tests(text: str) -> str:
    """Drops `#[cfg(test)] mod tests { … }` bodies: tests may import anything."""
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*mod \w+\s*\{", text):
        if m.start() < i:
            continue
        out.append(text[i : m.start()])
        depth, j = 1, m.end()
        while depth and j < len(text):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j
    out.append(text[i:])
    return "".join(out)


def imports(path: pathlib.Path) -> set[tuple[str, ...]]:
    text = strip_tests(path.read_text())
    text = re.sub(r"//[^\n]*", "", text)
    me = module_of(path)
    found = set()
    # The binary's files (src/cli) name the library by its crate name.
    for m in re.finditer(r"\b(?:crate|resnet)::(\w+)(?:::(\w+))?", text):
        found.add(tuple(x for x in m.groups() if x))
    for m in re.finditer(r"\b((?:super::)+)(\w+)", text):
        ups = m.group(1).count("super::")
        # src/a/b.rs is [a, b] and src/a/mod.rs is [a]: either way `super` drops one part.
        found.add(tuple(me[: len(me) - ups]) + (m.group(2),))
    # `use crate::{a, b::c}` groups.
    for m in re.finditer(r"use (?:crate|resnet)::\{([^;]*)\};", text, re.S):
        for item in re.split(r",\s*(?![^{]*\})", m.group(1)):
            name = re.match(r"\s*(\w+)", item)
            if name:
                found.add((name.group(1),))
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, seen = [], set()

    def walk(node, stack):
        for nxt in sorted(graph.get(node, ())):
            if nxt in stack:
                cyc = stack[stack.index(nxt) :]
                key = frozenset(cyc)
                if key not in seen:
                    seen.add(key)
                    found.append(cyc + [nxt])
            elif len(stack) < 20:
                walk(nxt, stack + [nxt])

    for n in sorted(graph):
        walk(n, [n])
    return found


def long_functions(limit: int) -> list[tuple[int, str]]:
    out = []
    for path in sorted(SRC.rglob("*.rs")):
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            m = re.match(r"(\s*)(?:pub(?:\([^)]*\))? )?(?:async )?(?:unsafe )?fn (\w+)", line)
            if not m:
                continue
            indent = m.group(1)
            for j in range(i + 1, len(lines)):
                if lines[j] == indent + "}":
                    if j - i + 1 > limit:
                        out.append((j - i + 1, f"{path}:{i + 1} {m.group(2)}"))
                    break
                if lines[j].rstrip().endswith(";") and j == i:
                    break
    return sorted(out, reverse=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-lines", type=int, default=120)
    args = ap.parse_args()
    tops = {p.name if p.is_dir() else p.stem for p in SRC.iterdir()} - {"lib", "main"}
    top_graph: dict[str, set[str]] = {t: set() for t in tops}
    inner: dict[str, dict[str, set[str]]] = {}
    for path in SRC.rglob("*.rs"):
        me = module_of(path)
        if not me or me[0] not in tops:
            continue
        for imp in imports(path):
            if imp[0] in tops and imp[0] != me[0]:
                top_graph[me[0]].add(imp[0])
            elif imp[0] == me[0] and len(imp) > 1 and len(me) > 1 and imp[1] != me[1]:
                inner.setdefault(me[0], {}).setdefault(me[1], set()).add(imp[1])
    for t in sorted(top_graph):
        print(f"{t:10} -> {', '.join(sorted(top_graph[t])) or '(nothing)'}")
    bad = cycles(top_graph)
    for mod, g in sorted(inner.items()):
        bad += [[f"{mod}::{n}" for n in c] for c in cycles(g)]
    for c in bad:
        print("cycle:", " -> ".join(c))
    if not bad:
        print("no cycles")
    long = long_functions(args.max_lines)
    for n, where in long:
        print(f"function over {args.max_lines} lines: {where} ({n})")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
