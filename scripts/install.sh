#!/usr/bin/env bash
# Installs everything into .venv, idempotently: the Python dependencies
# (torch 2.11.0 among them), the extension built in release mode, and the
# unet-rt binary as .venv/bin/unet-rt. A second run takes seconds.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"

say() { printf '[install] %s\n' "$*"; }
fail() { printf '[install] %s\n' "$*" >&2; exit 1; }
# What to do about a venv that cannot be used: it is this clone's own, made
# by this script, and nothing in it is lost by making it again.
remake=". Remove it (rm -rf '$VIRTUAL_ENV') and run this again"

# The tools the build needs, before minutes of downloads.
command -v cargo >/dev/null \
  || fail "cargo not found: install Rust 1.85 or newer (https://rustup.rs) first"
rust="$(cargo --version 2>&1)" || fail "cargo does not run: $rust"
rust="${rust#cargo }"
rust="${rust%% *}"
[ "$(printf '%s\n1.85.0\n' "$rust" | sort -V | head -1)" = 1.85.0 ] \
  || fail "cargo $rust is older than 1.85, which the build needs: 'rustup update' (or install Rust from https://rustup.rs)"
command -v c++ >/dev/null || command -v g++ >/dev/null || command -v clang++ >/dev/null \
  || fail "no C++ compiler (c++, g++ or clang++): libtorch's bindings are C++ (Debian: apt-get install g++)"

PYTHON="${PYTHON:-python3}"
too_old() { ! "$1" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; }
if [ ! -x "$VIRTUAL_ENV/bin/python" ]; then
  command -v "$PYTHON" >/dev/null || fail "$PYTHON not found: install Python 3.10 or newer, or set PYTHON=/path/to/python3"
  too_old "$PYTHON" && fail "$PYTHON is $("$PYTHON" -V 2>&1); torch 2.11 needs Python 3.10 or newer (set PYTHON=python3.11, say)"
  say "creating $VIRTUAL_ENV"
  "$PYTHON" -m venv "$VIRTUAL_ENV" \
    || fail "could not create a venv with $PYTHON (Debian: apt-get install python3-venv)$remake"
fi
too_old python && fail "$VIRTUAL_ENV holds $(python -V 2>&1); torch 2.11 needs Python 3.10 or newer$remake with PYTHON=python3.11, say"
python -m pip --version >/dev/null 2>&1 \
  || fail "$VIRTUAL_ENV has no pip (an interrupted set-up, or Debian without python3-venv)$remake"

# Reinstall the dependencies only when their list or their pins changed.
stamp="$VIRTUAL_ENV/.deps-$(cat requirements-dev.txt requirements-lock.txt | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  say "installing Python dependencies (torch 2.11.0 is a few GB the first time; pip is quiet meanwhile)"
  python -m pip install --quiet --upgrade pip
  python -m pip install --quiet -r requirements-dev.txt -c requirements-lock.txt
  rm -f "$VIRTUAL_ENV"/.deps-*
  touch "$stamp"
fi
# An interrupted install or a deleted file leaves the list's stamp but not
# its packages: the build below would fail far from the cause.
python -c "import torch, numpy" 2>/dev/null \
  || fail "torch or numpy in $VIRTUAL_ENV does not import ($(python -c 'import torch, numpy' 2>&1 | tail -1))$remake"

# napari's canvas draws with OpenGL: on a machine without a display the
# tests run it on a virtual X server (pytest-xvfb starts Xvfb), through Qt's
# X11 plugin, whose system libraries a bare machine lacks (the wheel
# brings Qt, not libxcb's extensions, libxkbcommon-x11 or libGL).
apt_install() {  # what, packages...
  local what="$1"; shift
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing $what (Debian: $*) for the napari tests"
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1; } \
      || say "could not install $what: the napari tests need them"
  else
    say "missing $what: install them (e.g. apt-get install $*) for the napari tests"
  fi
}
if [ -z "${DISPLAY:-}" ] && ! command -v Xvfb >/dev/null; then
  apt_install Xvfb xvfb
fi
qxcb="$(python -c 'import os, PyQt5; print(os.path.join(os.path.dirname(PyQt5.__file__), "Qt5/plugins/platforms/libqxcb.so"))' 2>/dev/null)"
if [ -f "$qxcb" ] && command -v ldd >/dev/null && ldd "$qxcb" 2>/dev/null | grep -q "not found"; then
  apt_install "Qt's X11 libraries" libgl1 libegl1 libglib2.0-0 libfontconfig1 libdbus-1-3 libx11-xcb1 libxext6 \
    libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 \
    libxcb-shape0 libxcb-sync1 libxcb-xfixes0 libxcb-xinerama0 libxcb-xkb1 libxcb-cursor0
fi

# Clones share the target folder: one clone's build could replace the
# binary another had just built and not yet copied (linked to the other's
# libtorch). Builds and copies take turns.
mkdir -p "$CARGO_TARGET_DIR"
if command -v flock >/dev/null; then
  exec 9>"$CARGO_TARGET_DIR/.unet_rt-install.lock"
  if ! flock -n 9 2>/dev/null; then
    say "waiting for another clone's build in $CARGO_TARGET_DIR"
    flock 9 2>/dev/null || say "could not lock $CARGO_TARGET_DIR: a clone building at once may swap binaries"
  fi
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
python -c "import unet_rt" || fail "the extension does not import (see above)"
rm -f "$VIRTUAL_ENV"/.pyproject-*
touch "$meta_stamp"

say "building the unet-rt command-line tool (release)"
cargo build --release --locked --quiet -p unet-rt-cli
install -m 755 "$CARGO_TARGET_DIR/release/unet-rt" "$VIRTUAL_ENV/bin/unet-rt"
# A binary that cannot start (a libtorch it cannot load) fails here, by name.
cli="$("$VIRTUAL_ENV/bin/unet-rt" --version 2>&1)" || fail "$VIRTUAL_ENV/bin/unet-rt does not start: $cli"
say "done: ${cli%%$'\n'*} ($VIRTUAL_ENV/bin/unet-rt), python $(python -c 'import unet_rt; print(unet_rt.__version__)')"
