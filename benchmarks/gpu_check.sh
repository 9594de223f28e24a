#!/usr/bin/env bash
# One-command check of the real-size stack on a machine with a CUDA device (<= 8 minutes on one H100/H200):
#
#   benchmarks/gpu_check.sh [--out DIR] [--small] [--dry]
#
#   1. benchmarks/bench_real_size.py in bf16 on CUDA: baseline and CRaFT step seconds, max allocated memory,
#      attention backend, latency of one 8-action chunk
#   2. a 20-step CRaFT fine-tune at real size (vla-adapter-pro, LoRA r=64) with torchrun on 1 GPU, from a
#      random-weight base VLM (vla-scripts/make_random_base_vlm.py) on generated data
#      (vla-scripts/make_synthetic_libero_rlds.py)
#   3. one LIBERO episode (libero_spatial task 0) of that checkpoint through the evaluator, rendered with EGL
#   4. a summary of the figures (also in DIR/summary.txt)
#
#   --small  the same chain at the tiny preset on CPU (osmesa, 2 fine-tune steps, 4 policy steps): checks the
#            script itself on a machine without a GPU (tests/benchmarks/test_gpu_check.py runs it)
#   --dry    print the commands, run nothing
#
# Weights are random, so the episode is expected to fail (success 0); it checks loading, speed and rendering.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
[[ -x "$PYTHON" ]] || PYTHON="python"
TORCHRUN=("$PYTHON" -m torch.distributed.run)
OUT="$REPO/runs/gpu-check"
SMALL=0
DRY=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) OUT="$2"; shift 2 ;;
        --small) SMALL=1; shift ;;
        --dry) DRY=1; shift ;;
        -h|--help) sed -n '2,19p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

if [[ $SMALL -eq 1 ]]; then
    PRESET=tiny DEVICE=cpu GL=osmesa STEPS=2 BATCH=2 LORA=8 EVAL_STEPS=(--max_steps 4 --num_steps_wait 1)
    BENCH=(--preset tiny --precisions fp32 --device cpu)
    BASE_VLM=()
else
    PRESET=vla-adapter-pro DEVICE=cuda GL=egl STEPS=20 BATCH=8 LORA=64 EVAL_STEPS=()
    BENCH=(--preset vla-adapter-pro --precisions bf16 --device cuda)
    BASE_VLM=(--vlm_path "$OUT/base_vlm")
fi
RUN_ID=gpu-check
CKPT="$OUT/runs/$RUN_ID--${STEPS}_chkpt"

run() {  # echo a command, then run it unless --dry; stdout+stderr also go to $OUT/<log>
    local log="$1"; shift
    echo "+ $*"
    [[ $DRY -eq 1 ]] && return 0
    local t0=$SECONDS
    "$@" 2>&1 | tee "$OUT/$log"
    echo "  ($((SECONDS - t0)) s)"
}

if [[ $DRY -eq 0 ]]; then
    if [[ $SMALL -eq 0 ]] && ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "gpu_check.sh: torch sees no CUDA device (use --small on a CPU machine)" >&2
        exit 1
    fi
    mkdir -p "$OUT"
fi
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" WANDB_MODE="${WANDB_MODE:-disabled}" TOKENIZERS_PARALLELISM=false
cd "$REPO"

# 1. Real-size benchmark (bf16 on CUDA).
run bench.log "$PYTHON" benchmarks/bench_real_size.py "${BENCH[@]}" --json_out "$OUT/bench.json"

# 2. Base VLM stand-in + generated data + 20-step CRaFT fine-tune with torchrun on one device.
if [[ ${#BASE_VLM[@]} -gt 0 ]]; then
    run base_vlm.log "$PYTHON" vla-scripts/make_random_base_vlm.py --out_dir "$OUT/base_vlm" \
        --model_preset "$PRESET" --overwrite True
fi
run data.log "$PYTHON" vla-scripts/make_synthetic_libero_rlds.py --out "$OUT/data" --tasks 2 \
    --episodes-per-task 4 --image-size 128
run finetune.log "${TORCHRUN[@]}" --standalone --nnodes 1 --nproc_per_node 1 vla-scripts/finetune.py \
    --model_preset "$PRESET" "${BASE_VLM[@]}" --device "$DEVICE" \
    --data_root_dir "$OUT/data" --dataset_name libero_synthetic --shuffle_buffer_size 500 \
    --run_root_dir "$OUT/runs" --run_id_override "$RUN_ID" --overwrite True \
    --batch_size "$BATCH" --lora_rank "$LORA" --max_steps "$STEPS" --save_freq "$STEPS" --wandb_log_freq 5 \
    --use_craft True --craft_log_freq 5

# 3. One LIBERO episode of that checkpoint through the evaluator, rendered with $GL.
run eval.log env MUJOCO_GL="$GL" "$PYTHON" experiments/robot/libero/run_libero_eval.py \
    --pretrained_checkpoint "$CKPT" --task_suite_name libero_spatial --task_ids '[0]' --num_trials_per_task 1 \
    "${EVAL_STEPS[@]}" --unnorm_key libero_synthetic --device "$DEVICE" --local_log_dir "$OUT/eval" \
    --run_id "$RUN_ID" --save_videos all

# 4. Summary.
[[ $DRY -eq 1 ]] && exit 0
{
    echo "gpu_check summary ($(date -u +%Y-%m-%dT%H:%M:%SZ), preset $PRESET on $DEVICE)"
    "$PYTHON" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
bench = json.loads((out / "bench.json").read_text())
print(f"model: {bench['total_params'] / 1e9:.3f} B params, {bench['trainable_params'] / 1e6:.1f} M trainable, "
      f"attention {bench['attention']}")
for precision, r in bench["precisions"].items():
    mem = "".join(f", {m} max allocated {r[m]['max_memory_allocated_gb']:.2f} GB"
                  for m in ("baseline", "craft") if "max_memory_allocated_gb" in r[m])
    print(f"bench [{precision}]: baseline {r['baseline']['step_s']:.3f} s/step, craft {r['craft']['step_s']:.3f} "
          f"s/step, ratio {r['ratio']:.2f}{mem}")
if "chunk_latency_s" in bench:
    print(f"inference: {bench['chunk_latency_s'] * 1e3:.1f} ms per 8-action chunk")
metrics = [json.loads(line) for line in (out / "runs" / "gpu-check" / "metrics.jsonl").read_text().splitlines()
           if line.strip()]
train = [m for m in metrics if "loss" in m]
if train:
    last = train[-1]
    craft = ("retention_loss", "lambda", "conflict_ratio", "grad_cosine")
    print(f"fine-tune: {len(train)} logged steps, last step {last.get('step')}: loss {last['loss']:.4f}"
          + "".join(f", {k} {last[k]:.4g}" for k in craft if isinstance(last.get(k), (int, float))))
summaries = sorted((out / "eval").glob("*/summary.json"))
if not summaries:
    sys.exit("no evaluation summary.json found")
print("evaluation: " + json.dumps(json.loads(summaries[-1].read_text()))[:600])
EOF
    grep -h "step:" "$OUT/bench.log" | tail -1
} | tee "$OUT/summary.txt"
