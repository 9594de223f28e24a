"""Training-step throughput: steps/s and peak memory for the tiny and mid presets (1 process), and the
data-parallel scaling from 1 to 2 processes (gloo on CPU, nccl on GPU) at a fixed per-rank batch.

    python benchmarks/bench_train.py [--presets tiny mid] [--batch_size 4] [--steps 10] [--warmup 3]

Each measurement runs in its own process (so peak RSS is per configuration). Batches are fixed tensors
(no data pipeline; see bench_data.py for the loader), LoRA r=8 on the VLM, AdamW, fp32 on CPU / bf16 on CUDA.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(args) -> None:
    import numpy as np
    import torch

    import prismatic  # noqa: F401
    from prismatic.models.config import get_preset
    from prismatic.models.processing import build_tiny_tokenizer
    from prismatic.models.random_inputs import random_batch
    from prismatic.models.vla import VLAAdapter
    from prismatic.training.distributed import cleanup_distributed, init_distributed
    from prismatic.training.lora import apply_lora, trainable_named_parameters
    from prismatic.training.schedule import make_scheduler
    from prismatic.training.step import StepContext, train_step

    info = init_distributed("auto")
    cfg = get_preset(args.preset)
    with tempfile.TemporaryDirectory() as d:
        tok = build_tiny_tokenizer(d, vocab_size=cfg.llm.vocab_size)
    batch = random_batch(cfg, tok, args.batch_size, np.random.default_rng(info.rank))
    batch = {k: v.to(info.device) for k, v in batch.items()}
    torch.manual_seed(0)
    model = apply_lora(VLAAdapter(cfg).to(info.device), rank=8, alpha=16, dropout=0.0)
    params = [p for _, p in trainable_named_parameters(model)]
    opt = torch.optim.AdamW(params, lr=1e-4)
    ctx = StepContext(model=model, params=params, optimizer=opt, scheduler=make_scheduler(opt, 0, 10**9), dist=info,
                      grad_accumulation_steps=1, max_grad_norm=None,
                      autocast_dtype=torch.bfloat16 if info.device.type == "cuda" else None)
    model.train()
    times = []
    for i in range(args.warmup + args.steps):
        if info.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        train_step(ctx, [batch])
        if info.device.type == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak_gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if info.device.type == "cuda" else None
    if info.rank == 0:
        print("RESULT " + json.dumps({"median_step_s": statistics.median(times), "peak_rss_mb": peak_rss_mb,
                                      "peak_gpu_mb": peak_gpu_mb, "world_size": info.world_size}))
    cleanup_distributed()


def _run(preset: str, batch: int, steps: int, warmup: int, nproc: int) -> dict:
    script = [str(Path(__file__).resolve()), "--worker", "--preset", preset, "--batch_size", str(batch),
              "--steps", str(steps), "--warmup", str(warmup)]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)] + script
    else:
        cmd = [sys.executable] + script
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if nproc > 1:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 2) // nproc))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"benchmark worker failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "mid"])
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--ddp_preset", default="tiny")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--preset", default="tiny", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    print(f"{'preset':<8} {'procs':>5} {'batch/rank':>10} {'step s':>8} {'steps/s':>8} {'samples/s':>10} {'peak RSS MB':>12}")
    for preset in args.presets:
        r = _run(preset, args.batch_size, args.steps, args.warmup, 1)
        print(f"{preset:<8} {1:>5} {args.batch_size:>10} {r['median_step_s']:>8.3f} {1 / r['median_step_s']:>8.2f} "
              f"{args.batch_size / r['median_step_s']:>10.1f} {r['peak_rss_mb']:>12.0f}"
              + (f"  peak GPU {r['peak_gpu_mb']:.0f} MB" if r["peak_gpu_mb"] else ""))
    one = _run(args.ddp_preset, args.batch_size, args.steps, args.warmup, 1)
    two = _run(args.ddp_preset, args.batch_size, args.steps, args.warmup, 2)
    s1 = args.batch_size / one["median_step_s"]
    s2 = 2 * args.batch_size / two["median_step_s"]
    print(f"{args.ddp_preset:<8} {2:>5} {args.batch_size:>10} {two['median_step_s']:>8.3f} "
          f"{1 / two['median_step_s']:>8.2f} {s2:>10.1f} {two['peak_rss_mb']:>12.0f}")
    print(f"DDP scaling 1 -> 2 processes ({args.ddp_preset}, {args.batch_size}/rank): throughput x{s2 / s1:.2f} "
          f"(ideal 2.00 with >= 2 free cores per process pair)")


if __name__ == "__main__":
    main()
