//! A pickle reader that never executes code: it understands exactly what
//! `torch.save(model.state_dict())` writes and refuses every other global.
//!
//! Written here rather than taken from a crate because the safety rule is the point: general
//! pickle crates either run no persistent-id protocol (needed for torch storages) or resolve
//! globals we must refuse. The allow-list is [`allowed_global`].

use std::collections::HashMap;

/// A value on the pickle stack. Only the shapes a state dict uses exist.
// Scalars other than ints are parsed to stay in sync with the stream, then ignored.
#[allow(dead_code)]
#[derive(Clone, Debug)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(Global),
    /// A persistent id resolved to a storage: its dtype and its record name in the zip.
    Storage {
        dtype: DType,
        key: String,
    },
    Tensor(TensorRef),
    Mark,
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

/// A tensor view into a storage, as `_rebuild_tensor_v2` describes it.
#[derive(Clone, Debug)]
pub struct TensorRef {
    pub dtype: DType,
    pub storage_key: String,
    pub offset: usize,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
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
    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, PickleError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap_or_default()))
    }
    fn u32(&mut self) -> Result<u32, PickleError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap_or_default()))
    }
    fn u64(&mut self) -> Result<u64, PickleError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap_or_default()))
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
    fn string(&mut self, n: usize) -> Result<String, PickleError> {
        String::from_utf8(self.take(n)?.to_vec()).or_else(|_| bad("non-UTF-8 string"))
    }
}

fn as_usize(v: &Value) -> Result<usize, PickleError> {
    match v {
        Value::Int(i) if *i >= 0 => Ok(*i as usize),
        _ => bad(format!("expected a non-negative integer, got {v:?}")),
    }
}

fn usize_list(v: &Value) -> Result<Vec<usize>, PickleError> {
    match v {
        Value::Tuple(items) | Value::List(items) => items.iter().map(as_usize).collect(),
        _ => bad("expected a tuple of integers"),
    }
}

fn call(f: Global, args: Vec<Value>) -> Result<Value, PickleError> {
    match f {
        Global::OrderedDict => Ok(Value::Dict(Vec::new())),
        Global::RebuildParameter => args
            .into_iter()
            .next()
            .ok_or_else(|| PickleError::Malformed("empty _rebuild_parameter".into())),
        Global::RebuildTensorV2 => {
            if args.len() < 4 {
                return bad("_rebuild_tensor_v2 needs (storage, offset, size, stride, ...)");
            }
            let Value::Storage { dtype, key } = &args[0] else {
                return bad("_rebuild_tensor_v2 without a storage");
            };
            Ok(Value::Tensor(TensorRef {
                dtype: *dtype,
                storage_key: key.clone(),
                offset: as_usize(&args[1])?,
                shape: usize_list(&args[2])?,
                stride: usize_list(&args[3])?,
            }))
        }
        Global::Storage(_) => bad("a storage type cannot be called"),
    }
}

