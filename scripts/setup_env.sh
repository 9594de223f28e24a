#!/usr/bin/env bash
# Idempotent environment set-up into .venv/ in the checkout (called by `make`).
#   scripts/setup_env.sh core     torch/timm/transformers/peft/tf/tfds stack + the package (editable)
#   scripts/setup_env.sh libero   + the LIBERO simulator stack, headless GL libraries, assets link, config
# Each part is skipped when its stamp file is newer than the requirement files (quick when installed).
set -euo pipefail
cd "$(dirname "$0")/.."
part=${1:-core}
PY=${PYTHON:-python3}
VENV=.venv

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PY" -m venv "$VENV"
fi
pip_install() { "$VENV/bin/python" -m pip install --disable-pip-version-check -q "$@"; }

stamp_ok() {  # stamp newer than every given file?
  local stamp=$1; shift
  [ -f "$stamp" ] || return 1
  for f in "$@"; do [ "$f" -nt "$stamp" ] && return 1; done
  return 0
}

core_stamp=$VENV/.stamp-core
if ! stamp_ok "$core_stamp" requirements.txt constraints.txt pyproject.toml; then
  echo "[setup] installing core requirements (first time: several minutes)"
  pip_install --upgrade pip
  # requirements.txt has compatible ranges (keeps a user's CUDA torch); constraints.txt the tested exact versions.
  pip_install -r requirements.txt -c constraints.txt
  pip_install --no-deps --no-build-isolation -e .
  touch "$core_stamp"
fi

if [ "$part" = "libero" ]; then
  # Headless rendering libraries (OSMesa for CPU machines, EGL for GPU nodes).
  need=()
  for p in libosmesa6 libegl1 libegl-mesa0 libgl1-mesa-dri libgbm1; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
  done
  if [ ${#need[@]} -gt 0 ]; then
    echo "[setup] apt-get install ${need[*]}"
    SUDO=""; [ "$(id -u)" != 0 ] && SUDO=sudo
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  libero_stamp=$VENV/.stamp-libero
  if ! stamp_ok "$libero_stamp" requirements-libero.txt constraints.txt; then
    echo "[setup] installing the LIBERO simulator stack"
    pip_install -r requirements-libero.txt -c constraints.txt
    # libero's declared robomimic dependency is unused by the benchmark and drags in another torch.
    pip_install --no-deps libero==0.1.1
    touch "$libero_stamp"
  fi
  # Assets link + non-interactive LIBERO config (idempotent).
  "$VENV/bin/python" -m prismatic.sim.libero.env --setup
fi
