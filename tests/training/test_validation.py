"""In-training validation (--use_val_set / --val_freq / --val_time_limit): correct numbers on the held-out
episodes, no effect on training or on exact resume, the time limit, and the same numbers under DDP."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from prismatic.training import checkpoint as ckpt
from prismatic.training.config import FinetuneConfig
from prismatic.training.distributed import DistInfo
from prismatic.training.metrics import WANDB_KEYS, read_metrics
from prismatic.training.step import StepContext
from prismatic.training.train import train
from prismatic.training.validation import Validator, validation_due

ROOT = Path(__file__).resolve().parents[2]
RUN_ID = "val"
VAL_KEYS = ("val_loss", "val_curr_action_l1", "val_next_actions_l1", "val_retention_loss", "val_batches_count")
COMMON = dict(model_preset="tiny", dataset_name="libero_synthetic", device="cpu", batch_size=4, learning_rate=1e-3,
              max_steps=4, save_freq=2, shuffle_buffer_size=64, image_aug=True, lora_rank=4, wandb_mode="disabled",
              wandb_log_freq=1, seed=3, use_craft=True, val_fraction=0.1, val_freq=2, val_time_limit=3600,
              run_id_override=RUN_ID)


def _cfg(data_root, run_root, **kw) -> FinetuneConfig:
    return FinetuneConfig(**{**COMMON, "data_root_dir": str(data_root), "run_root_dir": str(run_root), **kw})


def _weights(run_root: Path, step: int = 4) -> dict[str, torch.Tensor]:
    loaded = ckpt.load_checkpoint(ckpt.checkpoint_dir(run_root, RUN_ID, step), need_lora=True, need_merged=False)
    out = {f"action_head.{k}": v for k, v in loaded.action_head.items()}
    out.update({f"lora.{k}": v for k, v in loaded.lora_adapter.items()})
    out["action_queries"] = loaded.action_queries
    return out


def _reference_val(checkpoint: Path, data_root: Path, val_fraction: float) -> tuple[float, float, float, int]:
    """Per-sample mean L1 (all / first action / the rest) over the whole val split, written out plainly: the
    released-format model (merged weights) in eval mode, every val frame once."""
    from prismatic.models.loading import load_vla_checkpoint
    from prismatic.vla.datasets import PaddedCollator, RLDSBatchTransform, RLDSDataset

    loaded = load_vla_checkpoint(checkpoint)
    data = RLDSDataset(data_root, "libero_synthetic", RLDSBatchTransform(loaded.processor), loaded.config,
                       train=False, val_fraction=val_fraction, seed=3)
    collate = PaddedCollator(loaded.processor)
    totals, n, batch = [0.0, 0.0, 0.0], 0, []
    samples = list(data)
    with torch.no_grad():
        for start in range(0, len(samples), 7):  # any batching: the mean is per sample
            batch = collate(samples[start:start + 7])
            pred = loaded.model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                                batch["proprio"]).predicted_actions.float()
            err = (pred - batch["actions"].float()).abs()  # (B, chunk, A)
            totals[0] += err.mean(dim=(1, 2)).sum().item()
            totals[1] += err[:, 0].mean(dim=1).sum().item()
            totals[2] += err[:, 1:].mean(dim=(1, 2)).sum().item()
            n += err.shape[0]
    return totals[0] / n, totals[1] / n, totals[2] / n, n


@pytest.mark.slow
def test_validation_is_correct_and_changes_nothing_in_training_or_resume(synthetic_data_root, tmp_path):
    # A: validation on, uninterrupted. B: validation off for steps 1-2, then resumed with it on for 3-4.
    a = train(_cfg(synthetic_data_root, tmp_path / "a", use_val_set=True))
    train(_cfg(synthetic_data_root, tmp_path / "b", max_steps=2))
    b = train(_cfg(synthetic_data_root, tmp_path / "b", use_val_set=True, resume=True))
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{k}: validation changed training"
    rows_a, rows_b = read_metrics(a.run_dir), read_metrics(b.run_dir)
    assert [r["step"] for r in rows_a] == [r["step"] for r in rows_b] == [1, 2, 3, 4]
    for key in ("loss", "retention_loss", "lambda", "grad_norm"):
        assert [r[key] for r in rows_a] == [r[key] for r in rows_b], key
    # Val metrics in the rows of the val steps only (upstream: every positive multiple of val_freq).
    assert [sorted(set(VAL_KEYS) & set(r)) for r in rows_a] == [[], sorted(VAL_KEYS), [], sorted(VAL_KEYS)]
    assert all(not set(VAL_KEYS) & set(r) for r in rows_b[:2])
    assert {k: rows_b[3][k] for k in VAL_KEYS} == {k: rows_a[3][k] for k in VAL_KEYS}  # the same pass, exactly

    # The numbers: the merged model of the step-4 checkpoint over the whole val split, per sample.
    loss, curr, nxt, n = _reference_val(ckpt.checkpoint_dir(tmp_path / "a", RUN_ID, 4), synthetic_data_root, 0.1)
    val = rows_a[3]
    assert val["val_loss"] == pytest.approx(loss, rel=1e-4)
    assert val["val_curr_action_l1"] == pytest.approx(curr, rel=1e-4)
    assert val["val_next_actions_l1"] == pytest.approx(nxt, rel=1e-4)
    assert val["val_batches_count"] == math.ceil(n / 4)
    assert 0 < val["val_retention_loss"] < 1 and val["val_retention_loss"] != rows_a[1]["val_retention_loss"]
    # Held-out episodes are never trained on, with or without validation.
    import json

    train_eps = json.loads((a.run_dir / "selected_episodes.json").read_text())["libero_synthetic"]
    assert sum(len(v) for v in train_eps.values()) == 36  # 4 tasks x 10 episodes, 1 per task held out


def test_val_keys_are_upstreams_names():
    assert WANDB_KEYS["val_loss"] == "VLA Val/Loss"
    assert WANDB_KEYS["val_curr_action_l1"] == "VLA Val/Curr Action L1 Loss"
    assert WANDB_KEYS["val_next_actions_l1"] == "VLA Val/Next Actions L1 Loss"
    assert WANDB_KEYS["val_batches_count"] == "VLA Val/Val Batches Count"  # upstream's title-cased name
    assert WANDB_KEYS["val_retention_loss"] == "VLA Val/Retention Loss"
    assert [s for s in range(1, 31) if validation_due(s, 10)] == [10, 20, 30]


class _Out:
    def __init__(self, pred, target):
        err = (pred - target).abs()
        self.loss, self.curr_action_l1, self.next_actions_l1 = err.mean(), err[:, 0].mean(), err[:, 1:].mean()


class _FakeVLA(nn.Module):
    """Predicts a constant; a frozen submodule stays in eval mode across validation."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.tensor(0.25))
        self.frozen = nn.Dropout(0.5)
        self.frozen.eval()
        self.seen_training = []

    def forward(self, input_ids, attention_mask, pixel_values, proprio, actions, **kw):
        self.seen_training.append(self.training)
        return _Out(torch.full_like(actions, float(self.bias)), actions)


