#!/usr/bin/env bash
# Installs everything into .venv, idempotently: the Python dependencies
# (torch 2.11.0 among them), the extension built in release mode, and the
# unet-rt binary as .venv/bin/unet-rt. A second run takes seconds.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"

say() { printf '[install] %s\n' "$*"; }

PYTHON="${PYTHON:-python3}"
if [ ! -x "$VIRTUAL_ENV/bin/python" ]; then
  say "creating $VIRTUAL_ENV"
  "$PYTHON" -m venv "$VIRTUAL_ENV"
fi

# Reinstall the dependencies only when their list changed.
stamp="$VIRTUAL_ENV/.deps-$(sha256sum requirements-dev.txt | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  say "installing Python dependencies (torch 2.11.0 is a few GB the first time)"
  python -m pip install --quiet --upgrade pip
  python -m pip install --quiet -r requirements-dev.txt
  rm -f "$VIRTUAL_ENV"/.deps-*
  touch "$stamp"
fi

# napari's canvas draws with OpenGL: on a machine without a display the
# tests run it on a virtual X server (pytest-xvfb starts Xvfb).
if [ -z "${DISPLAY:-}" ] && ! command -v Xvfb >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing Xvfb (Debian's xvfb) for the napari tests"
    apt-get install -y -qq --no-install-recommends xvfb >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends xvfb >/dev/null 2>&1; } \
      || say "could not install xvfb: the napari tests need a display (DISPLAY) or Xvfb"
  else
    say "no display and no Xvfb: install xvfb (e.g. apt-get install xvfb) for the napari tests"
  fi
fi

if ! command -v cargo >/dev/null; then
  echo "[install] cargo not found: install Rust (https://rustup.rs) first" >&2
  exit 1
fi

say "building the Python extension (release)"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
flags=(--release)
# Once installed (editable), rebuilding the module in place is enough, until
# pyproject.toml (entry points, extras) changes.
meta_stamp="$VIRTUAL_ENV/.pyproject-$(sha256sum pyproject.toml | cut -c1-16)"
if [ -f "$meta_stamp" ] && python -c "import importlib.metadata as m; m.version('unet_rt')" >/dev/null 2>&1; then
  flags+=(--skip-install)
fi
if ! maturin develop "${flags[@]}" >"$log" 2>&1; then
  cat "$log" >&2
  echo "[install] building the extension failed" >&2
  exit 1
fi
python -c "import unet_rt" || { echo "[install] the extension does not import" >&2; exit 1; }
rm -f "$VIRTUAL_ENV"/.pyproject-*
touch "$meta_stamp"

say "building the unet-rt command-line tool (release)"
cargo build --release --locked --quiet -p unet-rt-cli
install -m 755 "$CARGO_TARGET_DIR/release/unet-rt" "$VIRTUAL_ENV/bin/unet-rt"
say "done: $(unet-rt --version | head -1), python $(python -c 'import unet_rt; print(unet_rt.__version__)')"
