"""`finetune.py --dry_run True`: everything checked (hub ids, dataset + statistics, model on meta, world size),
the plan printed, exit 0, nothing trained or written; a missing path or uncached hub id fails naming it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants

from prismatic.models.config import get_preset
from prismatic.models.hub import HubModelNotFound
from prismatic.models.vla import VLAAdapter
from prismatic.training.config import FinetuneConfig
from prismatic.training.dry_run import count_parameters, plan_run
from prismatic.training.lora import apply_lora
from prismatic.training.train import train
from tests.models.hub_cache import BASE_VLM, DINO_REPO, add_base_vlm

ROOT = Path(__file__).resolve().parents[2]


def _cfg(data_root, run_root, **kw) -> FinetuneConfig:
    base = dict(model_preset="tiny", dataset_name="libero_synthetic", data_root_dir=str(data_root),
                run_root_dir=str(run_root), device="cpu", batch_size=4, max_steps=25, save_freq=10,
                shuffle_buffer_size=64, lora_rank=4, dry_run=True)
    base.update(kw)
    return FinetuneConfig(**base)


def _rows(plan) -> dict[str, str]:
    return {f"{section}.{k}": v for section, rows in plan.sections for k, v in rows}


def test_parameter_counts_match_the_materialised_model():
    cfg = FinetuneConfig(model_preset="tiny", lora_rank=4, dry_run=True)
    torch.manual_seed(0)
    model = apply_lora(VLAAdapter(get_preset("tiny")), rank=4, alpha=8, dropout=0.0)  # real tensors
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert count_parameters(cfg, get_preset("tiny")) == (total, trainable)
    full = VLAAdapter(get_preset("tiny"))
    n = sum(p.numel() for p in full.parameters())
    assert count_parameters(FinetuneConfig(model_preset="tiny", use_lora=False), get_preset("tiny")) == (n, n)


def test_plan_of_a_tiny_run_writes_nothing(synthetic_data_root, tmp_path):
    from prismatic.vla.datasets import RLDSDataset

    plan = plan_run(_cfg(synthetic_data_root, tmp_path / "runs"))
    rows = _rows(plan)
    assert not (tmp_path / "runs").exists()  # no run dir, no checkpoint
    assert plan.numbers["world_size"] == 1 and plan.numbers["global_batch"] == 4
    assert plan.numbers["num_checkpoints"] == 3  # steps 10, 20 and the last (25)
    assert rows["schedule.checkpoint steps"] == "10, 20, 25"
    reference = RLDSDataset(synthetic_data_root, "libero_synthetic", None, get_preset("tiny"), train=True,
                            shuffle_buffer_size=64)
    assert plan.numbers["samples_per_epoch"] == reference.num_samples_per_epoch
    assert str(synthetic_data_root / "libero_synthetic") in rows["data.libero_synthetic"]
    with pytest.raises(ValueError, match="--dry_run True trains nothing"):
        train(_cfg(synthetic_data_root, tmp_path / "runs"))


def test_missing_dataset_and_resume_checkpoint_fail_naming_them(synthetic_data_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="libero_nope"):
        plan_run(_cfg(synthetic_data_root, tmp_path, dataset_name="libero_nope_scripted"))
    with pytest.raises(FileNotFoundError, match="no checkpoint of run"):
        plan_run(_cfg(synthetic_data_root, tmp_path, resume=True))


def test_uncached_hub_ids_fail_naming_the_repo(synthetic_data_root, tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty_hub"))
    cfg = _cfg(synthetic_data_root, tmp_path, model_preset="vla-adapter", vlm_path=BASE_VLM)
    with pytest.raises(HubModelNotFound, match=f"--vlm_path {BASE_VLM}.*HF_HUB_OFFLINE=1"):
        plan_run(cfg)
    # The base VLM is cached but timm's tower weights are not: named before any training would start.
    cache = tmp_path / "hub"
    add_base_vlm(cache, tmp_path, VLAAdapter(get_preset("tiny"), attn_implementation="sdpa"), with_towers=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    with pytest.raises(FileNotFoundError, match=DINO_REPO):
        plan_run(cfg)


def _env(hf_home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", WANDB_MODE="disabled")
    return env


@pytest.mark.slow
def test_cli_dry_run_with_hub_ids_from_hf_home(synthetic_data_root, tmp_path):
    """The real preset with --vlm_path / --config_file_path as hub ids, resolved from $HF_HOME/hub (not this
    process's cache setting): exit 0, the plan names the snapshots and the real-size counts, nothing written."""
    hf_home = tmp_path / "hf_home"
    add_base_vlm(hf_home / "hub", tmp_path, VLAAdapter(get_preset("tiny"), attn_implementation="sdpa"))
    run_root = tmp_path / "runs"
    cmd = [sys.executable, str(ROOT / "vla-scripts/finetune.py"), "--model_preset", "vla-adapter-pro",
           "--vlm_path", BASE_VLM, "--config_file_path", BASE_VLM, "--data_root_dir", str(synthetic_data_root),
           "--dataset_name", "libero_synthetic", "--run_root_dir", str(run_root), "--lora_rank", "64",
           "--max_steps", "20000", "--use_craft", "True", "--dry_run", "True"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=_env(hf_home))
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    snapshots = hf_home / "hub" / ("models--" + BASE_VLM.replace("/", "--")) / "snapshots"
    assert str(snapshots) in text and "step-020792-epoch-01-loss=0.5268.pt" in text
    assert f"timm pretrained vit_large_patch14_reg4_dinov2.lvd142m (hub repo {DINO_REPO}" in text
    # Real-size counts on meta: VLM + head + projector + queries + LoRA r=64 (all of it, from the model itself).
    with torch.device("meta"):
        reference = apply_lora(VLAAdapter(get_preset("vla-adapter-pro"), attn_implementation="sdpa"), rank=64,
                               alpha=128, dropout=0.0)
    total = sum(p.numel() for p in reference.parameters())
    trainable = sum(p.numel() for p in reference.parameters() if p.requires_grad)
    assert f"{total:,} total, {trainable:,} trainable" in text
    assert "optimizer steps   0 -> 20000" in text and "world size  1" in text
    assert not run_root.exists()
    missing = subprocess.run(cmd[:5] + ["VLA-Adapter/LIBERO-Nope"] + cmd[6:], capture_output=True, text=True,
                             timeout=600, cwd=tmp_path, env=_env(hf_home))
    assert missing.returncode == 1
    assert "error: --vlm_path VLA-Adapter/LIBERO-Nope (revision main)" in missing.stderr
    assert "Traceback" not in missing.stderr
