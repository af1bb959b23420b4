# Sourced by the other scripts: the environment every build step shares.
# torch-sys finds libtorch through the venv's python (LIBTORCH_USE_PYTORCH).
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export VIRTUAL_ENV="$ROOT/.venv"
export PATH="$VIRTUAL_ENV/bin:$HOME/.cargo/bin:$PATH"
export LIBTORCH_USE_PYTORCH=1
# A target folder outside the clone survives fresh clones (CI); without it
# everything is simply built again.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/unet_rt/target}"
export PIP_DISABLE_PIP_VERSION_CHECK=1
unset PYTHONHOME
