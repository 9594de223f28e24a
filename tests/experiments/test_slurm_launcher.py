"""--launcher slurm against a real (one-node) SLURM cluster: jobs are submitted with sbatch, run by slurmd, and
their ids and outcomes recorded; a rerun never submits a second job for a queued run, resubmits a cancelled
one (which then resumes from its checkpoint), and submits nothing when everything is done.

The trainer and evaluator are the fakes of fakes.py (real processes inside the jobs, seconds each), so these
tests check the launcher, not the model; test_smoke_chain.py runs the real chain on the cluster."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from craft_experiments.common_utils.slurm import Cluster

ROOT = Path(__file__).resolve().parents[2]
MODULE = "craft_experiments.common_utils.experiments"

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]


@pytest.fixture
def fake_scripts(tmp_path):
    paths = []
    for kind in ("train", "eval"):
        path = tmp_path / f"fake_{kind}.py"
        path.write_text(f"import sys\nfrom tests.experiments.fakes import fake_{kind}\nsys.exit(fake_{kind}(sys.argv[1:]))\n")
        paths.append(str(path))
    return ["--finetune_script", paths[0], "--eval_script", paths[1]]


def _drive(out: Path, scripts: list[str], *extra: str, env: dict | None = None, timeout: float = 300):
    argv = [sys.executable, "-m", MODULE, "table1", "--output_dir", str(out), "--suites", "libero_spatial", "--seeds",
            "7", "--max_steps", "2", "--num_trials_per_task", "2", "--model_preset", "tiny", "--launcher", "slurm",
            "--slurm_gpus_per_run", "0", "--slurm_time", "00:10:00", "--slurm_poll_seconds", "0.5", *scripts, *extra]
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "CRAFT_PYTHON": sys.executable, **(env or {})}
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=full_env, timeout=timeout)
    return proc


def _status(out: Path) -> dict[str, str]:
    data = json.loads((out / "tables" / "table1_status.json").read_text())
    return {r["run"]: r["status"] for r in data["runs"]}


def _submissions(out: Path, run: str) -> list[dict]:
    return json.loads((out / "runs" / run / "slurm" / "jobs.json").read_text())["submissions"]


def _all_job_ids(out: Path) -> list[str]:
    return sorted(e["job_id"] for run in (out / "runs").iterdir() for e in _submissions(out, run.name))


def _wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.3)


def _queue_ids() -> set[str]:
    return set(Cluster().queue())


BASELINE, CRAFT = "baseline--libero_spatial--seed7", "craft--libero_spatial--seed7"


def test_submit_rerun_while_queued_wait_collect_rerun_when_done(tmp_path, fake_scripts):
    """Two runs, evaluation split in 2 shards, at most one run in the queue at a time."""
    out = tmp_path / "out"
    slow = {"FAKE_TRAIN_SLEEP": "5"}  # the jobs are still in the queue when the driver runs again
    common = ("--eval_shards", "2", "--slurm_max_parallel", "1")
    first = _drive(out, fake_scripts, *common, env=slow)
    assert first.returncode == 0, first.stdout + first.stderr
    assert set(_status(out).values()) == {"SUBMITTED"}
    base, craft = _submissions(out, BASELINE), _submissions(out, CRAFT)
    assert [e["key"] for e in base] == ["train", "eval-shard1of2", "eval-shard2of2"]
    assert base[1]["dependency"] == base[2]["dependency"] == f"afterok:{base[0]['job_id']}"
    # --slurm_max_parallel 1: craft's training waits for all of baseline's jobs
    assert craft[0]["dependency"] == "afterany:" + ":".join(e["job_id"] for e in base)
    assert (out / "runs" / BASELINE / "slurm" / "train.sbatch").read_text().startswith("#!/bin/bash\n")
    ids = _all_job_ids(out)
    assert set(ids) <= _queue_ids()  # every recorded job is a real job of the scheduler ...
    assert len(ids) == 6

    again = _drive(out, fake_scripts, *common, env=slow)  # ... still queued: nothing is submitted twice
    assert again.returncode == 0, again.stdout + again.stderr
    assert set(_status(out).values()) == {"QUEUED"} and _all_job_ids(out) == ids
    assert "submitted job" not in again.stdout
    # a driver killed between sbatch and recording the id: the queued job is still found (by its script's path)
    jobs_file = out / "runs" / CRAFT / "slurm" / "jobs.json"
    saved = jobs_file.read_text()
    jobs_file.unlink()
    unrecorded = _drive(out, fake_scripts, *common, env=slow)
    assert unrecorded.returncode == 0 and _status(out)[CRAFT] == "QUEUED", unrecorded.stdout + unrecorded.stderr
    assert not jobs_file.exists()
    jobs_file.write_text(saved)

    waited = _drive(out, fake_scripts, *common, "--wait", env=slow)
    assert waited.returncode == 0, waited.stdout + waited.stderr
    assert set(_status(out).values()) == {"DONE"} and _all_job_ids(out) == ids
    result = json.loads((out / "runs" / CRAFT / "RESULT.json").read_text())
    # 10 tasks x 2 trials, 1 success per task, each task counted once over the two shards
    assert (result["episodes"], result["successes"], result["shards"]) == (20, 10, 2)
    assert len({t["task"] for t in result["tasks"]}) == 10
    assert "| VLA-Adapter + CRaFT | 50.0 ± – |" in (out / "tables" / "table1.md").read_text()
    cluster = Cluster()
    assert {cluster.final_state(j) for j in ids} == {"COMPLETED"}
    assert not list((out / "runs").glob("*/.lock*"))

    done = _drive(out, fake_scripts, *common)
    assert done.returncode == 0 and set(_status(out).values()) == {"DONE"}
    assert _all_job_ids(out) == ids and "submitted job" not in done.stdout


def test_cancelled_job_is_resubmitted_and_resumes(tmp_path, fake_scripts):
    out = tmp_path / "out"
    argv_log = tmp_path / "argv.jsonl"
    env = {"FAKE_TRAIN_SLEEP": "300", "FAKE_ARGV_LOG": str(argv_log)}
    first = _drive(out, fake_scripts, "--variants", "craft", env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    train, evaluation = _submissions(out, CRAFT)
    checkpoint_1 = out / "runs" / CRAFT / "train" / f"{CRAFT}--1_chkpt"
    _wait_until(checkpoint_1.is_dir, 120, "the first training job's step-1 checkpoint")
    subprocess.run(["scancel", train["job_id"]], check=True)
    # the training job leaves the queue, and its afterok evaluation is dropped with it
    _wait_until(lambda: not {train["job_id"], evaluation["job_id"]} & _queue_ids(), 120, "the cancelled jobs")
    assert Cluster().final_state(train["job_id"]) == "CANCELLED"
    run_dir = out / "runs" / CRAFT
    _wait_until(lambda: not (run_dir / ".lock").exists(), 30, "the cancelled job to release its lock")

    look = _drive(out, fake_scripts, "--variants", "craft", "--collect_only", env=env)
    assert look.returncode == 1, look.stdout + look.stderr  # reported, not resubmitted
    assert _status(out) == {CRAFT: "JOB_FAILED"} and f"job {train['job_id']} (train) ended CANCELLED" in look.stdout
    assert len(_submissions(out, CRAFT)) == 2

    retry = _drive(out, fake_scripts, "--variants", "craft", "--wait", env=env)
    assert retry.returncode == 0, retry.stdout + retry.stderr
    assert _status(out) == {CRAFT: "DONE"}
    new_train = _submissions(out, CRAFT)[2]
    assert new_train["key"] == "train" and new_train["job_id"] not in (train["job_id"], evaluation["job_id"])
    assert "previous attempt: job" in retry.stdout
    trainer_calls = [json.loads(line) for line in argv_log.read_text().splitlines()]
    assert len(trainer_calls) == 2 and "--resume" not in trainer_calls[0]
    assert trainer_calls[1][-2:] == ["--resume", "True"]  # the resubmitted job continued from the checkpoint
    assert json.loads((run_dir / "TRAINING_DONE.json").read_text())["checkpoint"].endswith(f"{CRAFT}--2_chkpt")


def test_time_limit_signal_saves_and_resubmitted_job_resumes(tmp_path, fake_scripts):
    """--slurm_signal_lead on the real scheduler: SLURM signals the training job before its time limit, the trainer
    (asked to --save_on_sigterm) saves and exits, the driver resubmits the job and it resumes from that save."""
    out = tmp_path / "out"
    argv_log = tmp_path / "argv.jsonl"
    # 2-minute limit (SLURM's unit is the minute), signal 45 s before it: the controller checks time limits
    # periodically, so the signal comes somewhere in the last ~45-75 s, long before the fake's 300 s sleep ends.
    env = {"FAKE_TRAIN_SLEEP": "300", "FAKE_ARGV_LOG": str(argv_log)}
    limits = ("--variants", "craft", "--slurm_time", "00:02:00", "--slurm_signal_lead", "45")
    first = _drive(out, fake_scripts, *limits, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    run_dir = out / "runs" / CRAFT
    assert "#SBATCH --signal=B:TERM@45\n" in (run_dir / "slurm" / "train.sbatch").read_text()
    train, evaluation = _submissions(out, CRAFT)
    _wait_until(lambda: not {train["job_id"], evaluation["job_id"]} & _queue_ids(), 240,
                "the signalled training job to leave the queue")
    saved = run_dir / "train" / f"{CRAFT}--1_chkpt" / "SAVED_ON_SIGTERM"
    assert saved.is_file(), "the trainer was not signalled before the time limit (no save on SIGTERM)"
    job_log = next((run_dir / "slurm").glob(f"train-{train['job_id']}.out")).read_text()
    assert "stopped by" in job_log and "SIGTERM" in job_log, job_log
    # it stopped itself after the signal, before the limit: the scheduler did not have to kill it
    assert Cluster().final_state(train["job_id"]) in ("FAILED", None)
    _wait_until(lambda: not (run_dir / ".lock").exists(), 30, "the signalled job to release its lock")

    retry = _drive(out, fake_scripts, *limits, "--wait", env=env)
    assert retry.returncode == 0, retry.stdout + retry.stderr
    assert _status(out) == {CRAFT: "DONE"}
    assert "previous attempt: job" in retry.stdout
    trainer_calls = [json.loads(line) for line in argv_log.read_text().splitlines()]
    assert len(trainer_calls) == 2
    assert trainer_calls[0][-2:] == ["--save_on_sigterm", "True"] and "--resume" not in trainer_calls[0]
    assert trainer_calls[1][-4:] == ["--save_on_sigterm", "True", "--resume", "True"]
    assert json.loads((run_dir / "TRAINING_DONE.json").read_text())["checkpoint"].endswith(f"{CRAFT}--2_chkpt")
