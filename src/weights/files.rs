//! Reading `.pth` (zip + safe pickle) and `.safetensors` into a [`StateDict`], and writing
//! `.safetensors` with torchvision's keys.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};

use super::pickle::{self, DType, PickleError, TensorRef, Value};
use crate::error::{io_err, Error, Result};

/// Tensor values: floats are widened to f32, integer buffers kept as i64.
#[derive(Clone, Debug, PartialEq)]
pub enum Values {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

/// One named tensor with torch's shape.
#[derive(Clone, Debug, PartialEq)]
pub struct TorchTensor {
    pub shape: Vec<usize>,
    pub values: Values,
}

/// `state_dict()` as torch names it: key → tensor, sorted by key.
pub type StateDict = BTreeMap<String, TorchTensor>;

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::BadWeights {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Reads a `.pth` or `.safetensors` file, picked by its first bytes.
pub fn read_state_dict(path: &Path) -> Result<StateDict> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    parse_state_dict(path, &bytes)
}

/// [`read_state_dict`] on bytes already in memory; `path` only names them in errors.
pub fn parse_state_dict(path: &Path, bytes: &[u8]) -> Result<StateDict> {
    if bytes.starts_with(b"PK\x03\x04") {
        read_pth(path, bytes)
    } else if bytes.len() >= 2 && bytes[0] == 0x80 && bytes[1] <= 5 {
        Err(bad(
            path,
            "this is torch's legacy (pre-1.6) format; re-save it with torch>=1.6: torch.save(torch.load(f), f)",
        ))
    } else {
        read_safetensors(path, bytes)
    }
}

fn read_pth(path: &Path, bytes: &[u8]) -> Result<StateDict> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| bad(path, format!("corrupt zip archive ({e}); the file may be truncated")))?;
    let pkl_name = zip
        .file_names()
        .find(|n| n.ends_with("data.pkl") && n.matches('/').count() == 1)
        .map(str::to_string)
        .ok_or_else(|| bad(path, "no data.pkl in the archive: not a torch.save file"))?;
    let prefix = &pkl_name[..pkl_name.len() - "data.pkl".len()];
    let mut read_entry = |name: &str| -> Result<Cow<'_, [u8]>> {
        let mut f = zip
            .by_name(name)
            .map_err(|e| bad(path, format!("missing archive entry {name}: {e}")))?;
        // torch.save stores entries uncompressed: borrow them instead of copying 100 MB.
        if f.compression() == zip::CompressionMethod::Stored {
            let (start, len) = (f.data_start() as usize, f.size() as usize);
            return bytes
                .get(start..start.saturating_add(len))
                .map(Cow::Borrowed)
                .ok_or_else(|| bad(path, format!("{name} runs past the end of the file (truncated file?)")));
        }
        let mut buf = Vec::with_capacity(f.size() as usize);
        f.read_to_end(&mut buf)
            .map_err(|e| bad(path, format!("cannot read {name}: {e} (truncated file?)")))?;
        Ok(Cow::Owned(buf))
    };
    if let Ok(order) = read_entry(&format!("{prefix}byteorder")) {
        if *order != *b"little" {
            return Err(bad(path, "big-endian checkpoints are not supported"));
        }
    }
    let pkl = read_entry(&pkl_name)?;
    let top = pickle::load(&pkl).map_err(|e| match e {
        PickleError::Forbidden(global) => Error::UnsafePickle {
            path: path.to_path_buf(),
            global,
        },
        PickleError::Malformed(m) => bad(path, m),
    })?;
    let top = match top {
        // Accept {"state_dict": {...}} and {"model": {...}} wrappers, as training scripts save them.
        Value::Dict(items) if items.iter().all(|(_, v)| matches!(v, Value::Dict(_))) && !items.is_empty() => items
            .into_iter()
            .find(|(k, _)| matches!(k, Value::Str(s) if s == "state_dict" || s == "model"))
            .map(|(_, v)| v)
            .ok_or_else(|| bad(path, "nested dicts but no `state_dict` or `model` entry"))?,
        v => v,
    };
    let Value::Dict(items) = top else {
        return Err(bad(
            path,
            "the pickle is not a dict of tensors; save model.state_dict(), not the model",
        ));
    };
    let mut storages: BTreeMap<String, Cow<'_, [u8]>> = BTreeMap::new();
    let mut out = StateDict::new();
    for (k, v) in items {
        let Value::Str(key) = k else {
            return Err(bad(path, "a state-dict key is not a string"));
        };
        let Value::Tensor(t) = v else {
            return Err(bad(path, format!("`{key}` is not a tensor")));
        };
        if !storages.contains_key(&t.storage_key) {
            let data = read_entry(&format!("{prefix}data/{}", t.storage_key))?;
            storages.insert(t.storage_key.clone(), data);
        }
        let tensor = gather(&t, &storages[&t.storage_key]).map_err(|m| bad(path, format!("`{key}`: {m}")))?;
        out.insert(key, tensor);
    }
    Ok(out)
}

