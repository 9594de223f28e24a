"""The real VLA-Adapter-Pro model, random weights: one baseline and one CRaFT train_step, side by side.

    python benchmarks/bench_real_size.py                          # real size, fp32 and bf16 autocast
    python benchmarks/bench_real_size.py --precisions fp32        # fp32 only (~16 GB RAM; 26 s + 40 s per step on 2 idle cores)
    python benchmarks/bench_real_size.py --preset mid --precisions fp32 bf16   # same code path, small

No --vlm_path: the model is built from the preset's config (1.565 B parameters at real size) with random
weights, which cost exactly what the released ones do. LoRA r = --lora_rank (64, alpha 2r, the README recipes)
on every nn.Linear of the VLM; the action head, action queries and proprio projector are trained in full
(312.5 M trainable at real size). Batch --batch_size (1) of two 224-px images and a LIBERO-like prompt
(random-weight stand-in tokenizer at the real vocabulary size, see prismatic.models.processing).

Per precision (fp32, and bf16 autocast with fp32 master weights, as the trainer runs it): a warm-up step, then
one timed baseline step (prismatic.training.step.train_step without CRaFT); then a warm-up step and one timed
CRaFT step (θ0 taken before the first step, as in a run; anchor at the middle layer, default CRaFT flags). Reported: step
seconds, CRaFT/baseline ratio, peak RSS (process high-water mark, so the CRaFT figure includes the baseline's)
and, on CUDA, torch.cuda.max_memory_allocated per method, the attention backend, and the latency of one
8-action chunk (`predict_action`, batch 1, bf16 weights, median of --latency_repeats).

The last line is `real-size step: baseline X s, craft Y s, ratio Z, peak A GB` (first precision measured; peak =
RSS on CPU, max allocated of the CRaFT step on CUDA);
--json_out writes every figure (benchmarks/gpu_check.sh reads it).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import prismatic  # noqa: F401
from prismatic.models.config import PRESETS, get_preset
from prismatic.models.processing import build_tiny_tokenizer
from prismatic.models.random_inputs import random_batch
from prismatic.models.vla import VLAAdapter
from prismatic.training.craft.config import CraftConfig
from prismatic.training.craft.runtime import CraftRuntime
from prismatic.training.distributed import DistInfo
from prismatic.training.lora import apply_lora, base_module, trainable_named_parameters
from prismatic.training.schedule import make_scheduler
from prismatic.training.step import StepContext, train_step

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
REAL_PRESETS = ("vla-adapter", "vla-adapter-pro")
DEFAULT_STATS = {  # BOUNDS_Q99 statistics for predict_action's (un)normalisation (values are irrelevant here)
    "action": {"q01": [-1.0] * 7, "q99": [1.0] * 7, "mask": [True] * 6 + [False]},
    "proprio": {"q01": [-1.0] * 8, "q99": [1.0] * 8},
}


def peak_rss_gb() -> float:
    """Process high-water mark of the resident set (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def attention_backend(model) -> str:
    """The LLM's attention implementation, plus which SDPA kernels PyTorch may pick on CUDA."""
    impl = base_module(model).language_model.config._attn_implementation
    if impl == "sdpa" and torch.cuda.is_available():
        b = torch.backends.cuda
        kernels = [n for n, on in (("flash", b.flash_sdp_enabled()), ("mem_efficient", b.mem_efficient_sdp_enabled()),
                                   ("math", b.math_sdp_enabled())) if on]
        return f"sdpa ({'/'.join(kernels)} enabled; flash_attn package {'present' if importlib.util.find_spec('flash_attn') else 'absent'})"
    return impl


class Bench:
    """One LoRA-wrapped model, its optimizer and one fixed batch; steps with or without CRaFT."""

    def __init__(self, preset: str, batch_size: int, lora_rank: int, device: torch.device, seed: int = 0):
        self.device = device
        cfg = get_preset(preset)
        self.config = cfg
        with tempfile.TemporaryDirectory() as d:
            tokenizer = build_tiny_tokenizer(d, vocab_size=cfg.llm.vocab_size)
        batch = random_batch(cfg, tokenizer, batch_size, np.random.default_rng(seed))
        self.batch = {k: v.to(device) for k, v in batch.items()}
        self.batch["sample_keys"] = [f"sample-{i}" for i in range(batch_size)]
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        model = VLAAdapter(cfg).to(device)
        self.model = apply_lora(model, rank=lora_rank, alpha=2 * lora_rank, dropout=0.0)
        self.total_params = sum(p.numel() for p in self.model.parameters())  # LoRA included
        self.build_s = time.perf_counter() - t0
        self.params = [p for _, p in trainable_named_parameters(self.model)]
        self.trainable = sum(p.numel() for p in self.params)
        self.optimizer = torch.optim.AdamW(self.params, lr=1e-4)
        # θ0 is snapshotted before any step, as in a run (LoRA B = 0, so the anchor is the adapters-off model).
        self.craft = CraftRuntime.from_initial_model(self.model, CraftConfig(enabled=True), cfg, self.params)
        self.model.train()

    def context(self, autocast_dtype: torch.dtype | None, craft: CraftRuntime | None) -> StepContext:
        return StepContext(model=self.model, params=self.params, optimizer=self.optimizer,
                           scheduler=make_scheduler(self.optimizer, 0, 10**9),
                           dist=DistInfo(0, 0, 1, self.device), grad_accumulation_steps=1, max_grad_norm=1.0,
                           autocast_dtype=autocast_dtype, craft=craft)

    def timed_step(self, ctx: StepContext) -> tuple[float, dict]:
        sync(self.device)
        t0 = time.perf_counter()
        metrics = train_step(ctx, [self.batch])
        sync(self.device)
        return time.perf_counter() - t0, metrics

    def chunk_latency(self, repeats: int) -> float:
        """Median seconds of one `predict_action` (batch 1, one 8-action chunk) with bf16 weights on CUDA."""
        inputs = {k: self.batch[k][:1] for k in ("input_ids", "attention_mask", "pixel_values")}
        model = base_module(self.model)
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        was = next(model.parameters()).dtype
        model.to(dtype)
        try:
            times = []
            for _ in range(repeats + 1):
                sync(self.device)
                t0 = time.perf_counter()
                model.predict_action(inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"].to(dtype),
                                     self.batch["proprio"][:1], DEFAULT_STATS)
                sync(self.device)
                times.append(time.perf_counter() - t0)
        finally:
            model.to(was)
        return statistics.median(times[1:])


def run_precision(bench: Bench, precision: str, warmup: int) -> dict:
    autocast = PRECISIONS[precision]
    result = {}
    for method in ("baseline", "craft"):
        craft = bench.craft if method == "craft" else None
        ctx = bench.context(autocast, craft)
        for _ in range(warmup):
            bench.timed_step(ctx)
        if bench.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        seconds, metrics = bench.timed_step(ctx)
        entry = {"step_s": seconds, "loss": float(metrics.get("loss", float("nan"))), "peak_rss_gb": peak_rss_gb()}
        if bench.device.type == "cuda":
            entry["max_memory_allocated_gb"] = torch.cuda.max_memory_allocated() / 2**30
        result[method] = entry
        logging.info("%s %s: %.2f s/step", precision, method, seconds)
    result["ratio"] = result["craft"]["step_s"] / result["baseline"]["step_s"]
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="vla-adapter-pro", choices=PRESETS)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=sorted(PRECISIONS))
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--lora_rank", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=1, help="warm-up steps before each timed step")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--latency_repeats", type=int, default=5, help="chunk-latency repeats (CUDA; 0 = skip)")
    parser.add_argument("--json_out", default=None, help="also write every figure to this JSON file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.batch_size < 1 or args.lora_rank < 1 or args.warmup < 0:
        parser.error("--batch_size and --lora_rank must be >= 1, --warmup >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")

    bench = Bench(args.preset, args.batch_size, args.lora_rank, device)
    report = {
        "preset": args.preset, "device": str(device), "torch_threads": torch.get_num_threads(),
        "batch_size": args.batch_size, "images": bench.config.num_images_in_input,
        "image_size": bench.config.vision.image_size, "lora_rank": args.lora_rank,
        "total_params": bench.total_params, "trainable_params": bench.trainable, "build_s": bench.build_s,
        "sequence_length": int(bench.batch["attention_mask"].shape[1]) + bench.config.num_patches,
        "attention": attention_backend(bench.model), "precisions": {},
    }
    print(f"{args.preset} on {device} ({report['torch_threads']} threads): {bench.total_params / 1e9:.3f} B params, "
          f"{bench.trainable / 1e6:.1f} M trainable (LoRA r={args.lora_rank} + head + queries + proprio projector), "
          f"batch {args.batch_size}, {report['images']} x {report['image_size']} px, LLM sequence "
          f"{report['sequence_length']}, attention {report['attention']}, built in {bench.build_s:.0f} s")
    for precision in args.precisions:
        r = run_precision(bench, precision, args.warmup)
        report["precisions"][precision] = r
        mem = ""
        if device.type == "cuda":
            mem = (f", max allocated baseline {r['baseline']['max_memory_allocated_gb']:.2f} GB / craft "
                   f"{r['craft']['max_memory_allocated_gb']:.2f} GB")
        print(f"[{precision}] baseline {r['baseline']['step_s']:.2f} s, craft {r['craft']['step_s']:.2f} s, ratio "
              f"{r['ratio']:.2f}; peak RSS after baseline {r['baseline']['peak_rss_gb']:.2f} GB, after craft "
              f"{r['craft']['peak_rss_gb']:.2f} GB{mem}")
    if device.type == "cuda" and args.latency_repeats > 0:
        report["chunk_latency_s"] = bench.chunk_latency(args.latency_repeats)
        print(f"inference: one {bench.config.num_actions_chunk}-action chunk in "
              f"{report['chunk_latency_s'] * 1e3:.1f} ms (bf16, batch 1, median of {args.latency_repeats})")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2))
    first = report["precisions"][args.precisions[0]]
    label = "real-size" if args.preset in REAL_PRESETS else f"{args.preset}-size"
    # Peak: device memory on CUDA (CRaFT step, the larger), the process's RSS high-water mark on CPU.
    peak = first["craft"]["max_memory_allocated_gb"] if device.type == "cuda" else peak_rss_gb()
    print(f"{label} step: baseline {first['baseline']['step_s']:.2f} s, craft {first['craft']['step_s']:.2f} s, "
          f"ratio {first['ratio']:.2f}, peak {peak:.2f} GB")
    sys.stdout.flush()
    return report


if __name__ == "__main__":
    main()
