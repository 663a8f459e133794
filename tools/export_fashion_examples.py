"""Writes examples/fashion/: the first test image of each Fashion-MNIST class as a 28x28 grey PNG.

Usage: python3 tools/export_fashion_examples.py [IDX_DIR]   (default /usr/share/datasets/fashion-mnist)
Standard library only. File names carry the test-set index and the true class.
"""
import gzip
import struct
import sys
import zlib
from pathlib import Path

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def read(path: Path) -> bytes:
    for p in (path.with_name(path.name + ".gz"), path):
        if p.exists():
            return gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
    sys.exit(f"{path}[.gz] not found")


def png(w: int, h: int, grey: bytes) -> bytes:
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    raw = b"".join(b"\0" + grey[y * w : (y + 1) * w] for y in range(h))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def main():
    src = Path(sys.argv[1] if len(sys.argv) > 1 else "/usr/share/datasets/fashion-mnist")
    images = read(src / "t10k-images-idx3-ubyte")
    labels = read(src / "t10k-labels-idx1-ubyte")
    n, rows, cols = struct.unpack(">III", images[4:16])
    out = Path(__file__).resolve().parents[1] / "examples" / "fashion"
    out.mkdir(parents=True, exist_ok=True)
    done = set()
    for i in range(n):
        label = labels[8 + i]
        if label in done:
            continue
        done.add(label)
        name = CLASSES[label].lower().replace("/", "-").replace(" ", "-")
        px = images[16 + i * rows * cols : 16 + (i + 1) * rows * cols]
        (out / f"{i:04d}-{name}.png").write_bytes(png(cols, rows, px))
        if len(done) == len(CLASSES):
            break
    print(f"wrote {len(done)} images to {out}")


if __name__ == "__main__":
    main()
