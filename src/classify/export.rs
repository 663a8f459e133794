//! Embedding files: JSON lines, NumPy `.npy` (+ `FILE.paths.txt`), safetensors (paths in its
//! metadata) and Parquet (`image`, `embedding: fixed_size_list<float32>[D]`), and reading an
//! index back for `resnet similar`.
//!
//! Files are streamed where the format allows (JSONL, npy, Parquet row groups), written to a
//! temporary name and renamed into place at [`EmbeddingSink::finish`], so a failed run leaves
//! no half file.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::{Embedding, Layer};
use crate::error::{io_err, Error, Result};
use crate::video::FrameAt;
use crate::weights::{self, StateDict, TorchTensor, Values};

/// A row's name in the files that hold one string per row: the path, or `PATH#t=TIME`.
fn row_name(image: &str, at: Option<FrameAt>) -> String {
    match at {
        Some(a) => format!("{image}#t={}", a.time),
        None => image.to_string(),
    }
}

/// An embedding file format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmbedFormat {
    Jsonl,
    Npy,
    Parquet,
    Safetensors,
}

impl EmbedFormat {
    pub fn name(self) -> &'static str {
        match self {
            EmbedFormat::Jsonl => "jsonl",
            EmbedFormat::Npy => "npy",
            EmbedFormat::Parquet => "parquet",
            EmbedFormat::Safetensors => "safetensors",
        }
    }

    /// From a file name's extension (`.jsonl`, `.npy`, `.parquet`, `.safetensors`).
    pub fn from_path(p: &Path) -> Option<Self> {
        match p.extension()?.to_str()? {
            "jsonl" | "json" => Some(EmbedFormat::Jsonl),
            "npy" => Some(EmbedFormat::Npy),
            "parquet" => Some(EmbedFormat::Parquet),
            "safetensors" => Some(EmbedFormat::Safetensors),
            _ => None,
        }
    }
}

/// Receives embeddings one by one, in input order.
pub trait EmbeddingSink {
    /// `at`: where in the video `image` the frame was, for a video's frame. JSON lines get
    /// `frame` and `time` keys; the other formats name the row `IMAGE#t=TIME` (a W3C media
    /// fragment).
    fn push(&mut self, image: &str, at: Option<FrameAt>, e: &Embedding) -> Result<()>;
    /// Completes the file (and renames it into place); returns how many rows it holds.
    fn finish(self: Box<Self>) -> Result<usize>;
}

/// Opens a sink for `format`; `out` is a file, or stdout (`None`, JSONL only).
pub fn sink(format: EmbedFormat, out: Option<&Path>, layer: Layer) -> Result<Box<dyn EmbeddingSink>> {
    if format == EmbedFormat::Jsonl && layer != Layer::AvgPool {
        return Err(Error::Usage(format!(
            "a {layer} map is written to npy, parquet or safetensors only (--format), not JSON lines"
        )));
    }
    match (format, out) {
        (EmbedFormat::Jsonl, None) => Ok(Box::new(Jsonl {
            out: Box::new(std::io::stdout()),
            file: None,
            n: 0,
        })),
        (_, None) => Err(Error::Usage(format!(
            "{} embeddings need a file: pass --out FILE",
            format.name()
        ))),
        (EmbedFormat::Jsonl, Some(p)) => {
            let file = Partial::create(p)?;
            Ok(Box::new(Jsonl {
                out: Box::new(BufWriter::new(file.file()?)),
                file: Some(file),
                n: 0,
            }))
        }
        (EmbedFormat::Npy, Some(p)) => Npy::create(p, layer).map(|s| Box::new(s) as _),
        (EmbedFormat::Safetensors, Some(p)) => Ok(Box::new(Safetensors {
            path: p.to_path_buf(),
            layer,
            paths: Vec::new(),
            values: Vec::new(),
            shape: None,
        })),
        #[cfg(feature = "parquet")]
        (EmbedFormat::Parquet, Some(p)) => parquet::Writer::create(p, layer).map(|s| Box::new(s) as _),
        #[cfg(not(feature = "parquet"))]
        (EmbedFormat::Parquet, Some(_)) => Err(Error::Usage(
            "this build has no Parquet support; rebuild with the `parquet` feature".into(),
        )),
    }
}

