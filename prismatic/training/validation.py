"""In-training validation: upstream's --use_val_set / --val_freq / --val_time_limit.

Every `val_freq` optimizer steps, one ordered pass over the held-out episodes (the data pipeline's per-task
"val" split, `--val_fraction` of each task's episodes, never trained on) with the model in eval mode (no
head noise, no dropout) and no gradients. Logged with the train metrics' names under `VLA Val/` (upstream's
prefix): Loss, Curr Action L1 Loss, Next Actions L1 Loss, Retention Loss (CRaFT or --monitor_retention),
Val Batches Count.

    per rank: frames k ≡ rank (mod world size) of the val stream, batches of --batch_size, until the stream
              ends or --val_time_limit seconds have passed (checked after each batch)
    all ranks: sums and sample counts averaged once -> per-sample means over everything any rank saw

Training is unaffected: nothing here draws from a global RNG (all training randomness is keyed on
(seed, step, sample), randomness.py), touches a parameter or an optimizer, or changes the train stream; the
modules' train/eval flags are restored exactly. A run with --use_val_set True ends with the same weights as
the same run without it (tests/training/test_validation.py).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

import torch

from prismatic.training.distributed import DistInfo, all_reduce_mean_
from prismatic.training.step import MODEL_INPUT_KEYS, StepContext, to_device

log = logging.getLogger(__name__)

# Sums accumulated per pass, in this order (then averaged over ranks in one call).
_SUMS = ("loss", "curr_action_l1", "next_actions_l1", "retention_loss")


def validation_due(step: int, val_freq: int) -> bool:
    """Upstream's rule: at every positive multiple of val_freq (optimizer steps done)."""
    return step > 0 and step % val_freq == 0


class Validator:
    """One validation pass per call of `run()`, on every rank together (it ends with one all-reduce)."""

    def __init__(self, loader_factory: Callable[[], object], ctx: StepContext, time_limit_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.loader_factory = loader_factory  # a fresh iterable of collated batches (one ordered val pass)
        self.ctx = ctx
        self.time_limit_s = time_limit_s
        self.clock = clock
        craft = ctx.craft
        # The retention loss on val batches costs one anchor forward each; with the anchor cache on it would
        # fill the cache with val samples, so it is left out then.
        self.with_retention = craft is not None and getattr(craft.anchor, "cache", None) is None
        if craft is not None and not self.with_retention:
            log.info("validation: no retention loss with --craft_anchor_cache True (it would cache val samples)")

    def _autocast(self):
        if self.ctx.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.ctx.dist.device.type, dtype=self.ctx.autocast_dtype)

    @torch.no_grad()
    def run(self) -> dict[str, float]:
        """The val metrics (metrics.jsonl names, `val_` + the train name); identical on every rank."""
        ctx, craft = self.ctx, self.ctx.craft
        device = ctx.dist.device
        sums = torch.zeros(len(_SUMS), dtype=torch.float64, device=device)
        counts = torch.zeros(2, dtype=torch.float64, device=device)  # [samples, batches] of this rank
        modes = [(m, m.training) for m in ctx.model.modules()]
        ctx.model.eval()
        start = self.clock()
        timed_out = False
        try:
            for batch in self.loader_factory():
                batch = to_device(batch, device)
                inputs = {k: batch[k] for k in MODEL_INPUT_KEYS}
                with self._autocast():
                    out = ctx.model(**inputs, output_craft_features=self.with_retention,
                                    craft_layer_idx=craft.layer_idx if self.with_retention else None)
                    ret = None
                    if self.with_retention:
                        ret, _ = craft.retention_loss(out, {k: v for k, v in batch.items() if k != "sample_keys"})
                b = float(inputs["input_ids"].shape[0])
                # Every sample has the same number of action / feature elements: batch mean x b = sum.
                sums[0] += out.loss.double() * b
                sums[1] += out.curr_action_l1.double() * b
                if out.next_actions_l1 is not None:  # None with a chunk of one action
                    sums[2] += out.next_actions_l1.double() * b
                if ret is not None:
                    sums[3] += ret.double() * b
                counts += torch.tensor([b, 1.0], dtype=torch.float64, device=device)
                if self.clock() - start > self.time_limit_s:
                    timed_out = True
                    break
        finally:
            for module, training in modes:
                module.training = training
        elapsed = self.clock() - start
        packed = torch.cat([sums, counts])
        all_reduce_mean_([packed], ctx.dist)  # means of sums and of counts: their ratio is the global mean
        host = packed.tolist()
        samples = host[len(_SUMS)]
        if samples == 0:
            raise ValueError("validation: the val split yielded no batch (check --val_fraction: every task needs "
                             "held-out episodes at least as long as the action chunk)")
        metrics = {f"val_{name}": host[i] / samples for i, name in enumerate(_SUMS)}
        if not self.with_retention:
            del metrics["val_retention_loss"]
        metrics["val_batches_count"] = host[len(_SUMS) + 1] * ctx.dist.world_size
        if timed_out:
            log.info("validation stopped at --val_time_limit %ss after %.1fs", self.time_limit_s, elapsed)
        return metrics


def make_val_loader_factory(cfg, vla_config, tokenizer, info: DistInfo) -> Callable[[], object]:
    """Batches of the "val" split for this rank: the frames k ≡ rank (mod world size), in order."""
    from prismatic.models.processing import VLAProcessor
    from prismatic.vla.datasets import PaddedCollator, RLDSBatchTransform, RLDSDataset

    processor = VLAProcessor(tokenizer, vla_config.vision.image_size, vla_config.num_images_in_input,
                             vla_config.num_action_queries)
    dataset = RLDSDataset(
        data_root_dir=cfg.data_root_dir, dataset_name=cfg.dataset_name,
        batch_transform=RLDSBatchTransform(processor), model_config=vla_config,
        train=False, image_aug=False, seed=cfg.seed, rank=info.rank, world_size=info.world_size,
        val_fraction=cfg.val_fraction,
    )
    # A private generator: creating a loader iterator draws a seed, which must not come from the global RNG.
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, collate_fn=PaddedCollator(processor),
                                         num_workers=0, generator=torch.Generator().manual_seed(cfg.seed))
    return lambda: iter(loader)
