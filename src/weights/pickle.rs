//! A pickle reader that never executes code: it understands exactly what
//! `torch.save(model.state_dict())` writes and refuses every other global.
//!
//! Written here rather than taken from a crate because the safety rule is the point: general
//! pickle crates either run no persistent-id protocol (needed for torch storages) or resolve
//! globals we must refuse. The allow-list is [`allowed_global`].
//!
//! The file is untrusted, so the machine is bounded ([`Limits`]): operations, stack, memo,
//! nesting depth and bytes allocated. Values are shared through `Rc` (memo GET and DUP cost
//! nothing), containers are copy-on-write, and nesting is capped, so neither a walk nor `Drop`
//! can recurse deeper than [`Limits::max_depth`].

use std::collections::HashMap;
use std::rc::Rc;

/// A value on the pickle stack. Only the shapes a state dict uses exist.
// Scalars other than ints are parsed to stay in sync with the stream, then ignored.
#[allow(dead_code)]
#[derive(Clone)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    Tuple(Rc<Node<Value>>),
    List(Rc<Node<Value>>),
    Dict(Rc<Node<(Value, Value)>>),
    Global(Global),
    /// A persistent id resolved to a storage: its dtype and its record name in the zip.
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorRef>),
}

/// A container's items and its nesting depth (1 + the deepest item's).
#[derive(Clone)]
pub struct Node<T> {
    pub items: Vec<T>,
    depth: u32,
}

/// A torch storage named by a persistent id.
pub struct StorageRef {
    pub dtype: DType,
    pub key: String,
}

impl Value {
    fn depth(&self) -> u32 {
        match self {
            Value::Tuple(n) | Value::List(n) => n.depth,
            Value::Dict(n) => n.depth,
            Value::Tensor(_) => 1,
            _ => 0,
        }
    }

    /// What kind of value this is, for error messages (never the value itself: it may be huge).
    pub fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "a bool",
            Value::Int(_) => "an int",
            Value::Float(_) => "a float",
            Value::Str(_) => "a string",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "a tuple",
            Value::List(_) => "a list",
            Value::Dict(_) => "a dict",
            Value::Global(_) => "a global",
            Value::Storage(_) => "a storage",
            Value::Tensor(_) => "a tensor",
        }
    }
}

/// The globals a state dict may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildParameter,
    Storage(DType),
}

/// Storage element types torch uses in checkpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    F64,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }
}

/// A tensor view into a storage, as `_rebuild_tensor_v2` describes it. Nothing here is
/// checked yet: `files.rs` checks the view against its storage before reading it.
#[derive(Clone, Debug)]
pub struct TensorRef {
    pub dtype: DType,
    pub storage_key: String,
    pub offset: usize,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
}

/// Bounds on what one pickle may make the reader do.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_ops: usize,
    pub max_stack: usize,
    pub max_memo: usize,
    pub max_depth: u32,
    /// Bytes of strings, containers and copies made, in all.
    pub max_alloc: usize,
}

impl Limits {
    /// Limits for a pickle of `len` bytes: a state dict's pickle is a few hundred bytes per
    /// tensor, so these are far above any real one and far below what hurts.
    pub fn for_len(len: usize) -> Self {
        Limits {
            max_ops: len.saturating_add(1).min(100_000_000),
            max_stack: 1 << 20,
            max_memo: 1 << 20,
            max_depth: 64,
            max_alloc: len.saturating_mul(32).saturating_add(1 << 20),
        }
    }
}

fn allowed_global(module: &str, name: &str) -> Option<Global> {
    let storage = |d| Some(Global::Storage(d));
    match (module, name) {
        ("collections", "OrderedDict") => Some(Global::OrderedDict),
        ("torch._utils", "_rebuild_tensor_v2") => Some(Global::RebuildTensorV2),
        ("torch._utils", "_rebuild_parameter") => Some(Global::RebuildParameter),
        ("torch", "FloatStorage") => storage(DType::F32),
        ("torch", "DoubleStorage") => storage(DType::F64),
        ("torch", "HalfStorage") => storage(DType::F16),
        ("torch", "BFloat16Storage") => storage(DType::BF16),
        ("torch", "LongStorage") => storage(DType::I64),
        ("torch", "IntStorage") => storage(DType::I32),
        ("torch", "ShortStorage") => storage(DType::I16),
        ("torch", "CharStorage") => storage(DType::I8),
        ("torch", "ByteStorage") => storage(DType::U8),
        ("torch", "BoolStorage") => storage(DType::Bool),
        _ => None,
    }
}

