//! Link-time settings shared by every crate that produces a binary linked to
//! libtorch (the CLI, the Python extension, the core crate's tests).
//!
//! torch-sys links libtorch but its rpath does not reach downstream binaries,
//! and the default `--as-needed` drops `libtorch_cuda.so` because no symbol of
//! it is referenced directly; CUDA then reports itself unavailable on a GPU
//! machine. Calling [`emit`] from a build script fixes both.

use std::env;
use std::path::{Path, PathBuf};

/// The libtorch library folder that torch-sys linked against.
///
/// Only visible to build scripts of packages that depend on `torch-sys`
/// directly (its `links = "tch"` key exports `DEP_TCH_LIBTORCH_LIB`).
///
/// # Panics
/// When the variable is missing: that is a build misconfiguration (the
/// calling package must list `torch-sys` as a dependency), not user input.
pub fn libtorch_lib_dir() -> PathBuf {
    match env::var_os("DEP_TCH_LIBTORCH_LIB") {
        Some(dir) => PathBuf::from(dir),
        None => panic!(
            "DEP_TCH_LIBTORCH_LIB is not set: the package calling torch_link::emit \
             must depend on torch-sys directly"
        ),
    }
}

/// Where an artifact will be installed, relative to the venv, so that its
/// rpath can be written relative to `$ORIGIN` and survive a moved venv.
#[derive(Debug, Clone, Copy)]
pub enum Install {
    /// An executable in `<venv>/bin`.
    VenvBin,
    /// An extension module in `site-packages/<package>/`, beside `torch/`.
    SitePackage,
    /// Test binaries: only the absolute path is useful.
    BuildTree,
}

/// Prints the cargo directives: rpaths to libtorch and `libtorch_cuda` kept
/// as a dependency when the libtorch found has CUDA.
pub fn emit(install: Install) {
    println!("cargo:rerun-if-env-changed=VIRTUAL_ENV");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let lib = libtorch_lib_dir();
    for rpath in rpaths(
        &lib,
        install,
        env::var_os("VIRTUAL_ENV").map(PathBuf::from).as_deref(),
    ) {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{rpath}");
    }
    if let Install::VenvBin = install {
        // DT_RPATH rather than DT_RUNPATH: the loader then looks here before
        // LD_LIBRARY_PATH, so a user's other libtorch on it cannot replace
        // the one this binary was built against (an undefined symbol at
        // start). Where these paths do not exist (a copied binary), the
        // loader goes on to LD_LIBRARY_PATH as before.
        println!("cargo:rustc-link-arg=-Wl,--disable-new-dtags");
    }
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-L{}", lib.display());
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}

/// The rpath entries, most specific (relative) first, absolute last.
pub fn rpaths(lib: &Path, install: Install, venv: Option<&Path>) -> Vec<String> {
    let mut out = Vec::new();
    match install {
        Install::SitePackage => out.push("$ORIGIN/../torch/lib".to_owned()),
        Install::VenvBin => {
            if let Some(rest) = venv.and_then(|v| lib.strip_prefix(v).ok()) {
                out.push(format!("$ORIGIN/../{}", rest.display()));
            }
        }
        Install::BuildTree => {}
    }
    out.push(lib.display().to_string());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn venv_bin_rpath_is_relative_to_the_venv() {
        let lib = Path::new("/v/lib/python3.11/site-packages/torch/lib");
        let r = rpaths(lib, Install::VenvBin, Some(Path::new("/v")));
        assert_eq!(
            r,
            [
                "$ORIGIN/../lib/python3.11/site-packages/torch/lib",
                lib.to_str().unwrap_or("")
            ]
        );
    }

    #[test]
    fn torch_outside_the_venv_keeps_only_the_absolute_path() {
        let lib = Path::new("/opt/torch/lib");
        assert_eq!(
            rpaths(lib, Install::VenvBin, Some(Path::new("/v"))),
            ["/opt/torch/lib"]
        );
        assert_eq!(rpaths(lib, Install::BuildTree, None), ["/opt/torch/lib"]);
    }

    #[test]
    fn extension_finds_torch_beside_it_in_site_packages() {
        let r = rpaths(Path::new("/x/torch/lib"), Install::SitePackage, None);
        assert_eq!(r[0], "$ORIGIN/../torch/lib");
    }
}