class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        self.t += 1.0  # one second per reading
        return self.t


def _batches(sizes):
    out = []
    for i, b in enumerate(sizes):
        actions = torch.arange(b * 3 * 2, dtype=torch.float32).reshape(b, 3, 2) / (10 + i)
        out.append({"input_ids": torch.zeros(b, 4, dtype=torch.long), "attention_mask": torch.ones(b, 4, dtype=torch.bool),
                    "pixel_values": torch.zeros(b, 6, 2, 2), "proprio": torch.zeros(b, 8), "actions": actions})
    return out


def test_time_limit_stops_the_pass_and_training_state_is_untouched():
    model = _FakeVLA()
    model.train()
    model.frozen.eval()
    ctx = StepContext(model=model, params=[model.bias], optimizer=None, scheduler=None,
                      dist=DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu")),
                      grad_accumulation_steps=1, max_grad_norm=None, autocast_dtype=None)
    batches = _batches([4, 3, 4, 2, 4, 4])
    rng = torch.get_rng_state()
    # Clock readings: start = 1, then 2, 3, 4 after batches 1-3: 4 - 1 > 2.5 stops after the third batch.
    metrics = Validator(lambda: iter(batches), ctx, time_limit_s=2.5, clock=_Clock()).run()
    assert metrics["val_batches_count"] == 3
    seen = batches[:3]
    errs = [(0.25 - b["actions"]).abs() for b in seen]
    n = sum(e.shape[0] for e in errs)
    assert metrics["val_loss"] == pytest.approx(sum(e.mean(dim=(1, 2)).sum().item() for e in errs) / n)
    assert metrics["val_curr_action_l1"] == pytest.approx(sum(e[:, 0].mean(dim=1).sum().item() for e in errs) / n)
    assert metrics["val_next_actions_l1"] == pytest.approx(sum(e[:, 1:].mean(dim=(1, 2)).sum().item() for e in errs) / n)
    assert "val_retention_loss" not in metrics  # no CRaFT
    assert model.seen_training == [False, False, False]  # eval mode during the pass ...
    assert model.training and not model.frozen.training  # ... and every module's own mode restored after it
    assert torch.equal(torch.get_rng_state(), rng)
    # Without a limit hit, every batch is used.
    assert Validator(lambda: iter(batches), ctx, time_limit_s=1e9, clock=_Clock()).run()["val_batches_count"] == 6