/// Why a pickle could not be read.
#[derive(Debug)]
pub enum PickleError {
    /// A global outside the allow-list, as `module.name`.
    Forbidden(String),
    Malformed(String),
}

fn bad<T>(m: impl Into<String>) -> Result<T, PickleError> {
    Err(PickleError::Malformed(m.into()))
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        if self.data.len() - self.pos < n {
            return bad("pickle ends early (truncated file?)");
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], PickleError> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, PickleError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, PickleError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, PickleError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn line(&mut self) -> Result<&'a str, PickleError> {
        let rest = &self.data[self.pos..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| PickleError::Malformed("unterminated line".into()))?;
        self.pos += end + 1;
        std::str::from_utf8(&rest[..end]).or_else(|_| bad("non-UTF-8 text"))
    }
    /// A length read from the file, as usize; `take` then checks it against what is left.
    fn len(&mut self, n: u64) -> Result<usize, PickleError> {
        usize::try_from(n).or_else(|_| bad("length does not fit in memory"))
    }
    fn string(&mut self, n: usize) -> Result<Rc<str>, PickleError> {
        std::str::from_utf8(self.take(n)?)
            .map(Rc::from)
            .or_else(|_| bad("non-UTF-8 string"))
    }
}

fn as_usize(v: &Value) -> Result<usize, PickleError> {
    match v {
        Value::Int(i) if *i >= 0 => usize::try_from(*i).or_else(|_| bad("integer too large")),
        _ => bad(format!("expected a non-negative integer, got {}", v.kind())),
    }
}

fn usize_list(v: &Value) -> Result<Vec<usize>, PickleError> {
    match v {
        Value::Tuple(n) | Value::List(n) if n.items.len() <= 64 => n.items.iter().map(as_usize).collect(),
        Value::Tuple(_) | Value::List(_) => bad("a tensor with more than 64 dimensions"),
        _ => bad("expected a tuple of integers"),
    }
}

fn call(f: Global, args: &[Value]) -> Result<Value, PickleError> {
    match f {
        Global::OrderedDict => Ok(Value::Dict(Rc::new(Node {
            items: Vec::new(),
            depth: 1,
        }))),
        Global::RebuildParameter => args
            .first()
            .cloned()
            .ok_or_else(|| PickleError::Malformed("empty _rebuild_parameter".into())),
        Global::RebuildTensorV2 => {
            if args.len() < 4 {
                return bad("_rebuild_tensor_v2 needs (storage, offset, size, stride, ...)");
            }
            let Value::Storage(s) = &args[0] else {
                return bad("_rebuild_tensor_v2 without a storage");
            };
            Ok(Value::Tensor(Rc::new(TensorRef {
                dtype: s.dtype,
                storage_key: s.key.clone(),
                offset: as_usize(&args[1])?,
                shape: usize_list(&args[2])?,
                stride: usize_list(&args[3])?,
            })))
        }
        Global::Storage(_) => bad("a storage type cannot be called"),
    }
}

/// The machine's state, with every limit checked where it can be exceeded.
struct Machine {
    limits: Limits,
    stack: Vec<Value>,
    /// Stack heights at each MARK (CPython's metastack): nothing pops below the last one.
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    allocated: usize,
}

impl Machine {
    fn charge(&mut self, bytes: usize) -> Result<(), PickleError> {
        self.allocated = self.allocated.saturating_add(bytes);
        if self.allocated > self.limits.max_alloc {
            return bad(format!(
                "the pickle asks for more than {} bytes of values; a state dict needs far less",
                self.limits.max_alloc
            ));
        }
        Ok(())
    }

