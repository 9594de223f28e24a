"""The VLA policy on a tiny checkpoint, and bad input failing BEFORE any simulator starts."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from prismatic.eval import runner
from prismatic.eval.config import EvalConfig
from prismatic.eval.policies import build_vla_policy, resolve_device
from tests.eval.helpers import fake_observation, make_tiny_checkpoint


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("eval_ckpt") / "ckpt")


@pytest.fixture
def no_simulator(monkeypatch):
    """Any attempt to start a simulator worker fails the test."""

    class _Forbidden:
        def __init__(self, *args, **kwargs):
            raise AssertionError("a simulator worker was started although the input is invalid")

    monkeypatch.setattr(runner, "SimWorker", _Forbidden)


def _cfg(tmp_path, ckpt, **overrides) -> EvalConfig:
    base = dict(pretrained_checkpoint=str(ckpt), task_ids=[0], num_trials_per_task=1, device="cpu",
                local_log_dir=str(tmp_path), run_id="r")
    return EvalConfig(**{**base, **overrides})


def test_vla_policy_outputs_env_actions(tiny_ckpt, tmp_path):
    policy = build_vla_policy(_cfg(tmp_path, tiny_ckpt))
    observations = [fake_observation(0), fake_observation(1)]
    batch = policy.predict(observations, ["pick up the bowl", "put the bowl on the plate"])
    assert batch.shape == (2, policy.chunk_size, 7) and np.all(np.isfinite(batch))
    assert set(np.unique(batch[..., 6])) <= {-1.0, 0.0, 1.0}  # binarised, env convention
    single = policy.predict(observations[:1], ["pick up the bowl"])
    np.testing.assert_allclose(single[0, :, :6], batch[0, :, :6], atol=1e-4)  # batching does not mix samples
    inputs = policy.model_inputs(observations, ["a", "b"])
    assert inputs["pixel_values"].shape == (2, 12, 56, 56) and inputs["proprio_raw"].shape == (2, 8)


def test_center_crop_flag_changes_the_model_input(tiny_ckpt, tmp_path):
    obs = [fake_observation(0)]
    a = build_vla_policy(_cfg(tmp_path, tiny_ckpt, center_crop=True)).model_inputs(obs, ["x"])["pixel_values"]
    b = build_vla_policy(_cfg(tmp_path, tiny_ckpt, center_crop=False)).model_inputs(obs, ["x"])["pixel_values"]
    assert not np.allclose(a.numpy(), b.numpy())


def test_missing_checkpoint_dir(tmp_path, no_simulator):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        runner.run_evaluation(_cfg(tmp_path, tmp_path / "nope"))


def test_checkpoint_without_its_files(tiny_ckpt, tmp_path, no_simulator):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_ckpt, broken)
    (broken / "action_head--checkpoint.pt").unlink()
    (broken / "dataset_statistics.json").unlink()
    with pytest.raises(FileNotFoundError, match="action_head--\\*checkpoint.pt.*dataset_statistics.json"):
        runner.run_evaluation(_cfg(tmp_path, broken))


def test_head_variant_mismatch(tiny_ckpt, tmp_path, no_simulator):
    with pytest.raises(ValueError, match="head variant mismatch"):
        runner.run_evaluation(_cfg(tmp_path, tiny_ckpt, use_pro_version=False))


@pytest.mark.parametrize("overrides,match", [
    (dict(unnorm_key="libero_object"), "no matching dataset statistics.*libero_spatial_no_noops"),
    (dict(task_suite_name="libero_goal"), "libero_goal"),
    (dict(num_open_loop_steps=9), "exceeds the checkpoint's action chunk"),
    (dict(num_images_in_input=1), "num_images_in_input 1 does not match"),
    (dict(use_proprio=False), "use_proprio False does not match"),
    (dict(task_ids=[10]), r"task_ids \[10\] out of range: libero_spatial has 10 tasks"),
    (dict(num_trials_per_task=51), "exceeds the 50 initial states"),
])
def test_bad_flags_fail_before_the_simulator(tiny_ckpt, tmp_path, no_simulator, overrides, match):
    with pytest.raises(ValueError, match=match):
        runner.run_evaluation(_cfg(tmp_path, tiny_ckpt, **overrides))
    assert not (tmp_path / "r" / "results.jsonl").exists()


def test_cuda_request_without_cuda(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == (torch.device("cpu"), torch.float32)
    with pytest.raises(ValueError, match="no CUDA device"):
        resolve_device("cuda")
