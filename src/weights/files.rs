//! Reading `.pth` (zip + safe pickle) and `.safetensors` into a [`StateDict`], and writing
//! `.safetensors` with torchvision's keys.
//!
//! Files are untrusted. Reading is two steps: [`WeightsFile`] indexes every tensor (key, dtype,
//! shape, where its bytes lie) and checks each view against its storage with checked
//! arithmetic, reading no element; then [`WeightsFile::read_for`] materialises only the
//! tensors a model expects, with the shapes it expects. Sizes the file declares (zip entry
//! sizes, view extents) are never used to allocate before they are checked against the bytes
//! that really exist.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};

use super::pickle::{self, DType, PickleError, TensorRef, Value};
use crate::error::{io_err, Error, Result};

/// Tensor values: floats are widened to f32, integer buffers kept as i64.
#[derive(Clone, Debug, PartialEq)]
pub enum Values {
    F32(Vec<f32>),
    I64(Vec<i64>),
    /// Not read: the key or its shape does not fit the model the file was read for
    /// ([`WeightsFile::read_for`]); kept so the key check can name it.
    Skipped,
}

/// One named tensor with torch's shape.
#[derive(Clone, Debug, PartialEq)]
pub struct TorchTensor {
    pub shape: Vec<usize>,
    pub values: Values,
}

/// `state_dict()` as torch names it: key → tensor, sorted by key.
pub type StateDict = BTreeMap<String, TorchTensor>;

/// A compressed zip entry may inflate to at most this many times the file's size (or
/// [`MIN_INFLATE_CAP`]). torch stores entries uncompressed; re-zipped float weights compress
/// little, pickles more.
const MAX_INFLATE: usize = 16;
const MIN_INFLATE_CAP: usize = 64 << 20;

fn inflate_cap(file_len: usize) -> usize {
    file_len.saturating_mul(MAX_INFLATE).max(MIN_INFLATE_CAP)
}

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::BadWeights {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Reads every tensor of a `.pth` or `.safetensors` file, picked by its first bytes. With no
/// model to check against, the elements read are bounded by the file's size in bytes.
pub fn read_state_dict(path: &Path) -> Result<StateDict> {
    WeightsFile::open(path)?.read_all()
}

/// [`read_state_dict`] on bytes already in memory; `path` only names them in errors.
pub fn parse_state_dict(path: &Path, bytes: &[u8]) -> Result<StateDict> {
    WeightsFile::parse(path, Cow::Borrowed(bytes))?.read_all()
}

/// Where one tensor's elements lie.
#[derive(Clone, Debug)]
enum Source {
    /// A strided view into a `.pth` storage: the zip entry, element offset and strides.
    Pth {
        entry: String,
        offset: usize,
        stride: Vec<usize>,
    },
    /// A contiguous byte range of a `.safetensors` buffer.
    Range(usize, usize),
}

#[derive(Clone, Debug)]
struct Entry {
    key: String,
    dtype: DType,
    shape: Vec<usize>,
    numel: usize,
    source: Source,
}

/// A weights file, indexed but not yet read: see the module header.
pub struct WeightsFile<'a> {
    path: PathBuf,
    bytes: Cow<'a, [u8]>,
    entries: Vec<Entry>,
}

impl WeightsFile<'static> {
    /// Reads and indexes a file.
    pub fn open(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(io_err(path))?;
        WeightsFile::parse(path, Cow::Owned(bytes))
    }
}