    fn fence(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn push(&mut self, v: Value) -> Result<(), PickleError> {
        if self.stack.len() >= self.limits.max_stack {
            return bad(format!("the pickle stack grows past {} values", self.limits.max_stack));
        }
        self.charge(size_of::<Value>())?;
        self.stack.push(v);
        Ok(())
    }

    fn pop(&mut self) -> Result<Value, PickleError> {
        if self.stack.len() <= self.fence() {
            return bad("stack underflow");
        }
        self.stack
            .pop()
            .ok_or_else(|| PickleError::Malformed("stack underflow".into()))
    }

    fn top(&self) -> Result<&Value, PickleError> {
        if self.stack.len() <= self.fence() {
            return bad("stack underflow");
        }
        self.stack
            .last()
            .ok_or_else(|| PickleError::Malformed("stack underflow".into()))
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, PickleError> {
        let m = self
            .marks
            .pop()
            .ok_or_else(|| PickleError::Malformed("missing MARK".into()))?;
        Ok(self.stack.split_off(m.min(self.stack.len())))
    }

    fn pop_n(&mut self, n: usize) -> Result<Vec<Value>, PickleError> {
        if self.stack.len() < self.fence() + n {
            return bad("stack underflow");
        }
        Ok(self.stack.split_off(self.stack.len() - n))
    }

    fn depth_of<'v>(&self, items: impl Iterator<Item = &'v Value>) -> Result<u32, PickleError> {
        let d = 1 + items.map(Value::depth).max().unwrap_or(0);
        if d > self.limits.max_depth {
            return bad(format!("values nested deeper than {} levels", self.limits.max_depth));
        }
        Ok(d)
    }

    fn seq(&mut self, items: Vec<Value>) -> Result<Rc<Node<Value>>, PickleError> {
        let depth = self.depth_of(items.iter())?;
        Ok(Rc::new(Node { items, depth }))
    }

    fn pairs(&mut self, items: Vec<Value>) -> Result<Vec<(Value, Value)>, PickleError> {
        if !items.len().is_multiple_of(2) {
            return bad("odd number of items for a dict");
        }
        self.charge(items.len() * size_of::<Value>())?;
        let mut out = Vec::with_capacity(items.len() / 2);
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            out.push((k, v));
        }
        Ok(out)
    }

    /// The container on top of the stack, made unique first (copy-on-write, charged).
    fn extend_top(&mut self, new: Items) -> Result<(), PickleError> {
        let fence = self.fence();
        let new_depth = 1 + match &new {
            Items::Values(v) => v.iter().map(Value::depth).max().unwrap_or(0),
            Items::Pairs(p) => p.iter().map(|(k, v)| k.depth().max(v.depth())).max().unwrap_or(0),
        };
        if new_depth > self.limits.max_depth {
            return bad(format!("values nested deeper than {} levels", self.limits.max_depth));
        }
        if self.stack.len() <= fence {
            return bad("stack underflow");
        }
        let (copy, added) = match (self.stack.last(), &new) {
            (Some(Value::List(n)), Items::Values(v)) => (shared(n) * n.items.len(), v.len()),
            (Some(Value::Dict(n)), Items::Pairs(p)) => (shared(n) * n.items.len() * 2, p.len() * 2),
            (Some(Value::List(_)), _) => return bad("SETITEM on a list"),
            (Some(Value::Dict(_)), _) => return bad("APPEND to a dict"),
            (Some(other), _) => return bad(format!("adding items to {}", other.kind())),
            (None, _) => return bad("stack underflow"),
        };
        self.charge((copy + added) * size_of::<Value>())?;
        match (self.stack.last_mut(), new) {
            (Some(Value::List(n)), Items::Values(v)) => {
                let n = Rc::make_mut(n);
                n.items.extend(v);
                n.depth = n.depth.max(new_depth);
            }
            (Some(Value::Dict(n)), Items::Pairs(p)) => {
                let n = Rc::make_mut(n);
                n.items.extend(p);
                n.depth = n.depth.max(new_depth);
            }
            _ => return bad("adding items to a non-container"),
        }
        Ok(())
    }

    fn memo_put(&mut self, i: u32) -> Result<(), PickleError> {
        let v = self.top()?.clone();
        if self.memo.len() >= self.limits.max_memo && !self.memo.contains_key(&i) {
            return bad(format!("the pickle memo grows past {} entries", self.limits.max_memo));
        }
        self.charge(2 * size_of::<Value>())?;
        self.memo.insert(i, v);
        Ok(())
    }
}

