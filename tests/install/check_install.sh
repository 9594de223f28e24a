#!/usr/bin/env bash
# The install path of upstream's documents, in a FRESH virtualenv, on a copy of this checkout:
#
#     pip install -e .                  # the package (torch kept if in range)
#     pip install -r requirements.txt   # the pinned training stack
#     cd LIBERO && pip install -e .     # the LIBERO simulator stack from PyPI
#
# A torch the user already has (on GPU nodes: their CUDA build) is installed FIRST and must survive every step
# unchanged (same version, same files). Then: pip check, imports (torch before tensorflow), LIBERO's config +
# assets link, a LIBERO env reset, a `finetune.py --dry_run True` and a 2-step tiny training run.
# Also: Python 3.10 is refused, with pip's message naming the 3.11 requirement.
#
#   bash tests/install/check_install.sh [WORK_DIR]     (default: a new /tmp/craft-install.XXXX; ~23 min, ~9.6 GB)
#   PYTHON311=/path/to/python3.11 PYTHON310=/path/to/python3.10   override the interpreters
# Not part of `make test` (too slow for CI's budget); run by hand or by tests/install/test_install.py when
# CRAFT_INSTALL_CHECK=1. Prints the wall time of each step; exits non-zero on the first failure.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
WORK="${1:-$(mktemp -d /tmp/craft-install.XXXX)}"
PY311="${PYTHON311:-$(command -v python3.11)}"
PY310="${PYTHON310:-$(command -v python3.10 || true)}"
USER_TORCH="${USER_TORCH:-torch==2.14.1 torchvision==0.29.1}"
mkdir -p "$WORK"
t0=$(date +%s)
step() { echo "[check_install +$(( $(date +%s) - t0 ))s] $*"; }

step "copy of the checkout (tracked + untracked, not ignored) -> $WORK/repo"
rm -rf "$WORK/repo" && mkdir -p "$WORK/repo"
(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard | xargs -0 -I{} cp --parents {} "$WORK/repo/" 2>/dev/null || true)
test -f "$WORK/repo/pyproject.toml" && test -f "$WORK/repo/LIBERO/pyproject.toml"

if [ -n "$PY310" ]; then
  step "Python 3.10 must be refused: $PY310"
  "$PY310" -m venv "$WORK/venv310"
  set +e
  out=$(cd "$WORK/repo" && "$WORK/venv310/bin/python" -m pip install --no-deps -e . 2>&1)
  rc=$?
  set -e
  echo "$out" | tail -3
  [ $rc -ne 0 ] || { echo "FAIL: pip install -e . succeeded on Python 3.10"; exit 1; }
  echo "$out" | grep -q "requires a different Python" || { echo "FAIL: no requires-python message"; exit 1; }
  echo "$out" | grep -q ">=3.11" || { echo "FAIL: the message does not name 3.11"; exit 1; }
fi

step "fresh venv: $PY311"
"$PY311" -m venv "$WORK/venv"
P="$WORK/venv/bin/python"
"$P" -m pip install -q --upgrade pip
step "the user's own torch first: $USER_TORCH"
# shellcheck disable=SC2086
"$P" -m pip install -q $USER_TORCH
fingerprint() {
  "$P" - <<'EOF'
import hashlib, importlib.metadata as md
for name in ("torch", "torchvision"):
    dist = md.distribution(name)
    record = dist.read_text("RECORD") or ""
    print(name, dist.version, hashlib.sha256(record.encode()).hexdigest()[:16], dist.read_text("INSTALLER").strip())
EOF
}
before=$(fingerprint); echo "$before"

cd "$WORK/repo"
step "pip install -e ."
"$P" -m pip install -q -e .
step "pip install -r requirements.txt"
"$P" -m pip install -q -r requirements.txt
step "cd LIBERO && pip install -e ."
(cd LIBERO && "$P" -m pip install -q -e .)
after=$(fingerprint); echo "$after"
[ "$before" = "$after" ] || { echo "FAIL: torch / torchvision were replaced"; exit 1; }

step "pip check"
"$P" -m pip check
step "imports (torch before tensorflow) and the LIBERO set-up (config + assets link + GL probe)"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false WANDB_MODE=disabled
export LIBERO_CONFIG_PATH="$WORK/libero_config"
"$P" -c "import prismatic, torch, timm, transformers, peft, tensorflow, tensorflow_datasets; print('imports ok', torch.__version__)"
"$P" -m prismatic.sim.libero.env --setup
step "a LIBERO env reset (simulator process: no tensorflow)"
"$P" - <<'EOF'
from prismatic.sim.libero.env import close_env, get_initial_states, make_libero_env, reset_to_init_state
env, instruction = make_libero_env("libero_spatial", 0, resolution=128)
obs = reset_to_init_state(env, get_initial_states("libero_spatial", 0)[0])
print("libero ok:", instruction, obs["agentview_image"].shape)
close_env(env)
EOF
step "finetune.py --dry_run True and a 2-step tiny training run"
"$P" vla-scripts/finetune.py --model_preset tiny --dataset_name libero_synthetic --data_root_dir "$WORK/data" \
  --create_synthetic_dataset True --run_root_dir "$WORK/runs" --max_steps 2 --dry_run True
"$P" vla-scripts/finetune.py --model_preset tiny --dataset_name libero_synthetic --data_root_dir "$WORK/data" \
  --create_synthetic_dataset True --run_root_dir "$WORK/runs" --max_steps 2 --save_freq 2 --batch_size 2 \
  --shuffle_buffer_size 64 --device cpu
step "OK: the documented install path works and kept the user's torch ($(echo "$after" | head -1))"