impl<'a> WeightsFile<'a> {
    /// Indexes bytes in memory; `path` only names them in errors.
    pub fn parse(path: &Path, bytes: Cow<'a, [u8]>) -> Result<Self> {
        let entries = if bytes.starts_with(b"PK\x03\x04") {
            index_pth(path, &bytes)?
        } else if bytes.len() >= 2 && bytes[0] == 0x80 && bytes[1] <= 5 {
            return Err(bad(
                path,
                "this is torch's legacy (pre-1.6) format; re-save it with torch>=1.6: torch.save(torch.load(f), f)",
            ));
        } else {
            index_safetensors(path, &bytes)?
        };
        Ok(WeightsFile {
            path: path.to_path_buf(),
            bytes,
            entries,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every tensor's key and torch shape, as the file declares them (already checked to lie
    /// inside the file).
    pub fn shapes(&self) -> BTreeMap<&str, &[usize]> {
        self.entries
            .iter()
            .map(|e| (e.key.as_str(), e.shape.as_slice()))
            .collect()
    }

    /// Reads the tensors whose key and shape appear in `expected` (a model's
    /// `state_dict_shapes()`); every other key comes back as [`Values::Skipped`], with its
    /// declared shape, and allocates nothing.
    pub fn read_for(&self, expected: &[(String, Vec<usize>)]) -> Result<StateDict> {
        let want: BTreeMap<&str, &[usize]> = expected.iter().map(|(k, s)| (k.as_str(), s.as_slice())).collect();
        self.read(|e| want.get(e.key.as_str()) == Some(&e.shape.as_slice()))
    }

    /// Reads every tensor. Without a model to check shapes against, the elements read in all
    /// may not exceed the file's size in bytes (each element needs at least one byte unless
    /// views overlap).
    pub fn read_all(&self) -> Result<StateDict> {
        let total = self.entries.iter().fold(0usize, |a, e| a.saturating_add(e.numel));
        if total > self.bytes.len() {
            return Err(bad(
                &self.path,
                format!(
                    "its views claim {total} elements, more than its {} bytes can hold (overlapping views); re-save with tensors made .contiguous()",
                    self.bytes.len()
                ),
            ));
        }
        self.read(|_| true)
    }

    fn read(&self, wanted: impl Fn(&Entry) -> bool) -> Result<StateDict> {
        let path = &self.path;
        // Bytes of each storage that the wanted views reach (checked at indexing).
        let mut need: BTreeMap<&str, usize> = BTreeMap::new();
        for e in self.entries.iter().filter(|e| wanted(e)) {
            if let Source::Pth { entry, offset, stride } = &e.source {
                let end =
                    view_end(e.dtype, *offset, &e.shape, stride).map_err(|m| bad(path, format!("`{}`: {m}", e.key)))?;
                let n = need.entry(entry.as_str()).or_default();
                *n = (*n).max(end);
            }
        }
        let mut zip = None;
        let mut storages: BTreeMap<&str, Cow<'_, [u8]>> = BTreeMap::new();
        let mut out = StateDict::new();
        for e in &self.entries {
            let values = if !wanted(e) {
                Values::Skipped
            } else {
                match &e.source {
                    Source::Range(s, t) => convert(e.dtype, &self.bytes[*s..*t]),
                    Source::Pth { entry, offset, stride } => {
                        if !storages.contains_key(entry.as_str()) {
                            if zip.is_none() {
                                zip = Some(open_zip(path, &self.bytes)?);
                            }
                            let z = zip.as_mut().ok_or_else(|| bad(path, "zip archive unavailable"))?;
                            let n = need.get(entry.as_str()).copied().unwrap_or(0);
                            storages.insert(entry.as_str(), read_entry(path, &self.bytes, z, entry, n)?);
                        }
                        let storage = &storages[entry.as_str()];
                        gather(e, *offset, stride, storage).map_err(|m| bad(path, format!("`{}`: {m}", e.key)))?
                    }
                }
            };
            out.insert(
                e.key.clone(),
                TorchTensor {
                    shape: e.shape.clone(),
                    values,
                },
            );
        }
        Ok(out)
    }
}

fn open_zip<'b>(path: &Path, bytes: &'b [u8]) -> Result<zip::ZipArchive<std::io::Cursor<&'b [u8]>>> {
    zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| bad(path, format!("corrupt zip archive ({e}); the file may be truncated")))
}