enum Items {
    Values(Vec<Value>),
    Pairs(Vec<(Value, Value)>),
}

/// 1 when copy-on-write will copy (the node is shared), else 0.
fn shared<T>(n: &Rc<Node<T>>) -> usize {
    usize::from(Rc::strong_count(n) + Rc::weak_count(n) > 1)
}

/// Runs the pickle and returns its top-level value, within [`Limits::for_len`].
pub fn load(data: &[u8]) -> Result<Value, PickleError> {
    load_with(data, Limits::for_len(data.len()))
}

/// Runs the pickle within `limits`.
pub fn load_with(data: &[u8], limits: Limits) -> Result<Value, PickleError> {
    let mut r = Reader { data, pos: 0 };
    let mut m = Machine {
        limits,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        allocated: 0,
    };
    for _ in 0..limits.max_ops {
        if let Some(top) = m.step(&mut r)? {
            return Ok(top);
        }
    }
    bad(format!("the pickle runs more than {} operations", limits.max_ops))
}

impl Machine {
    /// Runs one opcode; `Some` at STOP, with the pickle's value.
    fn step(&mut self, r: &mut Reader<'_>) -> Result<Option<Value>, PickleError> {
        let op = r.u8()?;
        match op {
            0x80 => {
                r.u8()?; // PROTO
            }
            0x95 => {
                r.u64()?; // FRAME
            }
            b'.' => return self.pop().map(Some),
            b'(' => {
                if self.marks.len() >= self.limits.max_stack {
                    return bad("too many MARKs");
                }
                self.marks.push(self.stack.len())
            }
            b'N' | 0x88 | 0x89 | b'J' | b'K' | b'M' | 0x8a | b'I' | b'G' => {
                let v = scalar(op, r)?;
                self.push(v)?
            }
            b'X' | 0x8c | 0x8d | b'U' | b'T' | b'C' | b'B' => self.text(op, r)?,
            b'}' | b']' | b')' | b't' | 0x85..=0x87 | b'l' | b'd' => self.container(op)?,
            b'a' | b'e' | b's' | b'u' => self.add_items(op)?,
            b'q' | b'r' | 0x94 | b'h' | b'j' => self.memo_op(op, r)?,
            b'0' => {
                self.pop()?;
            }
            b'1' => {
                self.pop_mark()?;
            }
            b'2' => {
                let v = self.top()?.clone();
                self.push(v)?
            }
            b'c' | 0x93 | b'R' | 0x81 | b'b' | b'Q' => self.object(op, r)?,
            other => return bad(format!("unsupported pickle opcode 0x{other:02x}")),
        }
        Ok(None)
    }

    /// Strings and bytes: their length is checked against what is left of the file.
    fn text(&mut self, op: u8, r: &mut Reader<'_>) -> Result<(), PickleError> {
        let n = match op {
            b'X' | b'T' | b'B' => r.u32()? as u64,
            0x8d => r.u64()?,
            _ => r.u8()? as u64,
        };
        let n = r.len(n)?;
        let v = if matches!(op, b'C' | b'B') {
            Value::Bytes(Rc::from(r.take(n)?))
        } else {
            Value::Str(r.string(n)?)
        };
        self.charge(n)?;
        self.push(v)
    }

    /// Empty containers, and tuples, lists and dicts built from the stack.
    fn container(&mut self, op: u8) -> Result<(), PickleError> {
        let v = match op {
            b'}' => Value::Dict(Rc::new(Node {
                items: Vec::new(),
                depth: 1,
            })),
            b']' => Value::List(self.seq(Vec::new())?),
            b')' => Value::Tuple(self.seq(Vec::new())?),
            b't' => {
                let items = self.pop_mark()?;
                Value::Tuple(self.seq(items)?)
            }
            0x85..=0x87 => {
                let items = self.pop_n((op - 0x84) as usize)?;
                Value::Tuple(self.seq(items)?)
            }
            b'l' => {
                let items = self.pop_mark()?;
                Value::List(self.seq(items)?)
            }
            _ => {
                let items = self.pop_mark()?;
                let pairs = self.pairs(items)?;
                let depth = self.depth_of(pairs.iter().flat_map(|(k, v)| [k, v]))?;
                Value::Dict(Rc::new(Node { items: pairs, depth }))
            }
        };
        self.push(v)
    }

