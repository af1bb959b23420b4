//! Numeric precision of inference.

use std::fmt;
use std::str::FromStr;

use tch::{Device, Kind};

use crate::error::Error;

/// The precision a model runs in. Weights are converted once at load time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Precision {
    /// 32-bit floats: the reference.
    Fp32,
    /// bfloat16: fast on CPUs with AMX or AVX-512 BF16 and on recent GPUs.
    Bf16,
    /// IEEE half: GPUs only.
    Fp16,
    /// bf16 where the hardware runs it fast (CUDA, CPUs with AMX/AVX512-BF16),
    /// fp32 elsewhere.
    Auto,
}

impl Precision {
    /// The precision every entry point (Rust, Python, the CLI) uses unless
    /// told otherwise: fp32, the precision the whole-image oracles hold to,
    /// so that results are the same everywhere by default. `Auto` is the
    /// faster choice (see docs/design.md section 6).
    pub const DEFAULT: Precision = Precision::Fp32;
    /// [`Precision::DEFAULT`] as users write it (for command-line defaults).
    pub const DEFAULT_NAME: &'static str = "fp32";

    /// Resolves [`Precision::Auto`] for `device`; rejects fp16 on the CPU,
    /// where libtorch's half-precision convolutions are slow or missing.
    pub fn resolve(self, device: Device) -> Result<Self, Error> {
        match (self, device) {
            (Self::Auto, Device::Cuda(_)) => Ok(Self::Bf16),
            (Self::Auto, _) => Ok(if cpu_has_fast_bf16() {
                Self::Bf16
            } else {
                Self::Fp32
            }),
            (Self::Fp16, Device::Cpu) => Err(Error::InvalidArgument {
                argument: "precision",
                message:
                    "fp16 is supported on CUDA devices only; use \"bf16\" or \"fp32\" on the CPU"
                        .to_owned(),
            }),
            (p, _) => Ok(p),
        }
    }

    /// The tensor kind of this precision (`Auto` must be resolved first).
    pub fn kind(self) -> Kind {
        match self {
            Self::Fp32 | Self::Auto => Kind::Float,
            Self::Bf16 => Kind::BFloat16,
            Self::Fp16 => Kind::Half,
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Fp32 => "fp32",
            Self::Bf16 => "bf16",
            Self::Fp16 => "fp16",
            Self::Auto => "auto",
        })
    }
}

impl FromStr for Precision {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s.trim().to_ascii_lowercase().as_str() {
            "fp32" | "float32" | "float" => Ok(Self::Fp32),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            "fp16" | "float16" | "half" => Ok(Self::Fp16),
            "auto" => Ok(Self::Auto),
            _ => Err(Error::InvalidArgument {
                argument: "precision",
                message: format!(
                    "unknown precision {s:?}; expected \"fp32\", \"bf16\", \"fp16\" or \"auto\""
                ),
            }),
        }
    }
}

/// Whether this CPU has bf16 matrix or vector units (Linux `/proc/cpuinfo`).
pub fn cpu_has_fast_bf16() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|info| {
            info.lines()
                .find(|l| l.starts_with("flags"))
                .is_some_and(|flags| {
                    flags
                        .split_whitespace()
                        .any(|f| f == "amx_bf16" || f == "avx512_bf16")
                })
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_named_as_it_prints() {
        assert_eq!(Precision::DEFAULT.to_string(), Precision::DEFAULT_NAME);
        assert_eq!(
            Precision::DEFAULT_NAME.parse::<Precision>().unwrap(),
            Precision::DEFAULT
        );
    }

    #[test]
    fn parses_and_resolves() {
        assert_eq!("BF16".parse::<Precision>().unwrap(), Precision::Bf16);
        assert!("int8".parse::<Precision>().is_err());
        assert!(Precision::Fp16.resolve(Device::Cpu).is_err());
        assert_eq!(
            Precision::Auto.resolve(Device::Cuda(0)).unwrap(),
            Precision::Bf16
        );
        let cpu = Precision::Auto.resolve(Device::Cpu).unwrap();
        assert_eq!(cpu == Precision::Bf16, cpu_has_fast_bf16());
    }
}
