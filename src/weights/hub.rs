//! torchvision's published weights: tags, URLs, the cache and a hash-checked download,
//! following torch.hub's rules (the file name carries a sha256 prefix).

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{io_err, Error, Result};
use crate::model::ModelName;

/// torchvision's weight tags.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightTag {
    ImageNet1kV1,
    ImageNet1kV2,
    /// V2 where it exists, else V1 (as torchvision's `DEFAULT`).
    Default,
}

impl WeightTag {
    pub fn as_str(self) -> &'static str {
        match self {
            WeightTag::ImageNet1kV1 => "IMAGENET1K_V1",
            WeightTag::ImageNet1kV2 => "IMAGENET1K_V2",
            WeightTag::Default => "DEFAULT",
        }
    }
}

impl std::str::FromStr for WeightTag {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_uppercase().as_str() {
            "IMAGENET1K_V1" | "V1" => Ok(WeightTag::ImageNet1kV1),
            "IMAGENET1K_V2" | "V2" => Ok(WeightTag::ImageNet1kV2),
            "DEFAULT" => Ok(WeightTag::Default),
            _ => Err(Error::UnknownTag(s.to_string())),
        }
    }
}

/// One published checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Release {
    pub model: ModelName,
    pub tag: WeightTag,
    pub url: &'static str,
    /// torchvision's eval transform for these weights: resize shorter side, then crop 224.
    pub resize: usize,
}

impl Release {
    /// The file name, e.g. `resnet50-11ad3fa6.pth`.
    pub fn file_name(&self) -> &'static str {
        self.url.rsplit('/').next().unwrap_or(self.url)
    }
    /// The sha256 prefix in the file name (torch.hub's `check_hash`).
    pub fn hash_prefix(&self) -> Option<&'static str> {
        hash_prefix(self.file_name())
    }
}

/// torch.hub's rule: `name-<hex>.ext`, the hex being a sha256 prefix.
pub fn hash_prefix(file_name: &str) -> Option<&str> {
    let stem = file_name.split('.').next()?;
    let h = stem.rsplit('-').next()?;
    (h.len() >= 6 && h != stem && h.bytes().all(|b| b.is_ascii_hexdigit())).then_some(h)
}

macro_rules! releases {
    ($($model:ident $tag:ident $file:literal $resize:literal;)*) => {
        /// Every checkpoint torchvision 0.29 publishes for the ResNet family.
        pub const RELEASES: &[Release] = &[$(Release {
            model: ModelName::$model,
            tag: WeightTag::$tag,
            url: concat!("https://download.pytorch.org/models/", $file),
            resize: $resize,
        }),*];
    };
}

releases! {
    Resnet18 ImageNet1kV1 "resnet18-f37072fd.pth" 256;
    Resnet34 ImageNet1kV1 "resnet34-b627a593.pth" 256;
    Resnet50 ImageNet1kV1 "resnet50-0676ba61.pth" 256;
    Resnet50 ImageNet1kV2 "resnet50-11ad3fa6.pth" 232;
    Resnet101 ImageNet1kV1 "resnet101-63fe2227.pth" 256;
    Resnet101 ImageNet1kV2 "resnet101-cd907fc2.pth" 232;
    Resnet152 ImageNet1kV1 "resnet152-394f9c45.pth" 256;
    Resnet152 ImageNet1kV2 "resnet152-f82ba261.pth" 232;
    Resnext50_32x4d ImageNet1kV1 "resnext50_32x4d-7cdf4587.pth" 256;
    Resnext50_32x4d ImageNet1kV2 "resnext50_32x4d-1a0047aa.pth" 232;
    Resnext101_32x8d ImageNet1kV1 "resnext101_32x8d-8ba56ff5.pth" 256;
    Resnext101_32x8d ImageNet1kV2 "resnext101_32x8d-110c445d.pth" 232;
    Resnext101_64x4d ImageNet1kV1 "resnext101_64x4d-173b62eb.pth" 232;
    WideResnet50_2 ImageNet1kV1 "wide_resnet50_2-95faca4d.pth" 256;
    WideResnet50_2 ImageNet1kV2 "wide_resnet50_2-9ba9bcbe.pth" 232;
    WideResnet101_2 ImageNet1kV1 "wide_resnet101_2-32ee1156.pth" 256;
    WideResnet101_2 ImageNet1kV2 "wide_resnet101_2-d733dc28.pth" 232;
}

