"""Same result on any number of processes: N x B/N (x G micro-batches) == 1 x B, and elastic resume N <-> M.

End to end through `train()` / `vla-scripts/finetune.py` on the generated dataset, CRaFT on, augmentation on
(so data order, augmentation draws, head noise and the CRaFT dual variable all have to be layout-free).
The reference for every run is the plain 1-process run with the whole global batch.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prismatic.training import checkpoint as ckpt
from prismatic.training.config import FinetuneConfig
from prismatic.training.metrics import read_metrics
from prismatic.training.train import train

ROOT = Path(__file__).resolve().parents[2]
RUN_ID = "ws"
# Global batch 4 everywhere; lr warmup/decay inside the 4 steps so the schedule position matters too.
COMMON = dict(model_preset="tiny", dataset_name="libero_synthetic", device="cpu", learning_rate=1e-3, max_steps=4,
              save_freq=2, shuffle_buffer_size=64, image_aug=True, lora_rank=4, wandb_mode="disabled",
              wandb_log_freq=1, seed=3, use_craft=True, craft_dual_lr=0.5, craft_retention_budget=0.0,
              lr_warmup_steps=2, num_steps_before_decay=3, run_id_override=RUN_ID)


def _cfg(data_root, run_root, **kw) -> FinetuneConfig:
    return FinetuneConfig(**{**COMMON, "data_root_dir": str(data_root), "run_root_dir": str(run_root), **kw})


def _flags(cfg: FinetuneConfig) -> list[str]:
    """The CLI flags of `cfg` (every field that differs from its default)."""
    out = []
    for name, default in FinetuneConfig.__dataclass_fields__.items():
        value = getattr(cfg, name)
        if value != default.default:
            out += [f"--{name}", str(value)]
    return out


def _torchrun(cfg: FinetuneConfig) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "vla-scripts/finetune.py"), *_flags(cfg)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


def _stopped_at_step_2(run_root: Path, into: Path) -> Path:
    """A copy of a run as if it had been stopped right after its step-2 checkpoint."""
    shutil.copytree(run_root, into)
    shutil.rmtree(ckpt.checkpoint_dir(into, RUN_ID, 4))
    return into


def _weights(run_root: Path) -> dict[str, torch.Tensor]:
    loaded = ckpt.load_checkpoint(ckpt.checkpoint_dir(run_root, RUN_ID, 4), need_lora=True, need_merged=False)
    out = {f"action_head.{k}": v for k, v in loaded.action_head.items()}
    out.update({f"lora.{k}": v for k, v in loaded.lora_adapter.items()})
    out["action_queries"] = loaded.action_queries
    out["__lambda__"] = torch.tensor(float(loaded.training_state["craft"]["dual"]["lambda"]))
    return out


def _assert_same_run(reference: Path, other: Path, what: str, atol: float = 1e-5, rtol: float = 1e-4) -> None:
    """Same weights to atol + rtol * |w| per element. A different data stream moves every tensor by ~1e-3 after
    4 steps at lr 1e-3; summation-order rounding (micro-batch 4 vs 2 in one matmul) stays below ~2e-6 except where
    Adam divides a near-zero gradient by its own tiny RMS: LoRA A of a layer whose B started at 0 (measured: one
    element of 716 at 1.19e-5, |w| = 0.27). rtol covers that amplification, not a data change."""
    a, b = _weights(reference), _weights(other)
    assert a.keys() == b.keys(), what
    for k in a:
        excess = ((a[k].float() - b[k].float()).abs() - (atol + rtol * a[k].float().abs())).max().item()
        diff = (a[k].float() - b[k].float()).abs().max().item()
        assert excess <= 0, f"{what}: {k} differs by {diff:.3e} (beyond {atol:g} + {rtol:g} |w|)"
    rows_a, rows_b = read_metrics(reference / RUN_ID), read_metrics(other / RUN_ID)
    assert [r["step"] for r in rows_a] == [r["step"] for r in rows_b] == [1, 2, 3, 4], what
    for key in ("loss", "retention_loss", "lambda", "lr"):
        assert [r[key] for r in rows_b] == pytest.approx([r[key] for r in rows_a], rel=1e-5, abs=1e-7), (what, key)


@pytest.mark.slow
def test_one_process_accumulation_split_equals_the_full_batch(synthetic_data_root, tmp_path):
    full = tmp_path / "b4"
    train(_cfg(synthetic_data_root, full, batch_size=4))
    train(_cfg(synthetic_data_root, tmp_path / "b2x2", batch_size=2, grad_accumulation_steps=2))
    _assert_same_run(full, tmp_path / "b2x2", "--batch_size 2 --grad_accumulation_steps 2")
    # The runs trained: the head moved away from its initial values, so equality is not vacuous.
    from prismatic.models.vla import VLAAdapter
    from prismatic.training.train import model_config_for

    torch.manual_seed(COMMON["seed"])  # the tiny preset's initialisation (train.build_model)
    initial = VLAAdapter(model_config_for(_cfg(synthetic_data_root, full))).action_head.state_dict()
    last = _weights(full)
    assert max((last[f"action_head.{k}"] - v).abs().max().item() for k, v in initial.items()) > 1e-3


@pytest.mark.slow
@pytest.mark.ddp
def test_two_processes_and_elastic_resume_equal_one_process(synthetic_data_root, tmp_path):
    # Reference: 1 process, the whole global batch of 4 (checkpoints at steps 2 and 4).
    single = tmp_path / "single"
    train(_cfg(synthetic_data_root, single, batch_size=4))
    # 2 processes x batch 2 from the command line.
    double = tmp_path / "double"
    _torchrun(_cfg(synthetic_data_root, double, batch_size=2))
    _assert_same_run(single, double, "torchrun --nproc_per_node 2 --batch_size 2")
    # 2 -> 1: the 2-process run stopped at step 2 continues in 1 process with --batch_size 4.
    two_to_one = _stopped_at_step_2(double, tmp_path / "two_to_one")
    train(_cfg(synthetic_data_root, two_to_one, batch_size=4, resume=True))
    _assert_same_run(single, two_to_one, "2 processes -> resumed on 1")
    # 1 -> 2: the 1-process run stopped at step 2 continues on 2 processes with --batch_size 2.
    one_to_two = _stopped_at_step_2(single, tmp_path / "one_to_two")
    _torchrun(_cfg(synthetic_data_root, one_to_two, batch_size=2, resume=True))
    _assert_same_run(single, one_to_two, "1 process -> resumed on 2")


def test_resume_with_another_global_batch_is_refused(synthetic_data_root, tmp_path):
    train(_cfg(synthetic_data_root, tmp_path, batch_size=2, max_steps=1, save_freq=1, use_craft=False))
    # Same per-process batch, other accumulation: the global batch changes from 2 to 4.
    with pytest.raises(ValueError, match=r"global batch differs: checkpoint 2 .* vs now 4"):
        train(_cfg(synthetic_data_root, tmp_path, batch_size=2, grad_accumulation_steps=2, max_steps=2,
                   use_craft=False, resume=True))