/// A write error, naming the file.
fn write_err(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// A file written under a temporary name and renamed into place when complete.
struct Partial {
    tmp: PathBuf,
    dest: PathBuf,
}

impl Partial {
    fn create(dest: &Path) -> Result<Self> {
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dest.with_file_name(format!(".{name}.partial"));
        File::create(&tmp).map_err(write_err(dest))?;
        Ok(Partial {
            tmp,
            dest: dest.to_path_buf(),
        })
    }

    fn file(&self) -> Result<File> {
        File::options()
            .write(true)
            .open(&self.tmp)
            .map_err(write_err(&self.tmp))
    }

    fn commit(&self) -> Result<()> {
        std::fs::rename(&self.tmp, &self.dest).map_err(write_err(&self.dest))
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        // Gone after a commit; a failed run's partial file is removed.
        let _ = std::fs::remove_file(&self.tmp);
    }
}

struct Jsonl {
    out: Box<dyn Write>,
    file: Option<Partial>,
    n: usize,
}

/// One JSON line, in the documented key order.
#[derive(serde::Serialize)]
struct JsonLine<'a> {
    image: &'a str,
    #[serde(flatten)]
    at: Option<FrameAt>,
    embedding: &'a [f32],
}

impl Jsonl {
    fn err(&self, e: impl std::fmt::Display) -> Error {
        Error::Write {
            path: self
                .file
                .as_ref()
                .map_or_else(|| "standard output".into(), |f| f.dest.clone()),
            reason: e.to_string(),
        }
    }
}

impl EmbeddingSink for Jsonl {
    fn push(&mut self, image: &str, at: Option<FrameAt>, e: &Embedding) -> Result<()> {
        let line = serde_json::to_string(&JsonLine {
            image,
            at,
            embedding: &e.values,
        })
        .map_err(|e| self.err(e))?;
        writeln!(self.out, "{line}").map_err(|e| self.err(e))?;
        self.n += 1;
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<usize> {
        if let Err(e) = self.out.flush() {
            return Err(self.err(e));
        }
        if let Some(f) = &self.file {
            f.commit()?;
        }
        Ok(self.n)
    }
}

/// NumPy's `.npy` v1.0, little-endian float32, C order. Written by hand: the format is a
/// padded header and the raw values, and a crate (ndarray-npy) would bring ndarray with it.
/// The header is rewritten with the final row count at the end, so rows stream to disk.
struct Npy {
    file: Partial,
    out: BufWriter<File>,
    paths: Vec<String>,
    shape: Option<Vec<usize>>,
    layer: Layer,
}

/// Room for any header we write, so the final one fits where the first was.
const NPY_HEADER: usize = 128;

fn npy_header(shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let tuple = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {tuple}, }}");
    let mut h = b"\x93NUMPY\x01\x00".to_vec();
    let len = NPY_HEADER - 10;
    h.extend((len as u16).to_le_bytes());
    h.extend(dict.as_bytes());
    h.resize(NPY_HEADER - 1, b' ');
    h.push(b'\n');
    h
}

impl Npy {
    fn create(p: &Path, layer: Layer) -> Result<Self> {
        let file = Partial::create(p)?;
        let mut out = BufWriter::new(file.file()?);
        out.write_all(&npy_header(&[0, 0])).map_err(write_err(p))?;
        Ok(Npy {
            file,
            out,
            paths: Vec::new(),
            shape: None,
            layer,
        })
    }
}

fn same_shape(shape: &mut Option<Vec<usize>>, e: &Embedding, image: &str) -> Result<()> {
    match shape {
        Some(s) if *s != e.shape => Err(Error::Usage(format!(
            "{image}: its map is {:?}, the earlier ones {s:?}; stage maps in one file need one input size (use --resize/--crop or --stretch)",
            e.shape
        ))),
        Some(_) => Ok(()),
        None => {
            *shape = Some(e.shape.clone());
            Ok(())
        }
    }
}