/// The checkpoint for a model and tag; `DEFAULT` picks V2 where it exists.
pub fn release(model: ModelName, tag: WeightTag) -> Result<Release> {
    let of_model = || RELEASES.iter().filter(move |r| r.model == model);
    let found = match tag {
        WeightTag::Default => of_model()
            .find(|r| r.tag == WeightTag::ImageNet1kV2)
            .or_else(|| of_model().next()),
        t => of_model().find(|r| r.tag == t),
    };
    found.copied().ok_or_else(|| {
        let available: Vec<&str> = of_model().map(|r| r.tag.as_str()).collect();
        Error::NoSuchTag {
            model: model.to_string(),
            tag: tag.as_str().to_string(),
            available: if available.is_empty() {
                "none (no pretrained weights are published)".into()
            } else {
                available.join(", ")
            },
        }
    })
}

/// `$RESNET_CACHE`, else `$XDG_CACHE_HOME/resnet`, else `~/.cache/resnet`.
pub fn cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("RESNET_CACHE").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("XDG_CACHE_HOME").filter(|p| !p.is_empty()) {
        return PathBuf::from(p).join("resnet");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("resnet")
}

fn offline() -> bool {
    std::env::var("RESNET_OFFLINE").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Progress of a download: `(bytes so far, total if known)`.
pub type Progress<'a> = &'a mut dyn FnMut(u64, Option<u64>);

/// The cached file for `url`, downloading it first if needed (hash-checked, atomic).
pub fn fetch(url: &str, cache: &Path, progress: Progress<'_>) -> Result<PathBuf> {
    let name = url.rsplit('/').next().unwrap_or(url);
    let dest = cache.join(name);
    if dest.is_file() {
        return Ok(dest);
    }
    if offline() {
        return Err(Error::Offline {
            file: name.to_string(),
            cache: cache.to_path_buf(),
            url: url.to_string(),
        });
    }
    std::fs::create_dir_all(cache).map_err(io_err(cache))?;
    download(url, &dest, hash_prefix(name), progress)?;
    Ok(dest)
}

#[cfg(feature = "hub")]
fn download(url: &str, dest: &Path, want: Option<&str>, progress: Progress<'_>) -> Result<()> {
    use std::io::Write;
    let fail = |reason: String| Error::Download {
        url: url.to_string(),
        reason,
        cache: dest.parent().map(Path::to_path_buf).unwrap_or_default(),
    };
    let mut resp = ureq::get(url).call().map_err(|e| fail(e.to_string()))?;
    let total = resp.body().content_length();
    let mut reader = resp.body_mut().with_config().limit(u64::MAX).reader();
    let tmp = dest.with_extension("partial");
    let mut file = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut done = 0u64;
    let result = loop {
        match reader.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                hasher.update(&buf[..n]);
                if let Err(e) = file.write_all(&buf[..n]) {
                    break Err(Error::Io {
                        path: tmp.clone(),
                        source: e,
                    });
                }
                done += n as u64;
                progress(done, total);
            }
            Err(e) => break Err(fail(format!("connection lost after {done} bytes: {e}"))),
        }
    };
    let result = result.and_then(|()| match total {
        Some(t) if t != done => Err(fail(format!("got {done} of {t} bytes"))),
        _ => Ok(()),
    });
    let result = result.and_then(|()| {
        let got = format!("{:x}", hasher.finalize());
        match want {
            Some(w) if !got.starts_with(w) => Err(Error::HashMismatch {
                url: url.to_string(),
                got,
                want: w.to_string(),
            }),
            _ => Ok(()),
        }
    });
    let result = result.and_then(|()| {
        file.sync_all().map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, dest).map_err(io_err(dest))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(not(feature = "hub"))]
fn download(url: &str, dest: &Path, _: Option<&str>, _: Progress<'_>) -> Result<()> {
    Err(Error::Download {
        url: url.to_string(),
        reason: "this build has no `hub` feature".into(),
        cache: dest.parent().map(Path::to_path_buf).unwrap_or_default(),
    })
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(io_err(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}