/// The first `want` bytes of a zip entry (all of it for `usize::MAX`). Stored entries are
/// borrowed from the file; compressed ones are inflated to at most `want` bytes and
/// [`inflate_cap`] of the file's size, whatever size the entry declares.
fn read_entry<'b>(
    path: &Path,
    bytes: &'b [u8],
    zip: &mut zip::ZipArchive<std::io::Cursor<&'b [u8]>>,
    name: &str,
    want: usize,
) -> Result<Cow<'b, [u8]>> {
    let mut f = zip
        .by_name(name)
        .map_err(|e| bad(path, format!("missing archive entry {name}: {e}")))?;
    let declared = usize::try_from(f.size()).unwrap_or(usize::MAX);
    if want != usize::MAX && want > declared {
        return Err(bad(
            path,
            format!("{name} holds {declared} bytes but its tensors need {want} (truncated or crafted file?)"),
        ));
    }
    let want = want.min(declared);
    if f.compression() == zip::CompressionMethod::Stored {
        // torch.save stores entries uncompressed: borrow them instead of copying 100 MB.
        let start = usize::try_from(f.data_start()).unwrap_or(usize::MAX);
        return bytes
            .get(start..start.saturating_add(want))
            .filter(|s| s.len() == want)
            .map(Cow::Borrowed)
            .ok_or_else(|| bad(path, format!("{name} runs past the end of the file (truncated file?)")));
    }
    let cap = inflate_cap(bytes.len());
    if want > cap {
        return Err(bad(
            path,
            format!("{name} would inflate to {want} bytes, over the {cap} allowed for a {}-byte file; re-save it with torch.save", bytes.len()),
        ));
    }
    let mut buf = Vec::new();
    (&mut f)
        .take(want as u64)
        .read_to_end(&mut buf)
        .map_err(|e| bad(path, format!("cannot read {name}: {e} (truncated file?)")))?;
    if buf.len() != want {
        return Err(bad(
            path,
            format!("{name} ends after {} of {want} bytes (truncated file?)", buf.len()),
        ));
    }
    Ok(Cow::Owned(buf))
}

fn index_pth(path: &Path, bytes: &[u8]) -> Result<Vec<Entry>> {
    let mut zip = open_zip(path, bytes)?;
    let pkl_name = zip
        .file_names()
        .find(|n| n.ends_with("data.pkl") && n.matches('/').count() == 1)
        .map(str::to_string)
        .ok_or_else(|| bad(path, "no data.pkl in the archive: not a torch.save file"))?;
    let prefix = &pkl_name[..pkl_name.len() - "data.pkl".len()];
    if let Ok(order) = read_entry(path, bytes, &mut zip, &format!("{prefix}byteorder"), usize::MAX) {
        if *order != *b"little" {
            return Err(bad(path, "big-endian checkpoints are not supported"));
        }
    }
    let pkl = read_entry(path, bytes, &mut zip, &pkl_name, usize::MAX)?;
    let top = pickle::load(&pkl).map_err(|e| match e {
        PickleError::Forbidden(global) => Error::UnsafePickle {
            path: path.to_path_buf(),
            global,
        },
        PickleError::Malformed(m) => bad(path, m),
    })?;
    let top = match top {
        // Accept {"state_dict": {...}} and {"model": {...}} wrappers, as training scripts save them.
        Value::Dict(d) if !d.items.is_empty() && d.items.iter().all(|(_, v)| matches!(v, Value::Dict(_))) => d
            .items
            .iter()
            .find(|(k, _)| matches!(k, Value::Str(s) if &**s == "state_dict" || &**s == "model"))
            .map(|(_, v)| v.clone())
            .ok_or_else(|| bad(path, "nested dicts but no `state_dict` or `model` entry"))?,
        v => v,
    };
    let Value::Dict(items) = top else {
        return Err(bad(
            path,
            "the pickle is not a dict of tensors; save model.state_dict(), not the model",
        ));
    };
    // Storage sizes, from the zip's directory: checked against the real file below.
    let mut sizes: BTreeMap<String, usize> = BTreeMap::new();
    let cap = inflate_cap(bytes.len());
    let mut entries = Vec::with_capacity(items.items.len());
    for (k, v) in &items.items {
        let Value::Str(key) = k else {
            return Err(bad(path, "a state-dict key is not a string"));
        };
        let Value::Tensor(t) = v else {
            return Err(bad(path, format!("`{key}` is {}, not a tensor", v.kind())));
        };
        let entry = format!("{prefix}data/{}", t.storage_key);
        let size = match sizes.get(&entry) {
            Some(&s) => s,
            None => {
                let f = zip
                    .by_name(&entry)
                    .map_err(|e| bad(path, format!("`{key}`: missing archive entry {entry}: {e}")))?;
                let declared = usize::try_from(f.size()).unwrap_or(usize::MAX);
                // What the entry can really hold: a stored one lies in the file.
                let real = if f.compression() == zip::CompressionMethod::Stored {
                    let start = usize::try_from(f.data_start()).unwrap_or(usize::MAX);
                    bytes.len().saturating_sub(start)
                } else {
                    cap
                };
                drop(f);
                let s = declared.min(real);
                sizes.insert(entry.clone(), s);
                s
            }
        };
        let numel = check_view(t, size).map_err(|m| bad(path, format!("`{key}`: {m}")))?;
        entries.push(Entry {
            key: key.to_string(),
            dtype: t.dtype,
            shape: t.shape.clone(),
            numel,
            source: Source::Pth {
                entry,
                offset: t.offset,
                stride: t.stride.clone(),
            },
        });
    }
    Ok(entries)
}