impl EmbeddingSink for Npy {
    fn push(&mut self, image: &str, at: Option<FrameAt>, e: &Embedding) -> Result<()> {
        same_shape(&mut self.shape, e, image)?;
        let bytes: Vec<u8> = e.values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.out.write_all(&bytes).map_err(write_err(&self.file.dest))?;
        self.paths.push(row_name(image, at));
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<usize> {
        let Npy {
            file,
            out,
            paths,
            shape,
            layer,
        } = *self;
        let dest = file.dest.clone();
        let mut f = out.into_inner().map_err(|e| Error::Write {
            path: dest.clone(),
            reason: e.to_string(),
        })?;
        let mut dims = vec![paths.len()];
        dims.extend(shape.unwrap_or(match layer {
            Layer::AvgPool => vec![0],
            Layer::Stage(_) => vec![0, 0, 0],
        }));
        f.seek(SeekFrom::Start(0)).map_err(write_err(&dest))?;
        f.write_all(&npy_header(&dims)).map_err(write_err(&dest))?;
        f.sync_all().map_err(write_err(&dest))?;
        let list = dest.with_file_name(format!(
            "{}.paths.txt",
            dest.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        ));
        weights::write_atomic(
            &list,
            paths.iter().map(|p| format!("{p}\n")).collect::<String>().as_bytes(),
        )?;
        file.commit()?;
        Ok(paths.len())
    }
}

/// One tensor `embeddings` `[N, …]`; the paths (a JSON list) and the layer in its metadata.
/// Held in memory until the end: safetensors' header needs every size first.
struct Safetensors {
    path: PathBuf,
    layer: Layer,
    paths: Vec<String>,
    values: Vec<f32>,
    shape: Option<Vec<usize>>,
}

impl EmbeddingSink for Safetensors {
    fn push(&mut self, image: &str, at: Option<FrameAt>, e: &Embedding) -> Result<()> {
        same_shape(&mut self.shape, e, image)?;
        self.values.extend_from_slice(&e.values);
        self.paths.push(row_name(image, at));
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<usize> {
        let mut shape = vec![self.paths.len()];
        shape.extend(self.shape.unwrap_or_else(|| vec![0]));
        let mut sd = StateDict::new();
        sd.insert(
            "embeddings".into(),
            TorchTensor {
                shape,
                values: Values::F32(self.values),
            },
        );
        let meta = HashMap::from([
            (
                "paths".to_string(),
                serde_json::to_string(&self.paths).map_err(|e| Error::Write {
                    path: self.path.clone(),
                    reason: e.to_string(),
                })?,
            ),
            ("layer".to_string(), self.layer.to_string()),
        ]);
        weights::write_safetensors_with(&self.path, &sd, Some(meta))?;
        Ok(self.paths.len())
    }
}

/// An embedding index: unit-length rows for cosine similarity, with their image paths.
pub struct Index {
    pub paths: Vec<String>,
    pub dim: usize,
    /// `[paths.len(), dim]`, each row L2-normalised.
    pub rows: Vec<f32>,
}

impl Index {
    /// Reads a Parquet, npy (+ `.paths.txt`) or safetensors embedding file.
    pub fn read(path: &Path) -> Result<Self> {
        let (paths, dim, mut rows) = match EmbedFormat::from_path(path) {
            #[cfg(feature = "parquet")]
            Some(EmbedFormat::Parquet) => parquet::read(path)?,
            Some(EmbedFormat::Safetensors) => read_safetensors(path)?,
            _ => {
                return Err(Error::Usage(format!(
                    "{}: an index is a .parquet or .safetensors file from `resnet embed`",
                    path.display()
                )))
            }
        };
        if dim == 0 || rows.len() != paths.len() * dim {
            return Err(Error::Usage(format!(
                "{}: {} values do not make {} rows of {dim}",
                path.display(),
                rows.len(),
                paths.len()
            )));
        }
        for r in rows.chunks_exact_mut(dim) {
            unit(r);
        }
        Ok(Index { paths, dim, rows })
    }