def test_validation_flags():
    assert FinetuneConfig(model_preset="tiny", use_val_set=True).val_fraction == 0.05  # upstream's 95/5 split
    assert FinetuneConfig(model_preset="tiny").val_fraction == 0.0
    with pytest.raises(ValueError, match="--use_val_set True needs held-out episodes"):
        FinetuneConfig(model_preset="tiny", use_val_set=True, val_fraction=0.0)
    for name, value in (("val_fraction", 1.0), ("val_fraction", -0.1), ("val_freq", 0), ("val_time_limit", 0)):
        with pytest.raises(ValueError, match=f"--{name}"):
            FinetuneConfig(model_preset="tiny", **{name: value})


@pytest.mark.slow
def test_validation_under_ddp_averages_over_ranks(synthetic_data_root, tmp_path):
    """2 processes: each validates its half of the val frames (batches of 2); the logged numbers are the
    per-sample means over the WHOLE val split (sums and counts averaged once over the ranks), i.e. the plain
    reference on the run's own step-4 checkpoint."""
    flags = []
    for name, value in {**COMMON, "use_craft": False, "use_val_set": True, "batch_size": 2,
                        "data_root_dir": str(synthetic_data_root), "run_root_dir": str(tmp_path / "two")}.items():
        flags += [f"--{name}", str(value)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "vla-scripts/finetune.py"), *flags]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    rows = read_metrics(tmp_path / "two" / RUN_ID)
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and "val_loss" in rows[1] and "val_loss" in rows[3]
    loss, curr, nxt, n = _reference_val(ckpt.checkpoint_dir(tmp_path / "two", RUN_ID, 4), synthetic_data_root, 0.1)
    val = rows[3]
    assert val["val_loss"] == pytest.approx(loss, rel=1e-4)
    assert val["val_curr_action_l1"] == pytest.approx(curr, rel=1e-4)
    assert val["val_next_actions_l1"] == pytest.approx(nxt, rel=1e-4)
    # rank r takes frames k = r (mod 2): ceil(n/2) and floor(n/2) frames, in batches of 2 each
    assert val["val_batches_count"] == math.ceil(math.ceil(n / 2) / 2) + math.ceil((n // 2) / 2)
