# Sourced by the other scripts: the environment every build step shares.
# An exported CDPATH makes `cd` print where it went, doubling ROOT below.
unset CDPATH
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export VIRTUAL_ENV="$ROOT/.venv"
export PATH="$VIRTUAL_ENV/bin:${HOME:+$HOME/.cargo/bin:}$PATH"
# torch-sys finds libtorch through the venv's python when this is set (to
# anything), and runs its build script again when the value changes: the
# value is this clone's venv, so a target folder shared by several clones
# never links one against another's libtorch (it did, through the folder
# below: a clone's CLI loaded the first clone's libtorch, and failed to
# link once that venv was gone).
export LIBTORCH_USE_PYTORCH="$VIRTUAL_ENV"
# A target folder outside the clone survives fresh clones (CI); without it
# everything is simply built again.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${HOME:-/tmp}/.cache/unet_rt/target}"
export PIP_DISABLE_PIP_VERSION_CHECK=1
# Another environment's settings must not reach this one's builds, imports
# and binaries: maturin refuses a CONDA_PREFIX beside VIRTUAL_ENV, a
# PYTHONPATH can put another unet_rt first, and LD_LIBRARY_PATH overrides
# the CLI's run path to its libtorch.
unset PYTHONHOME PYTHONPATH CONDA_PREFIX LD_LIBRARY_PATH
# Builds are for this machine: a cross-compilation target would put the CLI
# under target/<triple>/ (the copy below found none) and build an extension
# this Python cannot load.
unset CARGO_BUILD_TARGET