/// Runs the pickle and returns its top-level value.
pub fn load(data: &[u8]) -> Result<Value, PickleError> {
    let mut r = Reader { data, pos: 0 };
    let mut stack: Vec<Value> = Vec::new();
    let mut memo: HashMap<u32, Value> = HashMap::new();
    let pop = |stack: &mut Vec<Value>| {
        stack
            .pop()
            .ok_or_else(|| PickleError::Malformed("stack underflow".into()))
    };
    let pop_mark = |stack: &mut Vec<Value>| -> Result<Vec<Value>, PickleError> {
        let m = stack
            .iter()
            .rposition(|v| matches!(v, Value::Mark))
            .ok_or_else(|| PickleError::Malformed("missing MARK".into()))?;
        let items = stack.split_off(m + 1);
        stack.pop();
        Ok(items)
    };
    loop {
        let op = r.u8()?;
        match op {
            0x80 => {
                r.u8()?; // PROTO
            }
            0x95 => {
                r.u64()?; // FRAME
            }
            b'.' => return pop(&mut stack),
            b'(' => stack.push(Value::Mark),
            b'}' => stack.push(Value::Dict(Vec::new())),
            b']' => stack.push(Value::List(Vec::new())),
            b')' => stack.push(Value::Tuple(Vec::new())),
            b'N' => stack.push(Value::None),
            0x88 => stack.push(Value::Bool(true)),
            0x89 => stack.push(Value::Bool(false)),
            b'J' => {
                let v = r.u32()? as i32;
                stack.push(Value::Int(v as i64))
            }
            b'K' => {
                let v = r.u8()?;
                stack.push(Value::Int(v as i64))
            }
            b'M' => {
                let v = r.u16()?;
                stack.push(Value::Int(v as i64))
            }
            0x8a => {
                let n = r.u8()? as usize;
                let bytes = r.take(n)?;
                if n > 8 {
                    return bad("integer wider than 64 bits");
                }
                let mut buf = [if bytes.last().is_some_and(|b| b & 0x80 != 0) {
                    0xff
                } else {
                    0
                }; 8];
                buf[..n].copy_from_slice(bytes);
                stack.push(Value::Int(i64::from_le_bytes(buf)))
            }
            b'I' => {
                let l = r.line()?;
                let v = match l {
                    "00" => Value::Bool(false),
                    "01" => Value::Bool(true),
                    _ => Value::Int(l.parse().or_else(|_| bad("bad INT"))?),
                };
                stack.push(v)
            }
            b'G' => {
                let v = f64::from_be_bytes(r.take(8)?.try_into().unwrap_or_default());
                stack.push(Value::Float(v))
            }
            b'X' => {
                let n = r.u32()? as usize;
                let s = r.string(n)?;
                stack.push(Value::Str(s))
            }
            0x8c => {
                let n = r.u8()? as usize;
                let s = r.string(n)?;
                stack.push(Value::Str(s))
            }
            0x8d => {
                let n = r.u64()? as usize;
                let s = r.string(n)?;
                stack.push(Value::Str(s))
            }
            b'U' => {
                let n = r.u8()? as usize;
                let s = r.string(n)?;
                stack.push(Value::Str(s))
            }
            b'T' => {
                let n = r.u32()? as usize;
                let s = r.string(n)?;
                stack.push(Value::Str(s))
            }
            b'C' => {
                let n = r.u8()? as usize;
                stack.push(Value::Bytes(r.take(n)?.to_vec()))
            }
            b'B' => {
                let n = r.u32()? as usize;
                stack.push(Value::Bytes(r.take(n)?.to_vec()))
            }
            b't' => {
                let items = pop_mark(&mut stack)?;
                stack.push(Value::Tuple(items))
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if stack.len() < n {
                    return bad("stack underflow in TUPLE");
                }
                let items = stack.split_off(stack.len() - n);
                stack.push(Value::Tuple(items))
            }
            b'l' => {
                let items = pop_mark(&mut stack)?;
                stack.push(Value::List(items))
            }
            b'd' => {
                let items = pop_mark(&mut stack)?;
                let mut d = Vec::new();
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    d.push((k, v));
                }
                stack.push(Value::Dict(d))
            }
            b'a' => {
                let v = pop(&mut stack)?;
                match stack.last_mut() {
                    Some(Value::List(l)) => l.push(v),
                    _ => return bad("APPEND to a non-list"),
                }
            }
            b'e' => {
                let items = pop_mark(&mut stack)?;
                match stack.last_mut() {
                    Some(Value::List(l)) => l.extend(items),
                    _ => return bad("APPENDS to a non-list"),
                }
            }
            b's' => {
                let v = pop(&mut stack)?;
                let k = pop(&mut stack)?;
                match stack.last_mut() {
                    Some(Value::Dict(d)) => d.push((k, v)),
                    _ => return bad("SETITEM on a non-dict"),
                }
            }
            b'u' => {
                let items = pop_mark(&mut stack)?;
                match stack.last_mut() {
                    Some(Value::Dict(d)) => {
                        let mut it = items.into_iter();
                        while let (Some(k), Some(v)) = (it.next(), it.next()) {
                            d.push((k, v));
                        }
                    }
                    _ => return bad("SETITEMS on a non-dict"),
                }
            }
            b'q' => {
                let i = r.u8()? as u32;
                memo.insert(
                    i,
                    stack
                        .last()
                        .cloned()
                        .ok_or_else(|| PickleError::Malformed("PUT on empty stack".into()))?,
                );
            }
            b'r' => {
                let i = r.u32()?;
                memo.insert(
                    i,
                    stack
                        .last()
                        .cloned()
                        .ok_or_else(|| PickleError::Malformed("PUT on empty stack".into()))?,
                );
            }
            0x94 => {
                let i = memo.len() as u32;
                memo.insert(
                    i,
                    stack
                        .last()
                        .cloned()
                        .ok_or_else(|| PickleError::Malformed("MEMOIZE on empty stack".into()))?,
                );
            }
            b'h' | b'j' => {
                let i = if op == b'h' { r.u8()? as u32 } else { r.u32()? };
                stack.push(
                    memo.get(&i)
                        .cloned()
                        .ok_or_else(|| PickleError::Malformed(format!("memo {i} missing")))?,
                )
            }
            b'0' => {
                pop(&mut stack)?;
            }
            b'1' => {
                pop_mark(&mut stack)?;
            }
            b'2' => {
                let v = stack
                    .last()
                    .cloned()
                    .ok_or_else(|| PickleError::Malformed("DUP on empty stack".into()))?;
                stack.push(v)
            }
            b'c' => {
                let module = r.line()?.to_string();
                let name = r.line()?.to_string();
                let g = allowed_global(&module, &name).ok_or(PickleError::Forbidden(format!("{module}.{name}")))?;
                stack.push(Value::Global(g))
            }
            0x93 => {
                let name = pop(&mut stack)?;
                let module = pop(&mut stack)?;
                let (Value::Str(module), Value::Str(name)) = (module, name) else {
                    return bad("STACK_GLOBAL without strings");
                };
                let g = allowed_global(&module, &name).ok_or(PickleError::Forbidden(format!("{module}.{name}")))?;
                stack.push(Value::Global(g))
            }
            b'R' | 0x81 => {
                let args = pop(&mut stack)?;
                let f = pop(&mut stack)?;
                let (Value::Global(g), Value::Tuple(args)) = (f, args) else {
                    return bad("REDUCE needs an allowed global and a tuple");
                };
                stack.push(call(g, args)?)
            }
            b'b' => {
                // BUILD: object state (the state dict's `_metadata`), not needed.
                pop(&mut stack)?;
            }
            b'Q' => {
                let pid = pop(&mut stack)?;
                let Value::Tuple(t) = pid else {
                    return bad("persistent id is not a tuple");
                };
                match t.as_slice() {
                    [Value::Str(kind), Value::Global(Global::Storage(dtype)), Value::Str(key), ..]
                        if kind == "storage" =>
                    {
                        stack.push(Value::Storage {
                            dtype: *dtype,
                            key: key.clone(),
                        })
                    }
                    _ => return bad("unsupported persistent id (only torch storages are)"),
                }
            }
            other => return bad(format!("unsupported pickle opcode 0x{other:02x}")),
        }
    }
}