/// Copies a (possibly strided) view out of its storage.
fn gather(t: &TensorRef, storage: &[u8]) -> std::result::Result<TorchTensor, String> {
    if t.shape.len() != t.stride.len() {
        return Err("shape and stride ranks differ".into());
    }
    let n: usize = t.shape.iter().product();
    let es = t.dtype.size();
    let mut max = t.offset;
    for (&s, &st) in t.shape.iter().zip(&t.stride) {
        if s > 0 {
            max += (s - 1) * st;
        }
    }
    if n > 0 && (max + 1) * es > storage.len() {
        return Err(format!(
            "view needs {} bytes but its storage holds {} (truncated file?)",
            (max + 1) * es,
            storage.len()
        ));
    }
    // State dicts are almost always contiguous: convert the bytes in one pass.
    let mut contiguous = true;
    let mut expect = 1;
    for (&s, &st) in t.shape.iter().zip(&t.stride).rev() {
        contiguous &= s <= 1 || st == expect;
        expect *= s;
    }
    if contiguous {
        let bytes = &storage[t.offset * es..(t.offset + n) * es];
        return Ok(TorchTensor {
            shape: t.shape.clone(),
            values: convert(t.dtype, bytes),
        });
    }
    let mut idx = Vec::with_capacity(n);
    let mut pos = vec![0usize; t.shape.len()];
    for _ in 0..n {
        idx.push(t.offset + pos.iter().zip(&t.stride).map(|(p, s)| p * s).sum::<usize>());
        for d in (0..pos.len()).rev() {
            pos[d] += 1;
            if pos[d] < t.shape[d] {
                break;
            }
            pos[d] = 0;
        }
    }
    let mut bytes = Vec::with_capacity(n * es);
    for i in idx {
        bytes.extend_from_slice(&storage[i * es..(i + 1) * es]);
    }
    Ok(TorchTensor {
        shape: t.shape.clone(),
        values: convert(t.dtype, &bytes),
    })
}

/// Little-endian elements to our value types.
fn convert(dtype: DType, d: &[u8]) -> Values {
    fn le<const N: usize>(c: &[u8]) -> [u8; N] {
        c.try_into().unwrap_or([0; N])
    }
    match dtype {
        DType::F32 => Values::F32(d.chunks_exact(4).map(|c| f32::from_le_bytes(le(c))).collect()),
        DType::F64 => Values::F32(d.chunks_exact(8).map(|c| f64::from_le_bytes(le(c)) as f32).collect()),
        DType::F16 => Values::F32(
            d.chunks_exact(2)
                .map(|c| half::f16::from_le_bytes(le(c)).to_f32())
                .collect(),
        ),
        DType::BF16 => Values::F32(
            d.chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes(le(c)).to_f32())
                .collect(),
        ),
        DType::I64 => Values::I64(d.chunks_exact(8).map(|c| i64::from_le_bytes(le(c))).collect()),
        DType::I32 => Values::I64(d.chunks_exact(4).map(|c| i32::from_le_bytes(le(c)) as i64).collect()),
        DType::I16 => Values::I64(d.chunks_exact(2).map(|c| i16::from_le_bytes(le(c)) as i64).collect()),
        DType::I8 => Values::I64(d.iter().map(|&b| b as i8 as i64).collect()),
        DType::U8 | DType::Bool => Values::I64(d.iter().map(|&b| b as i64).collect()),
    }
}

fn read_safetensors(path: &Path, bytes: &[u8]) -> Result<StateDict> {
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| {
        bad(
            path,
            format!("neither a torch .pth (zip) nor a valid .safetensors file: {e}"),
        )
    })?;
    let mut out = StateDict::new();
    for (key, view) in st.tensors() {
        let dtype = match view.dtype() {
            Dtype::F32 => DType::F32,
            Dtype::F64 => DType::F64,
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::BF16,
            Dtype::I64 => DType::I64,
            Dtype::I32 => DType::I32,
            Dtype::I16 => DType::I16,
            Dtype::I8 => DType::I8,
            Dtype::U8 => DType::U8,
            Dtype::BOOL => DType::Bool,
            other => return Err(bad(path, format!("`{key}` has unsupported dtype {other:?}"))),
        };
        let values = convert(dtype, view.data());
        out.insert(
            key,
            TorchTensor {
                shape: view.shape().to_vec(),
                values,
            },
        );
    }
    Ok(out)
}

/// Writes `.safetensors` atomically (temporary file, then rename).
pub fn write_safetensors(path: &Path, sd: &StateDict) -> Result<()> {
    let bytes: Vec<(String, Vec<u8>, Dtype, Vec<usize>)> = sd
        .iter()
        .map(|(k, t)| match &t.values {
            Values::F32(v) => (
                k.clone(),
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                Dtype::F32,
                t.shape.clone(),
            ),
            Values::I64(v) => (
                k.clone(),
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                Dtype::I64,
                t.shape.clone(),
            ),
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(k, b, dt, shape)| TensorView::new(*dt, shape.clone(), b).map(|v| (k.clone(), v)))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(path, e.to_string()))?;
    let data = safetensors::serialize(views, None).map_err(|e| bad(path, e.to_string()))?;
    write_atomic(path, &data)
}

/// Temporary file in the same folder, fsync, rename: a crash never leaves half a file.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::Io {
            path: path.to_path_buf(),
            source: e,
        }
    })
}