    pub fn len(&self) -> usize {
        self.paths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.rows[i * self.dim..(i + 1) * self.dim]
    }
}

/// `(paths, dim, rows)` of a safetensors embedding file.
fn read_safetensors(path: &Path) -> Result<(Vec<String>, usize, Vec<f32>)> {
    use safetensors::{Dtype, SafeTensors};
    let bad = |reason: String| Error::BadWeights {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let paths: Vec<String> = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("paths"))
        .and_then(|p| serde_json::from_str(p).ok())
        .ok_or_else(|| bad("no `paths` in its metadata; write it with `resnet embed --format safetensors`".into()))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let t = st
        .tensor("embeddings")
        .map_err(|_| bad("no `embeddings` tensor; write it with `resnet embed --format safetensors`".into()))?;
    if t.dtype() != Dtype::F32 {
        return Err(bad("`embeddings` is not float32".into()));
    }
    let rows: Vec<f32> = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let dim = t.shape().iter().skip(1).product();
    Ok((paths, dim, rows))
}

/// Scales `v` to unit L2 norm in place (zero stays zero).
pub fn unit(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

#[cfg(feature = "parquet")]
mod parquet {
    //! Parquet through the `arrow`/`parquet` crates, so that pandas, polars and DuckDB read it.

    use std::fs::File;
    use std::path::Path;
    use std::sync::Arc;

    use arrow_array::builder::{FixedSizeListBuilder, Float32Builder, StringBuilder};
    use arrow_array::{Array, FixedSizeListArray, Float32Array, RecordBatch, StringArray};
    use arrow_schema::{DataType, Field, Schema};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::arrow::ArrowWriter;

    use super::{same_shape, EmbeddingSink, Partial};
    use crate::classify::{Embedding, Layer};
    use crate::error::{io_err, Error, Result};
    use crate::video::FrameAt;

    /// Rows per row group.
    const GROUP: usize = 1024;

    fn err(path: &Path, e: impl std::fmt::Display) -> Error {
        Error::Write {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }
    }

    pub struct Writer {
        file: Partial,
        writer: Option<(ArrowWriter<File>, Arc<Schema>)>,
        layer: Layer,
        shape: Option<Vec<usize>>,
        images: Vec<String>,
        values: Vec<f32>,
        n: usize,
    }

    impl Writer {
        pub fn create(p: &Path, layer: Layer) -> Result<Self> {
            Ok(Writer {
                file: Partial::create(p)?,
                writer: None,
                layer,
                shape: None,
                images: Vec::new(),
                values: Vec::new(),
                n: 0,
            })
        }

        fn flush_group(&mut self) -> Result<()> {
            let dest = self.file.dest.clone();
            let dim: usize = self.shape.as_ref().map_or(0, |s| s.iter().product());
            if self.writer.is_none() {
                let schema = Arc::new(schema(dim, self.layer, self.shape.as_deref().unwrap_or(&[])));
                let w = ArrowWriter::try_new(self.file.file()?, schema.clone(), None).map_err(|e| err(&dest, e))?;
                self.writer = Some((w, schema));
            }
            if self.images.is_empty() {
                return Ok(());
            }
            let mut names = StringBuilder::new();
            for i in self.images.drain(..) {
                names.append_value(i);
            }
            let mut list = FixedSizeListBuilder::new(Float32Builder::new(), dim as i32)
                .with_field(Arc::new(Field::new("item", DataType::Float32, false)));
            for row in self.values.chunks_exact(dim.max(1)) {
                list.values().append_slice(row);
                list.append(true);
            }
            self.values.clear();
            let Some((w, schema)) = self.writer.as_mut() else {
                return Ok(());
            };
            let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(names.finish()), Arc::new(list.finish())])
                .map_err(|e| err(&dest, e))?;
            w.write(&batch).map_err(|e| err(&dest, e))
        }
    }

    fn schema(dim: usize, layer: Layer, shape: &[usize]) -> Schema {
        let item = Arc::new(Field::new("item", DataType::Float32, false));
        let meta = [
            ("layer".to_string(), layer.to_string()),
            ("shape".to_string(), format!("{shape:?}")),
        ];
        Schema::new(vec![
            Field::new("image", DataType::Utf8, false),
            Field::new("embedding", DataType::FixedSizeList(item, dim as i32), false),
        ])
        .with_metadata(std::collections::HashMap::from(meta))
    }

    impl EmbeddingSink for Writer {
        fn push(&mut self, image: &str, at: Option<FrameAt>, e: &Embedding) -> Result<()> {
            same_shape(&mut self.shape, e, image)?;
            self.images.push(super::row_name(image, at));
            self.values.extend_from_slice(&e.values);
            self.n += 1;
            if self.images.len() >= GROUP {
                self.flush_group()?;
            }
            Ok(())
        }

        fn finish(mut self: Box<Self>) -> Result<usize> {
            self.flush_group()?;
            let dest = self.file.dest.clone();
            if let Some((w, _)) = self.writer.take() {
                w.close().map_err(|e| err(&dest, e))?;
            }
            self.file.commit()?;
            Ok(self.n)
        }
    }

    /// `(paths, dim, rows)` of an embedding Parquet file.
    pub fn read(path: &Path) -> Result<(Vec<String>, usize, Vec<f32>)> {
        let f = File::open(path).map_err(io_err(path))?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(f)
            .and_then(|b| b.build())
            .map_err(|e| err(path, e))?;
        let (mut paths, mut rows, mut dim) = (Vec::new(), Vec::new(), 0usize);
        for batch in reader {
            let batch = batch.map_err(|e| err(path, e))?;
            let want = "columns image (string) and embedding (fixed_size_list<float32>), as `resnet embed` writes";
            let images = batch
                .column_by_name("image")
                .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                .ok_or_else(|| err(path, want))?;
            let list = batch
                .column_by_name("embedding")
                .and_then(|c| c.as_any().downcast_ref::<FixedSizeListArray>())
                .ok_or_else(|| err(path, want))?;
            dim = list.value_length() as usize;
            let values = list
                .values()
                .as_any()
                .downcast_ref::<Float32Array>()
                .ok_or_else(|| err(path, want))?;
            paths.extend(images.iter().map(|s| s.unwrap_or_default().to_string()));
            let start = list.offset() * dim;
            rows.extend_from_slice(&values.values()[start..start + list.len() * dim]);
        }
        Ok((paths, dim, rows))
    }
}
