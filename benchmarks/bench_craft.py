"""CRaFT overhead, side by side: baseline vs our CRaFT vs a reference CRaFT as its authors describe it.

    python benchmarks/bench_craft.py [--presets tiny mid] [--batch_size 2] [--steps 8] [--warmup 3]

Methods (same model, same batch, interleaved step by step, median of --steps after --warmup):
    baseline      plain fine-tuning step (LoRA + head), prismatic.training.step.train_step
    craft         our CRaFT: anchor forward with adapters disabled (LoRA branch skipped), g_ret by
                  autograd.grad, in-place projection + combination into the gradient buffers, constant host syncs
    craft-noproj  ours with the projection off (g = g_act + λ g_ret)
    craft-cache   ours with the anchor-feature cache (valid without image augmentation), cache warm
    reference     the published recipe: copy the initial trainable weights from a CPU copy into the model
                  for the anchor forward and back, L_ret.backward(retain_graph=True) and clone every .grad
                  into a dict, L_act.backward() and clone again, then a Python loop over parameters with a
                  per-tensor `if dot < 0` (a host sync per tensor)

Before timing, ours and the reference take one step from the same state (deep-copied model and optimizer)
and must give the same parameters (max abs difference <= 1e-6).
Gradient combination: the time spent inside CRaFT's projection + combination (CraftRuntime.combine) during
the timed steps, as a share of the CRaFT step.
Peak memory of one step, LoRA and full fine-tuning: on CUDA torch.cuda.max_memory_allocated above the memory
held before the step; on CPU the same quantity from tensor-level accounting (every tensor allocated during
the step, alive until freed; process RSS cannot tell the methods apart, it is dominated by the libraries).
Host syncs: tensor->host reads during one train_step, counted for tiny and mid.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
import weakref

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import prismatic  # noqa: F401
from prismatic.models.config import get_preset
from prismatic.models.processing import build_tiny_tokenizer
from prismatic.models.random_inputs import random_batch
from prismatic.models.vla import VLAAdapter
from prismatic.training.config import FinetuneConfig
from prismatic.training.craft.features import pool_features, retention_loss
from prismatic.training.craft.runtime import CraftRuntime
from prismatic.training.distributed import DistInfo
from prismatic.training.lora import apply_lora, trainable_named_parameters
from prismatic.training.schedule import make_scheduler
from prismatic.training.step import StepContext, train_step

METHODS = ("baseline", "craft", "craft-noproj", "craft-cache", "reference")


def _device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Setup:
    """A model (LoRA r=8), its optimizer, one fixed batch, and the CRaFT runtime for one method."""

    def __init__(self, preset: str, batch_size: int, method: str, seed: int = 0, projection_eps: float = 1e-8,
                 full_ft: bool = False):
        self.device = _device()
        cfg = get_preset(preset)
        cfg.action_head.train_noise_std = 0.0  # deterministic, so ours and the reference can be compared
        self.config = cfg
        with tempfile.TemporaryDirectory() as d:
            tok = build_tiny_tokenizer(d, vocab_size=cfg.llm.vocab_size)
        self.batch = {k: v.to(self.device) for k, v in
                      random_batch(cfg, tok, batch_size, np.random.default_rng(seed)).items()}
        self.batch["sample_keys"] = [f"sample-{i}" for i in range(batch_size)]
        torch.manual_seed(seed)
        model = VLAAdapter(cfg).to(self.device)
        self.model = model.requires_grad_(True) if full_ft else apply_lora(model, rank=8, alpha=16, dropout=0.0)
        self.named = trainable_named_parameters(self.model)
        self.params = [p for _, p in self.named]
        self.optimizer = torch.optim.AdamW(self.params, lr=1e-4)
        self.info = DistInfo(0, 0, 1, self.device)
        self.method = method
        self.autocast = torch.bfloat16 if self.device.type == "cuda" else None
        craft = None
        if method != "baseline":
            flags = dict(model_preset=preset, use_craft=True, craft_retention_budget=0.0,
                         craft_projection_eps=projection_eps,
                         craft_enable_projection=method != "craft-noproj",
                         craft_anchor_cache=method == "craft-cache", image_aug=method != "craft-cache")
            craft = CraftRuntime.from_initial_model(self.model, FinetuneConfig(**flags).craft_config(), cfg,
                                                    self.params)
        self.craft = craft
        self.combine_seconds: list[float] = []  # time inside CraftRuntime.combine, per step
        if craft is not None:
            combine = craft.combine

            def timed_combine(grads):
                _sync(self.device)
                t0 = time.perf_counter()
                out = combine(grads)
                _sync(self.device)
                self.combine_seconds.append(time.perf_counter() - t0)
                return out

            craft.combine = timed_combine
        # The reference keeps θ0 as a CPU copy of every trainable tensor (as the original recipe does).
        self.theta0_cpu = {n: p.detach().to("cpu", copy=True) for n, p in self.named}
        self.lam = 1.0
        self.projection_eps = projection_eps
        self.ctx = StepContext(model=self.model, params=self.params, optimizer=self.optimizer,
                               scheduler=make_scheduler(self.optimizer, 0, 10**9), dist=self.info,
                               grad_accumulation_steps=1, max_grad_norm=None, autocast_dtype=self.autocast,
                               craft=craft)
        self.model.train()

    def step(self) -> None:
        if self.method == "reference":
            reference_step(self)
        else:
            train_step(self.ctx, [self.batch])

    def drift(self, steps: int = 2) -> None:
        """Move away from θ0 (at θ0, g_ret = 0 and there is nothing to project)."""
        with torch.no_grad():
            for p in self.params:
                p.add_(torch.randn_like(p) * 1e-2)
        for _ in range(steps):
            self.step()


def reference_step(s: Setup) -> None:
    """The CRaFT step as described by its authors (see module docstring)."""
    inputs = {k: s.batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "proprio")}
    layer = s.config.llm.num_hidden_layers // 2
    current = {n: p.detach().clone() for n, p in s.named}
    with torch.no_grad():
        for n, p in s.named:  # θ0 from the CPU copy into the model ...
            p.copy_(s.theta0_cpu[n].to(p.device))
        with torch.autocast(s.device.type, dtype=s.autocast) if s.autocast else _null():
            anchor_out = s.model(**inputs, output_craft_features=True, craft_layer_idx=layer)
        anchor = pool_features(anchor_out.raw_latent_features, anchor_out.action_query_features, "mean")
        for n, p in s.named:  # ... and the current weights back
            p.copy_(current[n])
    with torch.autocast(s.device.type, dtype=s.autocast) if s.autocast else _null():
        out = s.model(**inputs, actions=s.batch["actions"], output_craft_features=True, craft_layer_idx=layer)
    feats = pool_features(out.raw_latent_features, out.action_query_features, "mean")
    l_ret = retention_loss(feats, anchor, "concat").loss
    s.optimizer.zero_grad(set_to_none=True)
    l_ret.backward(retain_graph=True)
    g_ret = {n: (p.grad.clone() if p.grad is not None else None) for n, p in s.named}
    s.optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    g_act = {n: (p.grad.clone() if p.grad is not None else None) for n, p in s.named}
    for n, p in s.named:
        ga, gr = g_act[n], g_ret[n]
        if ga is None and gr is None:
            p.grad = None
            continue
        if ga is not None and gr is not None:
            dot = (ga.float() * gr.float()).sum()
            if dot < 0:  # a host sync per tensor
                ga = ga - dot / (gr.float().pow(2).sum() + s.projection_eps) * gr
        ga = torch.zeros_like(p) if ga is None else ga
        p.grad = ga + s.lam * (gr if gr is not None else 0)
    s.optimizer.step()
    s.optimizer.zero_grad(set_to_none=True)


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


def check_same_update(preset: str, batch_size: int) -> float:
    """One step of ours and of the reference from the same state; returns the max abs parameter difference.

    δ is set to 1e-30 in both: the reference adds δ to ‖g_ret‖² as is, ours adds it to the rescaled ‖ĝ_ret‖²
    (projection.py), so with the default 1e-8 the two rules differ on purpose for tensors with ‖g_ret‖² ~ δ.
    """
    ours = Setup(preset, batch_size, "craft", projection_eps=1e-30)
    ours.drift()
    ref = Setup(preset, batch_size, "reference", projection_eps=1e-30)
    # Same state: weights, optimizer moments (deep copy: on CPU load_state_dict shares tensors) and θ0.
    with torch.no_grad():
        for (_, p), (_, q) in zip(ours.named, ref.named):
            q.copy_(p)
    ref.optimizer.load_state_dict(copy.deepcopy(ours.optimizer.state_dict()))
    ref.lam = float(ours.craft.dual.lam)
    ours.step()
    ref.step()
    return max((p - q).abs().max().item() for (_, p), (_, q) in zip(ours.named, ref.named))


class _SyncCounter:
    """Counts tensor->host reads (item / tolist / bool / float / int) while active."""

    NAMES = ("item", "tolist", "__bool__", "__float__", "__int__")

    def __enter__(self):
        self.n = 0
        self.originals = {name: getattr(torch.Tensor, name) for name in self.NAMES}
        for name, fn in self.originals.items():
            setattr(torch.Tensor, name, self._wrap(fn))
        return self

    def _wrap(self, fn):
        def inner(tensor, *a, **k):
            self.n += 1
            return fn(tensor, *a, **k)
        return inner

    def __exit__(self, *exc):
        for name, fn in self.originals.items():
            setattr(torch.Tensor, name, fn)
        return False


def count_host_syncs(preset: str, batch_size: int) -> dict[str, int]:
    """Host reads in one baseline step, one CRaFT step, and in CRaFT's gradient combination alone."""
    from prismatic.training.craft.projection import project_and_combine_

    counts = {}
    for method in ("baseline", "craft"):
        s = Setup(preset, batch_size, method)
        s.drift(1)
        with _SyncCounter() as c:
            s.step()
        counts[method] = c.n
    g_act = [torch.randn_like(p) for p in s.params]
    g_ret = [torch.randn_like(p) for p in s.params]
    with _SyncCounter() as c:
        project_and_combine_(g_act, g_ret, 1.0, 1e-8, "tensor")
    counts["combination"] = c.n
    counts["tensors"] = len(s.params)
    return counts