    /// APPEND, APPENDS, SETITEM, SETITEMS on the container on top of the stack.
    fn add_items(&mut self, op: u8) -> Result<(), PickleError> {
        let items = match op {
            b'a' => Items::Values(vec![self.pop()?]),
            b'e' => Items::Values(self.pop_mark()?),
            b's' => {
                let v = self.pop()?;
                let k = self.pop()?;
                Items::Pairs(vec![(k, v)])
            }
            _ => {
                let items = self.pop_mark()?;
                Items::Pairs(self.pairs(items)?)
            }
        };
        self.extend_top(items)
    }

    /// PUT, MEMOIZE and GET: the memo shares values, it never copies them.
    fn memo_op(&mut self, op: u8, r: &mut Reader<'_>) -> Result<(), PickleError> {
        match op {
            b'q' => {
                let i = r.u8()? as u32;
                self.memo_put(i)
            }
            b'r' => {
                let i = r.u32()?;
                self.memo_put(i)
            }
            0x94 => {
                let i = u32::try_from(self.memo.len()).or_else(|_| bad("memo overflow"))?;
                self.memo_put(i)
            }
            _ => {
                let i = if op == b'h' { r.u8()? as u32 } else { r.u32()? };
                let v = self
                    .memo
                    .get(&i)
                    .cloned()
                    .ok_or_else(|| PickleError::Malformed(format!("memo {i} missing")))?;
                self.push(v)
            }
        }
    }

    /// Globals (only the allow-list), calls, object state and persistent ids (storages).
    fn object(&mut self, op: u8, r: &mut Reader<'_>) -> Result<(), PickleError> {
        match op {
            b'c' => {
                let module = r.line()?;
                let name = r.line()?;
                let g =
                    allowed_global(module, name).ok_or_else(|| PickleError::Forbidden(format!("{module}.{name}")))?;
                self.push(Value::Global(g))
            }
            0x93 => {
                let name = self.pop()?;
                let module = self.pop()?;
                let (Value::Str(module), Value::Str(name)) = (module, name) else {
                    return bad("STACK_GLOBAL without strings");
                };
                let g =
                    allowed_global(&module, &name).ok_or_else(|| PickleError::Forbidden(format!("{module}.{name}")))?;
                self.push(Value::Global(g))
            }
            b'R' | 0x81 => {
                let args = self.pop()?;
                let f = self.pop()?;
                let (Value::Global(g), Value::Tuple(args)) = (f, args) else {
                    return bad("REDUCE needs an allowed global and a tuple");
                };
                let v = call(g, &args.items)?;
                self.push(v)
            }
            b'b' => {
                // BUILD: object state (the state dict's `_metadata`), not needed.
                self.pop().map(drop)
            }
            _ => {
                let pid = self.pop()?;
                let Value::Tuple(t) = pid else {
                    return bad("persistent id is not a tuple");
                };
                match t.items.as_slice() {
                    [Value::Str(kind), Value::Global(Global::Storage(dtype)), Value::Str(key), ..]
                        if &**kind == "storage" =>
                    {
                        let s = StorageRef {
                            dtype: *dtype,
                            key: key.to_string(),
                        };
                        self.push(Value::Storage(Rc::new(s)))
                    }
                    _ => bad("unsupported persistent id (only torch storages are)"),
                }
            }
        }
    }
}

