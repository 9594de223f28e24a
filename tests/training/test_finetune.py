"""End-to-end fine-tuning on the generated dataset: learning, exact resume, checkpoints, errors."""

import json
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


def _cfg(data_root, run_root, **kw):
    base = dict(model_preset="tiny", dataset_name="libero_synthetic", data_root_dir=str(data_root),
                run_root_dir=str(run_root), device="cpu", batch_size=4, learning_rate=1e-3, max_steps=4,
                save_freq=2, shuffle_buffer_size=64, image_aug=True, lora_rank=4, wandb_mode="disabled",
                wandb_log_freq=1, seed=3)
    base.update(kw)
    return FinetuneConfig(**base)


def _state(run_root, run_id, step):
    path = ckpt.checkpoint_dir(run_root, run_id, step)
    return ckpt.load_checkpoint(path, need_lora=True, need_merged=True)


def _assert_checkpoints_equal(a, b):
    for name in ("action_head", "proprio_projector", "lora_adapter", "merged_vlm"):
        da, db = getattr(a, name), getattr(b, name)
        assert da.keys() == db.keys(), name
        for k in da:
            assert torch.equal(da[k], db[k]), f"{name}.{k} differs"
    assert torch.equal(a.action_queries, b.action_queries)
    oa, ob = a.training_state["optimizer"], b.training_state["optimizer"]
    assert oa["param_groups"][0]["lr"] == ob["param_groups"][0]["lr"]
    for idx in oa["state"]:
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(torch.as_tensor(oa["state"][idx][key]), torch.as_tensor(ob["state"][idx][key]))
    assert a.training_state["scheduler"] == b.training_state["scheduler"]


@pytest.mark.slow
@pytest.mark.parametrize("use_craft", [False, True])
def test_train_2n_equals_train_n_resume_n(synthetic_data_root, tmp_path, use_craft):
    full = _cfg(synthetic_data_root, tmp_path / "full", use_craft=use_craft, lr_warmup_steps=2,
                num_steps_before_decay=3)
    res_full = train(full)
    first = _cfg(synthetic_data_root, tmp_path / "split", use_craft=use_craft, lr_warmup_steps=2,
                 num_steps_before_decay=3, max_steps=2)
    train(first)
    resumed = _cfg(synthetic_data_root, tmp_path / "split", use_craft=use_craft, lr_warmup_steps=2,
                   num_steps_before_decay=3, resume=True)
    res_resumed = train(resumed)
    assert res_full.run_id == res_resumed.run_id
    a, b = _state(tmp_path / "full", res_full.run_id, 4), _state(tmp_path / "split", res_resumed.run_id, 4)
    _assert_checkpoints_equal(a, b)
    if use_craft:
        assert a.training_state["craft"]["dual"] == b.training_state["craft"]["dual"]
    # the logged curves agree too (resume truncates and re-logs nothing twice)
    keys = ("loss", "retention_loss", "lambda") if use_craft else ("loss",)
    ra, rb = read_metrics(res_full.run_dir), read_metrics(res_resumed.run_dir)
    assert len(ra) == len(rb) == 4
    for key in keys:  # L_ret after the resume is measured against the same θ0 (never re-snapshotted)
        assert [r[key] for r in ra] == [r[key] for r in rb], key


@pytest.mark.slow
def test_loss_falls_below_constant_predictor(synthetic_data_root, tmp_path):
    # The generated task has a plateau at the constant predictor's loss before the policy starts to use
    # the images (~step 100 at this setting), hence 220 steps.
    cfg = _cfg(synthetic_data_root, tmp_path, max_steps=220, save_freq=220, batch_size=8, image_aug=False,
               learning_rate=2e-3, lr_warmup_steps=5, wandb_log_freq=5, lora_rank=8)
    result = train(cfg)
    rows = read_metrics(result.run_dir)
    first = rows[0]["loss"]
    last = sum(r["loss"] for r in rows[-4:]) / 4
    # constant predictor: the per-dimension median of the normalised actions gives the smallest L1
    stats = json.loads((result.run_dir / "dataset_statistics.json").read_text())
    assert "libero_synthetic" in stats
    from tests.training.baselines import constant_predictor_l1

    const = constant_predictor_l1(synthetic_data_root)
    assert last < 0.8 * first, (first, last)
    assert last < 0.85 * const, (last, const)


def test_resume_without_checkpoint_is_clear_error(synthetic_data_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint of run"):
        train(_cfg(synthetic_data_root, tmp_path, resume=True))


def test_resume_with_different_flags_is_refused(synthetic_data_root, tmp_path):
    cfg = _cfg(synthetic_data_root, tmp_path, max_steps=1, save_freq=1, run_id_override="r")
    train(cfg)
    with pytest.raises(ValueError, match="batch_size"):
        train(_cfg(synthetic_data_root, tmp_path, max_steps=2, batch_size=2, run_id_override="r", resume=True))


def test_finetune_help_documents_flags():
    out = subprocess.run([sys.executable, str(ROOT / "vla-scripts/finetune.py"), "--help"], capture_output=True,
                         text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    for flag in ("--use_craft", "--craft_retention_budget", "--lora_rank", "--resume_step", "--n_shot_per_task",
                 "--shuffle_buffer_size", "--wandb_mode", "--model_preset"):
        assert flag in out.stdout


@pytest.mark.slow
def test_anchor_cache_gives_the_same_run(synthetic_data_root, tmp_path):
    """--craft_anchor_cache (valid without augmentation) must not change anything but the cost: same losses,
    same λ as recomputing the anchor features every step."""
    common = dict(use_craft=True, image_aug=False, max_steps=3, save_freq=3, craft_dual_lr=1.0)
    plain = read_metrics(train(_cfg(synthetic_data_root, tmp_path / "plain", **common)).run_dir)
    cached = read_metrics(train(_cfg(synthetic_data_root, tmp_path / "cached", craft_anchor_cache=True,
                                     **common)).run_dir)
    for key in ("loss", "retention_loss", "lambda"):
        assert [r[key] for r in cached] == pytest.approx([r[key] for r in plain], rel=1e-6, abs=1e-9), key
