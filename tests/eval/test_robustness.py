"""Faults during evaluation: a crash mid-write, damaged checkpoints, a killed evaluator. Nothing silently wrong."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prismatic.eval.results import EpisodeResult, EvalRecorder, read_results

ROOT = Path(__file__).resolve().parents[2]


def _result(task_id, episode, success):
    return EpisodeResult(task_id, f"task {task_id}", episode, success, 10 + episode, 1.5, None)


# ------------------------------------------------------------------ item 4: a torn last line of results.jsonl
def test_resume_after_a_torn_results_line_counts_every_episode(tmp_path, caplog):
    path = tmp_path / "results.jsonl"
    first = EvalRecorder(tmp_path, "log.txt", "libero_spatial", {0: "task 0"}, {0: [0, 1, 2]}, {})
    first.record(_result(0, 0, True))
    first.record(_result(0, 1, False))
    first.close()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 25])  # the crash cut the second record mid-line
    previous = read_results(path)
    assert list(previous) == [(0, 0)]
    rec = EvalRecorder(tmp_path, "log.txt", "libero_spatial", {0: "task 0"}, {0: [0, 1, 2]}, previous)
    assert "torn line" in caplog.text
    rec.record(_result(0, 1, False))
    rec.record(_result(0, 2, True))
    summary = rec.summarize()
    rec.close()
    lines = path.read_text().splitlines()
    assert [json.loads(line)["episode"] for line in lines] == [0, 1, 2]  # every line whole, the fragment gone
    reread = read_results(path)
    assert len(reread) == summary["total_episodes"] == 3
    assert sum(r.success for r in reread.values()) == summary["total_successes"] == 2


# ------------------------------------------------------------------ item 7: workers die with the evaluator
_BUSY_EVALUATOR = """
import time
from dataclasses import asdict
import prismatic
from prismatic.sim.libero.workers import EpisodeRequest, SimWorker
worker = SimWorker(0)
worker.send("run_policy_episode", request=asdict(EpisodeRequest("libero_spatial", 0, 0)),
            policy="tests.eval.worker_sleep_policy:make", seed=0)
print(worker._proc.pid, flush=True)
time.sleep(600)
"""


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")  # a zombie has exited (nobody may reap it in a container)


@pytest.mark.sim
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_a_killed_evaluator_takes_its_busy_workers_with_it():
    evaluator = subprocess.Popen([sys.executable, "-c", _BUSY_EVALUATOR], cwd=ROOT, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env={**os.environ, "MUJOCO_GL": "osmesa"})
    try:
        line = evaluator.stdout.readline()
        assert line.strip().isdigit(), evaluator.communicate(timeout=60)[1][-3000:]
        worker_pid = int(line)
        time.sleep(1.0)  # the worker is inside the 10-minute "episode" now
        assert _running(worker_pid)
        evaluator.kill()  # kill -9: no clean-up runs in the evaluator
        evaluator.wait(timeout=30)
        deadline = time.monotonic() + 10
        while _running(worker_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _running(worker_pid), "the simulator worker outlived the killed evaluator"
    finally:
        evaluator.kill()
        if "worker_pid" in locals() and _running(worker_pid):
            os.kill(worker_pid, signal.SIGKILL)  # leave nothing behind when the test fails


# ------------------------------------------------------------------ items 2 + 10: the evaluator checks what it loads
@pytest.fixture(scope="module")
def our_checkpoint(synthetic_data_root, tmp_path_factory):
    from prismatic.training.config import FinetuneConfig
    from prismatic.training.train import train

    root = tmp_path_factory.mktemp("trained")
    result = train(FinetuneConfig(model_preset="tiny", dataset_name="libero_synthetic",
                                  data_root_dir=str(synthetic_data_root), run_root_dir=str(root), device="cpu",
                                  batch_size=2, max_steps=1, save_freq=1, shuffle_buffer_size=16, image_aug=False,
                                  lora_rank=2, wandb_mode="disabled", run_id_override="r"))
    return result.last_checkpoint


def _damage(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_evaluation_verifies_our_checkpoints(our_checkpoint, tmp_path):
    from prismatic.models.loading import load_vla_checkpoint

    assert load_vla_checkpoint(our_checkpoint).config.preset == "tiny"  # intact: loads
    damaged = tmp_path / "damaged"
    shutil.copytree(our_checkpoint, damaged)
    _damage(damaged / "model.safetensors")
    with pytest.raises(ValueError, match="damaged: model.safetensors \\(sha256 differs"):
        load_vla_checkpoint(damaged)
    (damaged / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match="missing manifest.json"):
        load_vla_checkpoint(damaged)


def test_evaluation_names_a_corrupt_file_of_a_released_checkpoint(our_checkpoint, tmp_path):
    from prismatic.models.loading import load_vla_checkpoint

    released = tmp_path / "released"  # the released layout: no manifest, no training state
    shutil.copytree(our_checkpoint, released,
                    ignore=shutil.ignore_patterns("manifest.json", "training_state.pt", "finetune_config.json",
                                                  "lora_adapter", "action_queries.safetensors"))
    assert load_vla_checkpoint(released).config.preset == "tiny"  # loads unverified
    target = released / "model.safetensors"
    target.write_bytes(target.read_bytes()[:-1000])
    with pytest.raises(ValueError, match=f"corrupt weights file {re.escape(str(target))}"):
        load_vla_checkpoint(released)
