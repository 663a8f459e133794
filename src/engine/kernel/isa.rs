//! Which instruction set the kernels run on, as a type. A token (`Avx512`, `Avx2`, `Neon`) can
//! only be made by detecting its features on this CPU, so a kernel that takes one cannot run
//! where its instructions would fault. [`Kernel`] is what a caller asks for; [`Isa`] is what
//! an engine got, chosen once when it is built.

use crate::error::{Error, Result};

/// Proof that this CPU has AVX-512F (x86-64 only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Avx512(());

/// Proof that this CPU has AVX2 and FMA (x86-64 only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Avx2(());

/// Proof that this CPU has NEON with FMA (aarch64 only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Neon(());

impl Avx512 {
    pub fn detect() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            return Some(Avx512(()));
        }
        None
    }
}

impl Avx2 {
    pub fn detect() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            return Some(Avx2(()));
        }
        None
    }
}

impl Neon {
    pub fn detect() -> Option<Self> {
        #[cfg(target_arch = "aarch64")]
        if std::arch::is_aarch64_feature_detected!("neon") {
            return Some(Neon(()));
        }
        None
    }
}

/// The kernel family an engine runs, holding the token its features need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// 14 × 32 tiles in zmm registers, embedded-broadcast FMAs.
    Avx512(Avx512),
    /// 6 × 16 tiles in ymm registers.
    Avx2(Avx2),
    /// 8 × 12 tiles in q registers.
    Neon(Neon),
    /// The `gemm` crate on row-major weights, on any CPU.
    Portable,
}

impl Isa {
    /// The name `RESNET_KERNEL` and the reports use.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512(_) => "avx512",
            Isa::Avx2(_) => "avx2",
            Isa::Neon(_) => "neon",
            Isa::Portable => "portable",
        }
    }

    /// Whether this runs our packed kernels (everything but `Portable`).
    pub fn packed(self) -> bool {
        self != Isa::Portable
    }

    /// The best kernel this CPU runs: the first of [`Kernel::available`].
    pub fn best() -> Isa {
        Kernel::available().into_iter().next().unwrap_or(Isa::Portable)
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which matrix kernel an engine should use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Kernel {
    /// `RESNET_KERNEL` if set, else the best this CPU runs.
    #[default]
    Auto,
    Avx512,
    Avx2,
    Neon,
    Portable,
}

impl Kernel {
    /// `avx512`, `avx2`, `neon`, `portable` or `auto`.
    pub fn parse(s: &str) -> Result<Kernel> {
        Ok(match s {
            "auto" => Kernel::Auto,
            "avx512" => Kernel::Avx512,
            "avx2" => Kernel::Avx2,
            "neon" => Kernel::Neon,
            "portable" => Kernel::Portable,
            _ => {
                return Err(Error::Kernel(format!(
                    "unknown kernel `{s}`: the kernels are avx512, avx2, neon, portable and auto"
                )))
            }
        })
    }

    /// The kernel to run, or why this CPU cannot run the one asked for.
    pub fn resolve(self) -> Result<Isa> {
        let lacks = |what: &str, name: &str| {
            let have: Vec<&str> = Kernel::available().iter().map(|i| i.name()).collect();
            Error::Kernel(format!(
                "the {name} kernel needs {what}, which this CPU lacks; it runs {}",
                have.join(", ")
            ))
        };
        match self {
            Kernel::Auto => match std::env::var("RESNET_KERNEL") {
                Ok(v) if !v.is_empty() && v != "auto" => {
                    Kernel::parse(&v).and_then(Kernel::resolve).map_err(|e| match e {
                        Error::Kernel(why) => Error::Kernel(format!("RESNET_KERNEL={v}: {why}")),
                        e => e,
                    })
                }
                _ => Ok(Isa::best()),
            },
            Kernel::Avx512 => Avx512::detect()
                .map(Isa::Avx512)
                .ok_or_else(|| lacks("AVX-512F on x86-64", "avx512")),
            Kernel::Avx2 => Avx2::detect()
                .map(Isa::Avx2)
                .ok_or_else(|| lacks("AVX2 and FMA on x86-64", "avx2")),
            Kernel::Neon => Neon::detect()
                .map(Isa::Neon)
                .ok_or_else(|| lacks("NEON on aarch64", "neon")),
            Kernel::Portable => Ok(Isa::Portable),
        }
    }

    /// Every kernel this CPU runs, best first (ending with `Portable`).
    pub fn available() -> Vec<Isa> {
        let simd = [
            Avx512::detect().map(Isa::Avx512),
            Avx2::detect().map(Isa::Avx2),
            Neon::detect().map(Isa::Neon),
        ];
        simd.into_iter().flatten().chain([Isa::Portable]).collect()
    }
}
