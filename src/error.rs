//! The library's one error type. Every message says what to do next.
//!
//! Layering: may import nothing from the crate; see the README's module order.

use std::path::PathBuf;

/// Errors from every stage of the library. The binary wraps them with `anyhow`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // ---- model
    #[error("unknown model `{0}`; run `resnet info` to list the models")]
    UnknownModel(String),
    #[error("invalid model configuration: {0}")]
    Config(String),
    #[error("{0}; set RESNET_KERNEL to one this CPU runs, or unset it")]
    Kernel(String),
    #[error("input has {got} channels but the model expects {want}; pass --in-channels or use matching images")]
    InputShape { got: usize, want: usize },

    // ---- weights
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: refusing pickle global `{global}`: only tensor-rebuild globals (torch._utils._rebuild_tensor_v2, torch.*Storage, collections.OrderedDict) are allowed. The file may be malicious; load state_dicts saved with torch.save(model.state_dict(), path)")]
    UnsafePickle { path: PathBuf, global: String },
    #[error("{path}: not a usable weights file: {reason}")]
    BadWeights { path: PathBuf, reason: String },
    #[error("weights do not fit {model}:\n{report}\npass --non-strict to load only the tensors that fit (e.g. when fine-tuning a new head)")]
    KeyMismatch { model: String, report: String },
    #[error("{model} has no weights tag {tag}; available: {available}. Or pass --weights FILE")]
    NoSuchTag {
        model: String,
        tag: String,
        available: String,
    },
    #[error("unknown weights tag `{0}`; use IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT or a file path")]
    UnknownTag(String),
    #[error("RESNET_OFFLINE is set and {file} is not in the cache ({cache}); download {url} elsewhere and pass --weights FILE, or copy it into the cache, or unset RESNET_OFFLINE")]
    Offline { file: String, cache: PathBuf, url: String },
    #[error("cannot download {url}: {reason}. Without network, download it elsewhere and pass --weights FILE (or copy it to {cache})")]
    Download {
        url: String,
        reason: String,
        cache: PathBuf,
    },
    #[error("{url}: sha256 {got} does not start with the expected {want}; the download was discarded. Retry, or pass --weights FILE")]
    HashMismatch { url: String, got: String, want: String },

    // ---- images
    #[error("{path}: cannot decode image: {reason}")]
    Image { path: String, reason: String },
    #[error("{path}: {width}x{height} is {pixels} pixels, over the limit of {max} (a decompression-bomb guard); raise --max-pixels if you trust the file")]
    TooManyPixels {
        path: String,
        width: u32,
        height: u32,
        pixels: u64,
        max: u64,
    },
    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    /// Flags or arguments that do not go together; the message says what to pass instead.
    #[error("{0}")]
    Usage(String),
    #[error("{path}: cannot write image: {reason}")]
    ImageWrite { path: PathBuf, reason: String },

    // ---- video
    #[error("`{program}` was not found; install it (Debian/Ubuntu: `apt install {package}`) or put it on PATH")]
    MissingProgram { program: String, package: String },
    #[error("{path}: cannot read video: {reason}")]
    Video { path: String, reason: String },

    // ---- data
    #[error("dataset: {0}")]
    Dataset(String),

    // ---- server
    #[error("server: {0}")]
    Serve(String),

    // ---- tensors
    #[error("tensor backend error: {0}")]
    Backend(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}