class TensorMemoryTracker(TorchDispatchMode):
    """Bytes of tensor storage allocated while active and still alive; `peak` is the maximum.

    Every aten op's outputs are inspected: a storage not among the op's inputs is a new allocation (views and
    in-place results share an input's storage and are not counted again). A storage is released when the last
    tensor seen on it is freed (weakref finalizers). Storages that existed before (weights, optimizer state)
    are not counted, so this is the memory a step adds on top of the model and optimizer."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, list[int]] = {}  # storage data_ptr -> [nbytes, tensors alive on it]
        self.current = 0
        self.peak = 0

    def _release(self, ptr: int) -> None:
        entry = self.live.get(ptr)
        if entry is not None:
            entry[1] -= 1
            if entry[1] == 0:
                del self.live[ptr]
                self.current -= entry[0]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            ptr = storage.data_ptr()
            if ptr == 0:
                continue
            if ptr in self.live:
                self.live[ptr][1] += 1
            elif ptr in inputs:
                continue  # a view / in-place result of a storage that existed before
            else:
                self.live[ptr] = [storage.nbytes(), 1]
                self.current += storage.nbytes()
                self.peak = max(self.peak, self.current)
            weakref.finalize(t, self._release, ptr)
        return out


def step_peak_memory_mb(preset: str, batch_size: int, method: str, full_ft: bool) -> float:
    """Peak memory one step adds on top of weights and optimizer state (see module docstring)."""
    s = Setup(preset, batch_size, method, full_ft=full_ft)
    s.drift(1)  # optimizer state exists, θ != θ0
    _sync(s.device)
    if s.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        s.step()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    with TensorMemoryTracker() as tracker:
        s.step()
    return tracker.peak / 2**20


def anchor_forward_time(s: Setup, repeats: int = 5) -> float:
    """Median time of our anchor forward (θ0 features, adapters disabled, head skipped)."""
    times = []
    for _ in range(repeats + 1):
        _sync(s.device)
        t0 = time.perf_counter()
        with torch.autocast(s.device.type, dtype=s.autocast) if s.autocast else _null():
            s.craft.anchor.compute_features(s.model, s.batch)
        _sync(s.device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def bench_preset(preset: str, batch_size: int, steps: int, warmup: int) -> dict:
    diff = check_same_update(preset, batch_size)
    setups = {m: Setup(preset, batch_size, m) for m in METHODS}
    for s in setups.values():
        s.drift(1)
        s.combine_seconds.clear()
    times = {m: [] for m in METHODS}
    for i in range(warmup + steps):
        for m, s in setups.items():  # interleaved: drift in machine load hits every method alike
            _sync(s.device)
            t0 = time.perf_counter()
            s.step()
            _sync(s.device)
            if i >= warmup:
                times[m].append(time.perf_counter() - t0)
    med = {m: statistics.median(t) for m, t in times.items()}
    comb = statistics.median(setups["craft"].combine_seconds[warmup:])
    anchor = anchor_forward_time(setups["craft"])
    del setups
    mem = {kind: {m: step_peak_memory_mb(preset, batch_size, m, full_ft=kind == "full")
                  for m in ("baseline", "craft", "reference")} for kind in ("lora", "full")}
    return {"diff": diff, "median": med, "combination_s": comb, "anchor_s": anchor, "memory_mb": mem}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "mid"])
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    print(f"device: {_device()}, batch {args.batch_size}, median of {args.steps} steps after {args.warmup} warm-up")
    for p in args.presets:
        c = count_host_syncs(p, args.batch_size)
        print(f"host reads [{p}, {c['tensors']} trainable tensors]: projection + combination {c['combination']}, "
              f"baseline step {c['baseline']}, CRaFT step {c['craft']} (the rest come from the model's forwards: "
              f"transformers/timm control flow, once per forward)")
    results = {}
    for preset in args.presets:
        r = bench_preset(preset, args.batch_size, args.steps, args.warmup)
        results[preset] = r
        base = r["median"]["baseline"]
        print(f"\n[{preset}] ours vs reference, one step from the same state: max |Δθ| = {r['diff']:.2e} "
              f"({'OK' if r['diff'] <= 1e-6 else 'MISMATCH'})")
        print(f"{'method':<14} {'step s':>8} {'x baseline':>11}")
        for m in METHODS:
            print(f"{m:<14} {r['median'][m]:>8.3f} {r['median'][m] / base:>11.2f}")
        print(f"gradient combination (projection + combination inside the step): {r['combination_s'] * 1e3:.2f} ms = "
              f"{100 * r['combination_s'] / r['median']['craft']:.2f}% of the CRaFT step")
        print(f"ours vs reference: {100 * (1 - r['median']['craft'] / r['median']['reference']):.1f}% faster")
        extra = r["median"]["craft"] - base
        rest = extra - r["anchor_s"] - r["combination_s"]
        print(f"where CRaFT's extra {extra * 1e3:.1f} ms go: anchor forward {r['anchor_s'] * 1e3:.1f} ms, "
              f"projection + combination {r['combination_s'] * 1e3:.1f} ms, retention backward + bookkeeping "
              f"{rest * 1e3:.1f} ms")
        for kind, mem in r["memory_mb"].items():
            print(f"peak step memory MB ({kind}, above weights + optimizer state): "
                  + ", ".join(f"{m} {v:.1f}" for m, v in mem.items())
                  + f"  (craft +{mem['craft'] - mem['baseline']:.1f}, reference +{mem['reference'] - mem['baseline']:.1f})")
    last = results[args.presets[-1]]["median"]
    print(f"craft/baseline step time ratio: {last['craft'] / last['baseline']:.2f}  "
          f"reference/baseline: {last['reference'] / last['baseline']:.2f}")


if __name__ == "__main__":
    main()
