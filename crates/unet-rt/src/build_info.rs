use std::fmt;

/// What this build of `unet_rt` runs on: versions and devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildInfo {
    /// Version of the `unet_rt` crate.
    pub version: &'static str,
    /// Version of the libtorch loaded in this process (`torch/version.py`
    /// beside it), or the one linked at build time when that cannot be read.
    pub libtorch_version: String,
    /// Whether libtorch sees a usable CUDA device.
    pub cuda_available: bool,
    /// Number of CUDA devices visible.
    pub cuda_device_count: usize,
    /// libtorch's intra-op thread count.
    pub cpu_threads: usize,
}

/// Collects [`BuildInfo`] for this process.
pub fn build_info() -> BuildInfo {
    BuildInfo {
        version: env!("CARGO_PKG_VERSION"),
        libtorch_version: loaded_libtorch_version().unwrap_or_else(|| "unknown".to_owned()),
        cuda_available: tch::Cuda::is_available(),
        cuda_device_count: usize::try_from(tch::Cuda::device_count()).unwrap_or(0),
        cpu_threads: usize::try_from(tch::get_num_threads()).unwrap_or(0),
    }
}

impl fmt::Display for BuildInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unet_rt {} (libtorch {}, CUDA {}, {} CUDA device(s), {} CPU threads)",
            self.version,
            self.libtorch_version,
            if self.cuda_available {
                "available"
            } else {
                "unavailable"
            },
            self.cuda_device_count,
            self.cpu_threads
        )
    }
}

/// libtorch has no runtime version call; the wheel it comes from records the
/// version in `torch/version.py`, one folder above the loaded `libtorch_cpu.so`.
fn loaded_libtorch_version() -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let lib = maps
        .lines()
        .filter_map(mapped_path)
        .find(|path| path.ends_with("/libtorch_cpu.so"))?;
    let version_py = std::path::Path::new(lib)
        .parent()?
        .parent()?
        .join("version.py");
    parse_version_py(&std::fs::read_to_string(version_py).ok()?)
}

/// The path of a `/proc/self/maps` line: everything after its five fields
/// (address, permissions, offset, device, inode), spaces included (a
/// checkout under "my projects/" split there and reported no version).
fn mapped_path(line: &str) -> Option<&str> {
    let mut rest = line;
    for _ in 0..5 {
        rest = rest.trim_start();
        rest = &rest[rest.find(char::is_whitespace)?..];
    }
    Some(rest.trim_start()).filter(|path| !path.is_empty())
}

fn parse_version_py(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let value = line
            .strip_prefix("__version__")?
            .trim_start()
            .strip_prefix('=')?;
        let value = value.trim().trim_matches(|c| c == '\'' || c == '"');
        (!value.is_empty()).then(|| value.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_paths_keep_their_spaces() {
        let line = "7f1c2a000000-7f1c2b000000 r-xp 00000000 fd:01 1234567                    \
                    /home/a b/my projects/.venv/torch/lib/libtorch_cpu.so";
        assert_eq!(
            mapped_path(line),
            Some("/home/a b/my projects/.venv/torch/lib/libtorch_cpu.so")
        );
        assert_eq!(
            mapped_path("7ffd4000-7ffd5000 rw-p 00000000 00:00 0 "),
            None
        );
        assert_eq!(
            mapped_path("7ffd4000-7ffd5000 rw-p 00000000 00:00 0    [stack]"),
            Some("[stack]")
        );
    }

    #[test]
    fn reads_the_wheel_version_file() {
        let text =
            "from typing import Optional\n__version__ = '2.11.0+cu130'\ngit_version = 'abc'\n";
        assert_eq!(parse_version_py(text).as_deref(), Some("2.11.0+cu130"));
        assert_eq!(parse_version_py("nothing here"), None);
    }

    #[test]
    fn reports_the_loaded_libtorch() {
        let info = build_info();
        assert!(info.libtorch_version.starts_with("2.11"), "{info}");
        assert!(info.cpu_threads >= 1);
    }
}
