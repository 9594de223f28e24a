"""The demo generator's configuration, CLI validation, provenance strings and summaries (no simulator)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from prismatic.sim.libero.demo_generation import (
    AttemptInfo,
    DemoJob,
    DemoRecord,
    SlotResult,
    derive_seed,
    episode_file_path,
    is_noop,
    parse_episode_file_path,
)
from prismatic.sim.libero.demo_runner import GenerationConfig, summarize
from prismatic.sim.libero.scripted_expert import UnsupportedTaskError

SCRIPT = Path(__file__).resolve().parents[2] / "vla-scripts" / "generate_libero_demos.py"


def _cli():
    spec = importlib.util.spec_from_file_location("generate_libero_demos", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _config(**overrides) -> GenerationConfig:
    kwargs = dict(task_suite_name="libero_object", task_ids=[0, 1], demos_per_task=2, out="/tmp/unused")
    kwargs.update(overrides)
    return GenerationConfig(**kwargs)


def test_config_defaults_and_jobs():
    config = _config()
    assert config.name == "libero_object_scripted" and config.img_size == 256 and config.init_source == "random"
    jobs = config.jobs()
    assert [(j.task_id, j.slot) for j in jobs] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert all(j.seed == 0 and j.max_attempts == 6 for j in jobs)


@pytest.mark.parametrize("overrides, error, match", [
    (dict(task_suite_name="libero_goal"), UnsupportedTaskError, "libero_goal.*not supported.*drawers"),
    (dict(task_suite_name="libero_objekt"), ValueError, "not a LIBERO suite"),
    (dict(task_ids=[]), ValueError, "at least one task"),
    (dict(task_ids=[1, 1]), ValueError, "duplicates"),
    (dict(task_ids=[12]), UnsupportedTaskError, "task 12 is not supported"),
    (dict(demos_per_task=0), ValueError, "demos_per_task must be >= 1"),
    (dict(img_size=8), ValueError, "img_size must be >= 16"),
    (dict(init_source="eval"), ValueError, "init_source must be one of"),
    (dict(diversity=2.0), ValueError, "diversity must be in"),
])
def test_config_rejects_bad_input(overrides, error, match):
    with pytest.raises(error, match=match):
        _config(**overrides)


def test_cli_refuses_unsupported_tasks_with_the_reason(capsys, tmp_path):
    cli = _cli()
    with pytest.raises(SystemExit) as exc:
        cli.main(["--task_suite_name", "libero_10", "--demos_per_task", "1", "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert "libero_10' is not supported by the scripted expert: long-horizon" in capsys.readouterr().err
    config, simulate_only = cli.parse_config(["--task_suite_name", "libero_spatial", "--demos_per_task", "3",
                                              "--out", str(tmp_path), "--img_size", "128", "--seed", "4"])
    assert config.task_ids == list(range(10)) and config.img_size == 128 and config.seed == 4 and not simulate_only


def test_cli_refuses_an_existing_dataset_before_simulating(tmp_path):
    (tmp_path / "libero_object_scripted" / "1.0.0").mkdir(parents=True)
    with pytest.raises(SystemExit, match="dataset already exists"):
        _cli().main(["--task_suite_name", "libero_object", "--task_ids", "0", "--demos_per_task", "1",
                     "--out", str(tmp_path)])


def test_noop_rule_and_seeds():
    assert is_noop(np.array([0, 0, 0, 0, 0, 5e-5, -1.0]), prev_gripper=-1.0)
    assert not is_noop(np.array([0, 0, 0, 0, 0, 5e-5, 1.0]), prev_gripper=-1.0)  # gripper changes
    assert not is_noop(np.array([2e-4, 0, 0, 0, 0, 0, -1.0]), prev_gripper=-1.0)
    seeds = {derive_seed(0, t, k, a) for t in range(10) for k in range(10) for a in range(5)}
    assert len(seeds) == 500 and all(0 <= s < 2**31 for s in seeds)
    assert derive_seed(3, 1, 2) == derive_seed(3, 1, 2) != derive_seed(4, 1, 2)


def _record(task_id: int, slot: int, steps: int) -> DemoRecord:
    return DemoRecord(suite_name="libero_object", task_id=task_id, slot=slot, instruction=f"task {task_id}",
                      reset_seed=11, init_state=np.zeros(3), init_label="random:11", expert_seed=99, num_steps_wait=10,
                      actions=np.zeros((steps, 7)), sim_states=np.zeros((steps, 3)), state=np.zeros((steps, 8)),
                      joint_state=np.zeros((steps, 7)))


def test_file_path_round_trip():
    record = _record(3, 7, 5)
    path = episode_file_path(record)
    assert path == "scripted_expert/libero_object/task_03/demo_0007/random:11/expert_seed_99"
    assert parse_episode_file_path(path) == {"suite_name": "libero_object", "task_id": 3, "slot": 7,
                                             "init_label": "random:11", "expert_seed": 99}
    with pytest.raises(ValueError, match="not a scripted-demo file_path"):
        parse_episode_file_path("/data/libero/demo_3.hdf5")


def test_summary_counts_attempts_successes_and_failures():
    config = _config(task_ids=[0, 1], demos_per_task=2)

    def attempt(i, ok, reason=None, steps=100):
        return AttemptInfo(attempt=i, init="random:1", expert_seed=i, success=ok, steps=steps, failure_reason=reason,
                           replans=0, noops_dropped=1, seconds=2.0)

    jobs = config.jobs()
    results = [
        SlotResult(jobs[0], _record(0, 0, 120), [attempt(0, True, steps=120)], seconds=2.0),
        SlotResult(jobs[1], _record(0, 1, 140), [attempt(0, False, "grasp_failed"), attempt(1, True, steps=140)],
                   seconds=4.0),
        SlotResult(jobs[2], _record(1, 0, 90), [attempt(0, True, steps=90)], seconds=2.0),
        SlotResult(jobs[3], None, [attempt(a, False, r) for a, r in enumerate(["horizon", "dropped", "horizon"])],
                   seconds=6.0),
    ]
    summary = summarize(config, results, [], {"simulate_s": 10.0})
    t0, t1 = summary["tasks"]["0"], summary["tasks"]["1"]
    assert (t0["kept"], t0["missing"], t0["attempts"], t0["successful_attempts"]) == (2, 0, 3, 2)
    assert t0["failure_reasons"] == {"grasp_failed": 1} and t0["steps"] == {"mean": 130.0, "min": 120, "max": 140}
    assert (t1["kept"], t1["missing"], t1["attempts"]) == (1, 1, 4)
    assert t1["failure_reasons"] == {"dropped": 1, "horizon": 2}
    assert summary["totals"] == {"requested": 4, "kept": 3, "attempts": 7, "transitions": 350}
    # 3 demos kept for 14 s of worker time
    assert summary["timing"]["simulate_demos_per_min_per_worker"] == pytest.approx(3 / (14 / 60))
    assert summary["timing"]["render_demos_per_min_per_worker"] is None


def test_jobs_are_plain_data():
    job = DemoJob("libero_object", 0, slot=1, seed=2)
    assert job.max_steps is None and job.init_source == "random"  # None = the suite's evaluation horizon