/// The element count of `shape`, or `None` when it overflows.
fn numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |a, &s| a.checked_mul(s))
}

/// One past the last byte a view reads, with checked arithmetic.
fn view_end(dtype: DType, offset: usize, shape: &[usize], stride: &[usize]) -> std::result::Result<usize, String> {
    let overflow = || "its offset, sizes and strides overflow".to_string();
    if shape.len() != stride.len() {
        return Err("shape and stride ranks differ".into());
    }
    if shape.contains(&0) {
        return Ok(0);
    }
    let mut last = offset;
    for (&s, &st) in shape.iter().zip(stride) {
        last = (s - 1)
            .checked_mul(st)
            .and_then(|x| last.checked_add(x))
            .ok_or_else(overflow)?;
    }
    last.checked_add(1)
        .and_then(|n| n.checked_mul(dtype.size()))
        .ok_or_else(overflow)
}

/// Checks that a view lies inside a storage of `storage_bytes` and that it does not claim
/// more elements than the storage holds (stride-0 views of a few floats can claim 10^12).
/// Returns its element count.
fn check_view(t: &TensorRef, storage_bytes: usize) -> std::result::Result<usize, String> {
    let numel = numel(&t.shape).ok_or("its element count overflows")?;
    let end = view_end(t.dtype, t.offset, &t.shape, &t.stride)?;
    if end > storage_bytes {
        return Err(format!(
            "its view needs {end} bytes but its storage holds {storage_bytes} (truncated or crafted file?)"
        ));
    }
    let held = storage_bytes / t.dtype.size();
    if numel > held {
        return Err(format!(
            "its view of shape {:?} claims {numel} elements over a storage of {held} (overlapping strides); re-save it with .contiguous()",
            t.shape
        ));
    }
    Ok(numel)
}

/// Copies a (possibly strided) view out of its storage. The view was checked at indexing;
/// it is checked again against the bytes actually read.
fn gather(e: &Entry, offset: usize, stride: &[usize], storage: &[u8]) -> std::result::Result<Values, String> {
    let es = e.dtype.size();
    let end = view_end(e.dtype, offset, &e.shape, stride)?;
    if end > storage.len() {
        return Err(format!(
            "its view needs {end} bytes but its storage holds {} (truncated file?)",
            storage.len()
        ));
    }
    if e.numel == 0 {
        return Ok(convert(e.dtype, &[]));
    }
    // State dicts are almost always contiguous: convert the bytes in one pass.
    let mut contiguous = true;
    let mut expect = 1usize;
    for (&s, &st) in e.shape.iter().zip(stride).rev() {
        contiguous &= s <= 1 || st == expect;
        expect = expect.saturating_mul(s);
    }
    if contiguous {
        return Ok(convert(e.dtype, &storage[offset * es..(offset + e.numel) * es]));
    }
    let mut bytes = Vec::with_capacity(e.numel * es);
    let mut pos = vec![0usize; e.shape.len()];
    for _ in 0..e.numel {
        // In range: every index is at most the view's last element, checked above.
        let i = offset + pos.iter().zip(stride).map(|(p, s)| p * s).sum::<usize>();
        bytes.extend_from_slice(&storage[i * es..(i + 1) * es]);
        for d in (0..pos.len()).rev() {
            pos[d] += 1;
            if pos[d] < e.shape[d] {
                break;
            }
            pos[d] = 0;
        }
    }
    Ok(convert(e.dtype, &bytes))
}

