//! Links libtorch (rpaths, libtorch_cuda kept) and decides whether the
//! bundled nuclei model is built into the binary.
//!
//! The model file, `python/unet_rt/models/nuclei.pt`, is produced by training
//! and may be absent (a fresh checkout before training, CI without it). The
//! binary then builds without it (`cfg(unet_rt_bundled)` unset) and asks for
//! `--model`. `UNET_RT_BUNDLED_MODEL` overrides the path.

use std::path::{Path, PathBuf};

fn main() {
    torch_link::emit(torch_link::Install::VenvBin);
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=UNET_RT_BUNDLED_MODEL");
    println!("cargo:rustc-check-cfg=cfg(unet_rt_bundled)");

    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let package = manifest.join("../../python/unet_rt");
    let model = std::env::var_os("UNET_RT_BUNDLED_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| package.join("models/nuclei.pt"));
    if model.is_file() {
        println!("cargo:rerun-if-changed={}", model.display());
        println!("cargo:rustc-cfg=unet_rt_bundled");
        println!(
            "cargo:rustc-env=UNET_RT_BUNDLED_MODEL_PATH={}",
            absolute(&model).display()
        );
    } else {
        // Watch the nearest folder or file that exists, so that the model's
        // arrival triggers a rebuild. A missing path would make cargo rebuild
        // the binary on every build, and the whole package folder is not
        // watched because the extension module written there on each install
        // would do the same.
        let models = package.join("models");
        let watched = if models.is_dir() {
            models
        } else {
            package.join("__init__.py")
        };
        println!("cargo:rerun-if-changed={}", watched.display());
        println!(
            "cargo:warning=no bundled model at {}: unet-rt is built without one and needs --model",
            model.display()
        );
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned())
}
