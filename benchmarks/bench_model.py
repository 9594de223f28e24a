"""Forward + backward time of the full VLA (vision towers, projector, LLM, Bridge-Attention head) per sample.

    python benchmarks/bench_model.py                          # tiny and mid presets on CPU
    python benchmarks/bench_model.py --presets '[mid]' --batch_size 4 --iters 10 --device cuda

For each preset: builds the model (random init), makes a synthetic right-padded batch with a LIBERO-like
prompt length, runs `warmup` untimed iterations, then reports the median of `iters` timed iterations
(divided by the batch size). Optimizer time is not included.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import draccus
import torch

from prismatic.models.config import PRESETS, get_preset
from prismatic.models.vla import VLAAdapter


@dataclass
class BenchConfig:
    # Model presets to time (tiny / mid are CPU-sized; real-size presets need a GPU).
    presets: list[str] = field(default_factory=lambda: ["tiny", "mid"])
    # Samples per batch.
    batch_size: int = 2
    # Timed iterations (the median is reported) and untimed warm-up iterations before them.
    iters: int = 5
    warmup: int = 2
    # Prompt tokens before the action-query placeholders (LIBERO prompts are ~45 Qwen tokens).
    prompt_len: int = 45
    # Device ("cpu" or "cuda") and, for CPU, the number of torch threads (0 keeps torch's default).
    device: str = "cpu"
    threads: int = 0
    # Head variant.
    use_pro_version: bool = True

    def __post_init__(self) -> None:
        for preset in self.presets:
            if preset not in PRESETS:
                raise ValueError(f"--presets: unknown preset {preset!r}; choose from {PRESETS}")
        for name in ("batch_size", "iters", "prompt_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise ValueError(f"--warmup must be >= 0, got {self.warmup}")


def synthetic_batch(model: VLAAdapter, batch_size: int, prompt_len: int, device: torch.device) -> dict:
    cfg = model.config
    g = torch.Generator().manual_seed(0)
    lengths = [prompt_len + cfg.num_action_queries - (i % 3) for i in range(batch_size)]  # uneven, right-padded
    width = max(lengths)
    input_ids = torch.randint(3, cfg.llm.vocab_size, (batch_size, width), generator=g)
    mask = torch.arange(width).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    size = cfg.vision.image_size
    batch = {
        "input_ids": input_ids,
        "attention_mask": mask,
        "pixel_values": torch.randn(batch_size, 6 * cfg.num_images_in_input, size, size, generator=g),
        "proprio": torch.rand(batch_size, cfg.proprio_dim, generator=g) * 2 - 1,
        "actions": torch.rand(batch_size, cfg.num_actions_chunk, cfg.action_dim, generator=g) * 2 - 1,
    }
    return {k: v.to(device) for k, v in batch.items()}


def time_preset(preset: str, cfg: BenchConfig) -> dict:
    device = torch.device(cfg.device)
    model = VLAAdapter(get_preset(preset, use_pro_version=cfg.use_pro_version)).to(device).train()
    batch = synthetic_batch(model, cfg.batch_size, cfg.prompt_len, device)
    times = []
    for i in range(cfg.warmup + cfg.iters):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = model(**batch)
        out.loss.backward()
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= cfg.warmup:
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {
        "preset": preset,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "seq_len": batch["input_ids"].shape[1] + model.config.num_patches,
        "median_s_per_iter": median,
        "median_s_per_sample": median / cfg.batch_size,
        "min_s_per_sample": min(times) / cfg.batch_size,
    }


def main() -> None:
    cfg = draccus.parse(config_class=BenchConfig)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    print(f"device={cfg.device} threads={torch.get_num_threads()} batch_size={cfg.batch_size} "
          f"iters={cfg.iters} warmup={cfg.warmup} head={'pro' if cfg.use_pro_version else 'original'}")
    print(f"{'preset':<8} {'params(M)':>10} {'seq':>5} {'s/iter':>8} {'s/sample':>9} {'min s/sample':>13}")
    for preset in cfg.presets:
        r = time_preset(preset, cfg)
        print(f"{r['preset']:<8} {r['params_m']:>10.1f} {r['seq_len']:>5} {r['median_s_per_iter']:>8.3f} "
              f"{r['median_s_per_sample']:>9.3f} {r['min_s_per_sample']:>13.3f}")


if __name__ == "__main__":
    main()