fn index_safetensors(path: &Path, bytes: &[u8]) -> Result<Vec<Entry>> {
    // The crate checks the header length against the buffer, that offsets tile the data
    // exactly and that each tensor's byte length is its dtype size times its (checked)
    // element count; we check the ranges again before slicing.
    let (n, meta) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| {
        bad(
            path,
            format!("neither a torch .pth (zip) nor a valid .safetensors file: {e}"),
        )
    })?;
    let base = n.checked_add(8).ok_or_else(|| bad(path, "header length overflows"))?;
    let mut entries = Vec::new();
    for (key, info) in meta.tensors() {
        let dtype = match info.dtype {
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
        let numel = numel(&info.shape).ok_or_else(|| bad(path, format!("`{key}`: its element count overflows")))?;
        let (s, t) = info.data_offsets;
        let range = base
            .checked_add(s)
            .zip(base.checked_add(t))
            .filter(|&(s, t)| s <= t && t <= bytes.len());
        let Some((s, t)) = range else {
            return Err(bad(
                path,
                format!("`{key}`: its data lies outside the file (truncated file?)"),
            ));
        };
        if numel.checked_mul(dtype.size()) != Some(t - s) {
            return Err(bad(
                path,
                format!("`{key}`: {} bytes for shape {:?}", t - s, info.shape),
            ));
        }
        entries.push(Entry {
            key,
            dtype,
            shape: info.shape.clone(),
            numel,
            source: Source::Range(s, t),
        });
    }
    entries.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(entries)
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

/// Writes `.safetensors` atomically (temporary file, then rename).
pub fn write_safetensors(path: &Path, sd: &StateDict) -> Result<()> {
    write_safetensors_with(path, sd, None)
}

/// [`write_safetensors`] with `__metadata__` (e.g. the torchvision tag of a converted release).
pub fn write_safetensors_with(
    path: &Path,
    sd: &StateDict,
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<()> {
    let bytes: Vec<(String, Vec<u8>, Dtype, Vec<usize>)> = sd
        .iter()
        .map(|(k, t)| match &t.values {
            Values::F32(v) => Ok((
                k.clone(),
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                Dtype::F32,
                t.shape.clone(),
            )),
            Values::I64(v) => Ok((
                k.clone(),
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                Dtype::I64,
                t.shape.clone(),
            )),
            Values::Skipped => Err(bad(path, format!("`{k}` was not read, so it cannot be written"))),
        })
        .collect::<Result<_>>()?;
    let views = bytes
        .iter()
        .map(|(k, b, dt, shape)| TensorView::new(*dt, shape.clone(), b).map(|v| (k.clone(), v)))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(path, e.to_string()))?;
    let data = safetensors::serialize(views, metadata).map_err(|e| bad(path, e.to_string()))?;
    write_atomic(path, &data)
}

/// Temporary file in the same folder, fsync, rename: a crash never leaves half a file.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    replace_atomic(path, |tmp| {
        let mut f = std::fs::File::create(tmp)?;
        f.write_all(data)?;
        f.sync_all()
    })
}

/// Replaces `path` with what `fill` puts at a temporary path in the same folder, by a rename
/// (and the folder synced): a crash leaves the old file or the new one, never half of one.
pub(crate) fn replace_atomic(path: &Path, fill: impl FnOnce(&Path) -> std::io::Result<()>) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    // A stale one from a killed run of the same pid would make a hard link fail.
    let _ = std::fs::remove_file(&tmp);
    let replace = || -> std::io::Result<()> {
        fill(&tmp)?;
        std::fs::rename(&tmp, path)?;
        // The rename itself reaches the disk only with the folder's entry.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    };
    replace().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::Io {
            path: path.to_path_buf(),
            source: e,
        }
    })
}