/// None, bools, ints and floats.
fn scalar(op: u8, r: &mut Reader<'_>) -> Result<Value, PickleError> {
    Ok(match op {
        b'N' => Value::None,
        0x88 => Value::Bool(true),
        0x89 => Value::Bool(false),
        b'J' => Value::Int(r.u32()? as i32 as i64),
        b'K' => Value::Int(r.u8()? as i64),
        b'M' => Value::Int(r.u16()? as i64),
        0x8a => {
            let n = r.u8()? as usize;
            let bytes = r.take(n)?;
            if n > 8 {
                return bad("integer wider than 64 bits");
            }
            let fill = if bytes.last().is_some_and(|b| b & 0x80 != 0) {
                0xff
            } else {
                0
            };
            let mut buf = [fill; 8];
            buf[..n].copy_from_slice(bytes);
            Value::Int(i64::from_le_bytes(buf))
        }
        b'I' => match r.line()? {
            "00" => Value::Bool(false),
            "01" => Value::Bool(true),
            l => Value::Int(l.parse().or_else(|_| bad("bad INT"))?),
        },
        _ => Value::Float(f64::from_be_bytes(r.array()?)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(body: &[u8]) -> Result<Value, PickleError> {
        let mut p = vec![0x80, 2];
        p.extend_from_slice(body);
        p.push(b'.');
        load(&p)
    }

    fn malformed(r: Result<Value, PickleError>) -> String {
        match r {
            Err(PickleError::Malformed(m)) => m,
            Err(PickleError::Forbidden(g)) => panic!("forbidden {g}"),
            Ok(v) => panic!("accepted: {}", v.kind()),
        }
    }

    #[test]
    fn dup_append_doubling_is_cheap_and_bounded() {
        // EMPTY_LIST, then 60 × (DUP, APPEND): 2^60 leaves when copied deeply; shared, the
        // list holds 60 items that share everything.
        let mut body = vec![b']'];
        for _ in 0..60 {
            body.extend_from_slice(b"2a");
        }
        assert!(matches!(run(&body), Ok(Value::List(n)) if n.items.len() == 60));
        // Each round nests one level deeper: past the limit it stops.
        let mut body = vec![b']'];
        for _ in 0..100 {
            body.extend_from_slice(b"2a");
        }
        let m = malformed(run(&body));
        assert!(m.contains("nested deeper"), "{m}");
    }

    #[test]
    fn deep_nesting_is_refused_without_recursion() {
        let mut body = vec![b'N'];
        body.extend(std::iter::repeat_n(0x85u8, 2_000_000));
        let m = malformed(run(&body));
        assert!(m.contains("nested deeper than 64"), "{m}");
    }

    #[test]
    fn memo_get_shares_and_the_allocation_budget_holds() {
        // A 1 KB string, memoised, then fetched 10^5 times into one list.
        let mut body = vec![b'X'];
        body.extend_from_slice(&1024u32.to_le_bytes());
        body.extend(std::iter::repeat_n(b'a', 1024));
        body.extend_from_slice(b"q\x000(");
        for _ in 0..100_000 {
            body.extend_from_slice(b"h\x00");
        }
        body.push(b'l');
        assert!(matches!(run(&body), Ok(Value::List(n)) if n.items.len() == 100_000));
        // Copy-on-write of a shared list, again and again, runs out of budget, not memory.
        let mut body = vec![b']'];
        for _ in 0..100_000 {
            body.extend_from_slice(b"2Na");
        }
        let m = malformed(run(&body));
        assert!(m.contains("bytes of values"), "{m}");
    }

    #[test]
    fn marks_fence_the_stack() {
        assert!(malformed(run(b"N(0")).contains("underflow"));
        assert!(malformed(run(b"(\x85")).contains("underflow"));
        assert!(malformed(run(b"t")).contains("MARK"));
        let r = load(b"\x80\x02N(N1.");
        assert!(matches!(r, Ok(Value::None)));
    }

    #[test]
    fn limits_on_stack_memo_and_ops() {
        let tight = Limits {
            max_ops: 10,
            ..Limits::for_len(1 << 20)
        };
        let m = malformed(load_with(&[b'N'; 100], tight));
        assert!(m.contains("operations"), "{m}");
        let tight = Limits {
            max_stack: 5,
            ..Limits::for_len(1 << 20)
        };
        let m = malformed(load_with(&[b'N'; 100], tight));
        assert!(m.contains("stack grows"), "{m}");
        let tight = Limits {
            max_memo: 3,
            ..Limits::for_len(1 << 20)
        };
        let m = malformed(load_with(b"Nq\x00q\x01q\x02q\x03.", tight));
        assert!(m.contains("memo grows"), "{m}");
    }

    #[test]
    fn huge_declared_lengths_fail_without_allocating() {
        let mut p = vec![0x80, 4, 0x8d];
        p.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(malformed(load(&p)).contains("ends early"));
        let mut p = vec![b'B'];
        p.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(malformed(load(&p)).contains("ends early"));
    }
}
