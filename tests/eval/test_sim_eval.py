"""End-to-end evaluation in the LIBERO simulator (headless; short episodes: CPU rendering is ~2 steps/s)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from craft_experiments.common_utils.log_parser import parse_eval_dir
from prismatic.eval import runner
from prismatic.eval.results import RESULT_FIELDS
from tests.eval.helpers import RaisingPolicy, StatePolicy, make_tiny_checkpoint, sim_config

pytestmark = [pytest.mark.sim, pytest.mark.slow]

OVERALL = "Overall success rate: 0.0000 (0.0%)"


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]


def _log(run_dir):
    return (run_dir / "run.txt").read_text()


def test_tiny_vla_checkpoint_end_to_end_then_resume(tmp_path, monkeypatch):
    import imageio.v3 as iio

    ckpt = make_tiny_checkpoint(tmp_path / "ckpt")
    cfg = sim_config(tmp_path, policy="vla", pretrained_checkpoint=str(ckpt), max_steps=16, save_videos="all")
    outcome = runner.run_evaluation(cfg)
    run_dir = outcome.run_dir
    (record,) = _records(run_dir)
    assert tuple(record) == RESULT_FIELDS
    assert record["task_id"] == 0 and record["episode"] == 0 and record["error"] is None
    assert record["steps"] == 16 and record["success"] is False and record["seconds"] > 0
    assert record["task"].startswith("pick up the black bowl")
    assert _log(run_dir).strip().endswith(OVERALL)
    (video,) = (run_dir / "videos").glob("*.mp4")
    frames = iio.imread(video)
    assert frames.shape == (17, 256, 512, 3)  # one frame per policy step + the final state; agentview | wrist
    assert outcome.summary["total_episodes"] == 1 and outcome.summary["num_errors"] == 0

    # Same run directory again: the finished episode is skipped, no simulator is started.
    class _Forbidden:
        def __init__(self, *args, **kwargs):
            raise AssertionError("resume started a simulator although every episode is done")

    monkeypatch.setattr(runner, "SimWorker", _Forbidden)
    again = runner.run_evaluation(sim_config(tmp_path, policy="vla", pretrained_checkpoint=str(ckpt), max_steps=16,
                                             save_videos="all"))
    assert again.results == [] and len(_records(run_dir)) == 1
    log = _log(run_dir)
    assert "Resuming: 1 episodes already completed, 0 to run" in log and log.strip().endswith(OVERALL)
    parsed = parse_eval_dir(run_dir)  # the experiments' parser reads the real log + JSONL
    assert (parsed.episodes, parsed.successes, parsed.suite) == (1, 0, "libero_spatial")


def test_policy_error_is_reported_then_rerun_on_resume(tmp_path, monkeypatch):
    cfg = sim_config(tmp_path, save_videos="failures")
    outcome = runner.run_evaluation(cfg, policy=RaisingPolicy())
    (record,) = _records(outcome.run_dir)
    assert record["success"] is False and record["steps"] == 0
    assert "Traceback" in record["error"] and "RuntimeError: policy exploded on purpose" in record["error"]
    assert outcome.summary["num_errors"] == 1 and outcome.summary["errors"][0]["episode"] == 0
    log = _log(outcome.run_dir)
    assert "Episode error: RuntimeError: policy exploded on purpose" in log
    assert "Episodes with errors: 1" in log and log.strip().endswith(OVERALL)
    assert len(list((outcome.run_dir / "videos").glob("*--error--*.mp4"))) == 1

    # Resuming schedules the errored episode again (intercepted here: running it needs no new coverage).
    scheduled = []
    monkeypatch.setattr(runner._EpisodeLoop, "run", lambda self, todo: scheduled.extend(todo) or [])
    runner.run_evaluation(sim_config(tmp_path, save_videos="failures"), policy=StatePolicy())
    assert scheduled == [(0, 0)]


def test_parallel_envs_match_the_sequential_run(tmp_path):
    """Two workers with batched inference give the same per-episode outcomes as one worker."""
    outcomes = {}
    for num_envs in (1, 2):
        policy = StatePolicy()
        cfg = sim_config(tmp_path, run_id=f"envs{num_envs}", num_trials_per_task=2, num_envs=num_envs, max_steps=9)
        result = runner.run_evaluation(cfg, policy=policy)
        outcomes[num_envs] = {r.key: (r.success, r.steps, r.error, r.final_state) for r in result.results}
        if num_envs == 2:
            assert 2 in policy.calls  # the two episodes really were batched into one policy call
    assert set(outcomes[1]) == {(0, 0), (0, 1)}
    assert outcomes[1] == outcomes[2]
    # The two initial states differ, so identical outcomes are not a routing accident.
    assert outcomes[1][(0, 0)][3] != outcomes[1][(0, 1)][3]


def test_scripted_expert_runs_inside_the_worker(tmp_path):
    """--policy scripted: the privileged-state expert (prismatic.sim.libero.scripted_expert) acts inside the
    worker; a few steps check the plumbing (a full successful episode takes ~150 steps)."""
    cfg = sim_config(tmp_path, run_id="scripted", task_suite_name="libero_object", max_steps=6)
    outcome = runner.run_evaluation(cfg)
    (result,) = outcome.results
    assert result.error is None and result.steps == 6 and len(result.final_state) == 8
    assert result.task == "pick up the alphabet soup and place it in the basket"


def test_scripted_expert_succeeds_through_the_harness_with_the_standard_protocol(tmp_path):
    """A policy that succeeds checks the harness end to end: the scripted expert on libero_object task 0 from
    the suite's initial state 0, with the standard settle steps and horizon, is scored a success by the env."""
    cfg = sim_config(tmp_path, run_id="scripted-full", task_suite_name="libero_object", num_steps_wait=10,
                     max_steps=None)
    outcome = runner.run_evaluation(cfg)
    (result,) = outcome.results
    assert result.error is None
    assert result.success is True and 0 < result.steps < 280
    assert outcome.summary["total_successes"] == 1
    log_text = next(Path(outcome.run_dir).glob("*.txt")).read_text()
    assert log_text.rstrip().endswith("Overall success rate: 1.0000 (100.0%)")


def test_a_crashing_worker_is_an_error_and_is_restarted(tmp_path):
    """The worker process dies (exit code 3) in each of two episodes: both are recorded as errors, which
    also shows the dead worker was replaced for the second episode."""
    crash = runner.run_evaluation(sim_config(tmp_path, run_id="crash", num_trials_per_task=2),
                                  policy="tests.eval.worker_crash_policy:make")
    assert [r.episode for r in crash.results] == [0, 1]
    for result in crash.results:
        assert result.success is False and "WorkerDied" in result.error and "exit code 3" in result.error
    assert crash.summary["num_errors"] == 2
