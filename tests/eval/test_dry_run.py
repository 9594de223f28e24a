"""`run_libero_eval.py --dry_run True`: suite, checkpoint (directory or hub id), flags and run dir checked
without loading weights or starting a simulator; the plan printed; bad input fails naming it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import constants
from safetensors.torch import load_file, save_file

from prismatic.eval import runner
from prismatic.eval.config import EvalConfig
from prismatic.eval.dry_run import plan_evaluation
from prismatic.models.hub import HubModelNotFound
from prismatic.models.loading import CheckpointError, load_vla_checkpoint
from tests.eval.helpers import make_tiny_checkpoint
from tests.models.hub_cache import add_snapshot

ROOT = Path(__file__).resolve().parents[2]
RELEASED = "VLA-Adapter/LIBERO-Spatial-Pro"


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("dry_ckpt") / "ckpt")


@pytest.fixture
def no_simulator(monkeypatch):
    class _Forbidden:
        def __init__(self, *args, **kwargs):
            raise AssertionError("a simulator worker was started by a dry run")

    monkeypatch.setattr(runner, "SimWorker", _Forbidden)


def _cfg(tmp_path, ckpt, **overrides) -> EvalConfig:
    base = dict(pretrained_checkpoint=str(ckpt), task_suite_name="libero_spatial", task_ids=[0, 3],
                num_trials_per_task=2, device="cpu", local_log_dir=str(tmp_path / "logs"), run_id="r", dry_run=True)
    return EvalConfig(**{**base, **overrides})


def test_plan_checks_without_simulating_or_writing(tiny_ckpt, tmp_path, no_simulator):
    plan = plan_evaluation(_cfg(tmp_path, tiny_ckpt))
    loaded = load_vla_checkpoint(tiny_ckpt)  # the reference: the model the real run would load
    assert plan.numbers["total_parameters"] == sum(p.numel() for p in loaded.model.parameters())
    assert plan.numbers["num_episodes"] == 4 and plan.numbers["unnorm_key"] == "libero_spatial_no_noops"
    assert not (tmp_path / "logs").exists()
    text = "\n".join(plan.lines())
    assert "tasks              2: 0, 3" in text and "Pro head" in text
    with pytest.raises(ValueError, match="--dry_run True simulates nothing"):
        runner.run_evaluation(_cfg(tmp_path, tiny_ckpt))


def test_bad_flags_fail_in_the_dry_run(tiny_ckpt, tmp_path, no_simulator):
    with pytest.raises(CheckpointError, match="head variant mismatch"):
        plan_evaluation(_cfg(tmp_path, tiny_ckpt, use_pro_version=False))
    with pytest.raises(ValueError, match="--task_ids \\[12\\] out of range"):
        plan_evaluation(_cfg(tmp_path, tiny_ckpt, task_ids=[12]))
    with pytest.raises(ValueError, match="--unnorm_key 'libero_goal'"):
        plan_evaluation(_cfg(tmp_path, tiny_ckpt, unnorm_key="libero_goal"))
    with pytest.raises(FileNotFoundError, match="not a directory"):
        plan_evaluation(_cfg(tmp_path, tmp_path / "nope"))


def test_shape_mismatch_is_found_from_the_file_header(tiny_ckpt, tmp_path, no_simulator):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_ckpt, broken)
    state = load_file(str(broken / "model.safetensors"))
    state["action_queries.weight"] = state["action_queries.weight"][:-1].contiguous()
    save_file(state, str(broken / "model.safetensors"))
    with pytest.raises(CheckpointError, match="action_queries.weight has shape"):
        plan_evaluation(_cfg(tmp_path, broken))


def test_uncached_hub_checkpoint_fails_naming_it(tmp_path, monkeypatch, no_simulator):
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(HubModelNotFound, match="--pretrained_checkpoint VLA-Adapter/LIBERO-Object"):
        plan_evaluation(_cfg(tmp_path, "VLA-Adapter/LIBERO-Object"))


@pytest.mark.slow
def test_cli_dry_run_with_a_hub_checkpoint_from_hf_home(tiny_ckpt, tmp_path):
    hf_home = tmp_path / "hf_home"
    snapshot = add_snapshot(hf_home / "hub", RELEASED, tiny_ckpt)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", MUJOCO_GL=os.environ.get("MUJOCO_GL", "osmesa"))
    cmd = [sys.executable, str(ROOT / "experiments/robot/libero/run_libero_eval.py"), "--pretrained_checkpoint",
           RELEASED, "--task_suite_name", "libero_spatial", "--local_log_dir", str(tmp_path / "logs"),
           "--dry_run", "True"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"{RELEASED} -> {snapshot}" in out.stdout and "500 (50 per task" in out.stdout
    assert not (tmp_path / "logs").exists()
    missing = subprocess.run(cmd[:3] + ["VLA-Adapter/LIBERO-Long"] + cmd[4:], capture_output=True, text=True,
                             timeout=600, cwd=tmp_path, env=env)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert "error: --pretrained_checkpoint VLA-Adapter/LIBERO-Long (revision main)" in missing.stderr
