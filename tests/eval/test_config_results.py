"""Eval flags (draccus, validation), the results / log files, resume bookkeeping. No simulator."""

from __future__ import annotations

import json
import re

import draccus
import pytest

from prismatic.eval.config import EvalConfig
from prismatic.eval.results import RESULT_FIELDS, EpisodeResult, EvalRecorder, read_results
from prismatic.eval.runner import _write_config, check_resume, episode_seed
from prismatic.eval.video import should_save_video, video_filename


def test_cli_flags_parse_with_upstream_names():
    cfg = draccus.parse(EvalConfig, args=[
        "--pretrained_checkpoint", "ckpt", "--task_suite_name", "libero_10", "--task_ids", "[0,3]",
        "--num_trials_per_task", "5", "--use_pro_version", "false", "--center_crop", "false",
        "--num_open_loop_steps", "4", "--unnorm_key", "libero_10_no_noops", "--num_envs", "2",
        "--max_steps", "20", "--save_videos", "failures", "--device", "cpu", "--seed", "3",
    ])
    assert cfg.task_ids == [0, 3] and cfg.use_pro_version is False and cfg.center_crop is False
    assert cfg.suite_max_steps == 20 and cfg.num_envs == 2 and cfg.save_videos == "failures"
    assert EvalConfig(policy="scripted", task_suite_name="libero_10").suite_max_steps == 520
    assert EvalConfig(policy="scripted", task_suite_name="libero_90").suite_max_steps == 400


@pytest.mark.parametrize("overrides,match", [
    (dict(policy="vla"), "pretrained_checkpoint is required"),
    (dict(task_suite_name="libero_100"), "task_suite_name"),
    (dict(task_ids=[-1]), "task_ids"),
    (dict(task_ids=[1, 1]), "duplicates"),
    (dict(task_ids=[]), "task_ids"),
    (dict(num_trials_per_task=0), "num_trials_per_task"),
    (dict(num_steps_wait=-1), "num_steps_wait"),
    (dict(max_steps=0), "max_steps"),
    (dict(num_images_in_input=3), "num_images_in_input"),
    (dict(save_videos="some"), "save_videos"),
    (dict(device="tpu"), "device"),
    (dict(policy="random"), "policy"),
    (dict(num_envs=0), "num_envs"),
    (dict(run_id="a/b"), "run_id"),
])
def test_config_validation(overrides, match):
    base = dict(policy="scripted")
    with pytest.raises(ValueError, match=match):
        EvalConfig(**{**base, **overrides})


def test_generated_run_id_and_dir(tmp_path):
    cfg = EvalConfig(policy="scripted", local_log_dir=str(tmp_path), run_id_note="note")
    run_id = cfg.resolve_run_id()
    assert re.fullmatch(r"EVAL-libero_spatial-scripted-\d{4}_\d\d_\d\d-\d\d_\d\d_\d\d--note", run_id)
    assert cfg.run_dir == tmp_path / run_id and cfg.resolve_run_id() == run_id


def _result(task_id, episode, success, error=None):
    return EpisodeResult(task_id, f"task {task_id}", episode, success, 10 + episode, 1.5, error)


def test_recorder_writes_upstream_log_and_jsonl(tmp_path):
    rec = EvalRecorder(tmp_path, "EVAL.txt", "libero_spatial", {0: "task 0", 1: "task 1"}, {0: [0, 1], 1: [0]}, {})
    rec.line("Task suite: libero_spatial")
    rec.record(_result(0, 1, True))  # finishing order differs from episode order (parallel workers)
    rec.record(_result(1, 0, False, error="Traceback (most recent call last):\n  ...\nRuntimeError: boom"))
    rec.record(_result(0, 0, False))
    summary = rec.summarize()
    rec.close()
    log = (tmp_path / "EVAL.txt").read_text().splitlines()
    assert log[-4:] == ["Final results:", "Total episodes: 3", "Total successes: 1",
                        "Overall success rate: 0.3333 (33.3%)"]
    assert "Episode error: RuntimeError: boom" in log
    assert "Episodes with errors: 1 (counted as failures; tracebacks in results.jsonl)" in log
    assert log.count("Current task success rate: 0.5") == 1  # task 0 after both of its episodes
    assert "# successes: 1 (50.0%)" in log and "Starting episode 2..." in log
    records = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [tuple(r) for r in records] == [RESULT_FIELDS] * 3
    assert records[1]["error"].endswith("RuntimeError: boom") and records[1]["success"] is False
    assert summary["num_errors"] == 1 and summary["total_episodes"] == 3
    assert summary["per_task"]["0"]["success_rate"] == 0.5
    assert json.loads((tmp_path / "summary.json").read_text()) == summary


def test_resume_counts_continue_and_errors_are_retried(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text("\n".join(json.dumps(r.record()) for r in [
        _result(0, 0, True), _result(0, 1, False, error="E"), _result(5, 0, True)]) + "\n")
    previous = read_results(path)
    rec = EvalRecorder(tmp_path, "log.txt", "libero_spatial", {0: "task 0"}, {0: [0, 1]}, previous)
    assert set(rec.done) == {(0, 0)}  # the errored episode and the unselected task do not count as done
    rec.record(_result(0, 1, False))
    rec.summarize()
    rec.close()
    assert read_results(path)[(0, 1)].error is None  # newest record wins
    log = (tmp_path / "log.txt").read_text()
    assert "# episodes completed so far: 2" in log and log.strip().endswith("Overall success rate: 0.5000 (50.0%)")


def test_read_results_tolerates_only_a_truncated_last_line(tmp_path):
    path = tmp_path / "results.jsonl"
    good = json.dumps(_result(0, 0, True).record())
    path.write_text(good + "\n" + good[:20])
    assert list(read_results(path)) == [(0, 0)]
    path.write_text(good[:20] + "\n" + good + "\n")
    with pytest.raises(ValueError, match="line 1: malformed"):
        read_results(path)


def test_resume_refuses_a_different_protocol(tmp_path):
    cfg = EvalConfig(policy="scripted", local_log_dir=str(tmp_path), run_id="r")
    cfg.run_dir.mkdir(parents=True)
    check_resume(cfg.run_dir, cfg)  # fresh directory: fine
    _write_config(cfg.run_dir, cfg)
    check_resume(cfg.run_dir, EvalConfig(policy="scripted", local_log_dir=str(tmp_path), run_id="r", num_envs=4,
                                         num_trials_per_task=3))  # execution flags may change
    with pytest.raises(ValueError, match="center_crop"):
        check_resume(cfg.run_dir, EvalConfig(policy="scripted", local_log_dir=str(tmp_path), run_id="r",
                                             center_crop=False))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "results.jsonl").write_text("")
    with pytest.raises(ValueError, match="no eval_config.json"):
        check_resume(tmp_path / "other", cfg)


def test_video_policy_and_names():
    assert should_save_video("all", True) and should_save_video("failures", False)
    assert not should_save_video("failures", True) and not should_save_video("none", False)
    with pytest.raises(ValueError):
        should_save_video("some", True)
    name = video_filename(3, 7, False, "put the bowl on the plate / now")
    assert name == "task03--episode=07--success=False--task=put_the_bowl_on_the_plate_now.mp4"
    assert "--error--" in video_filename(0, 0, False, "x", error=True)


def test_episode_seed_is_scheduling_independent():
    assert episode_seed(7, 0, 1) == episode_seed(7, 0, 1)
    assert len({episode_seed(7, t, e) for t in range(3) for e in range(3)}) == 9


def test_experiments_log_parser_reads_our_outputs(tmp_path):
    """The table drivers' parser (craft_experiments) must read the evaluator's log and JSONL, including an
    errored episode that a resume ran again."""
    from craft_experiments.common_utils.log_parser import parse_eval_dir

    run_dir = tmp_path / "EVAL-libero_object-vla-2026_01_01-00_00_00"
    names = {0: "task 0", 1: "task 1"}
    rec = EvalRecorder(run_dir, f"{run_dir.name}.txt", "libero_object", names, {0: [0, 1], 1: [0, 1]}, {})
    rec.line("Task suite: libero_object")
    for r in (_result(0, 0, True), _result(1, 1, False, error="Traceback ...\nValueError: x"), _result(0, 1, True)):
        rec.record(r)
    rec.summarize()
    rec.close()
    previous = read_results(run_dir / "results.jsonl")
    rec = EvalRecorder(run_dir, f"{run_dir.name}.txt", "libero_object", names, {0: [0, 1], 1: [0, 1]}, previous)
    rec.line("Task suite: libero_object")
    rec.record(_result(1, 1, True))
    rec.record(_result(1, 0, False))
    rec.summarize()
    rec.close()
    parsed = parse_eval_dir(run_dir)
    assert (parsed.episodes, parsed.successes, parsed.suite) == (4, 3, "libero_object")
    assert {t.task: (t.episodes, t.successes) for t in parsed.tasks} == {"task 0": (2, 2), "task 1": (2, 1)}


def test_wandb_logging(monkeypatch, tmp_path):
    """--use_wandb logs upstream's keys (success_rate/<task>, num_episodes/<task>, success_rate/total)."""
    import types

    logged, inits = [], []

    class _Run:
        def log(self, metrics):
            logged.append(metrics)

        def finish(self):
            logged.append("finished")

    fake = types.SimpleNamespace(init=lambda **kw: inits.append(kw) or _Run())
    monkeypatch.setitem(__import__("sys").modules, "wandb", fake)
    from prismatic.eval.runner import _log_wandb

    cfg = EvalConfig(policy="scripted", use_wandb=True, wandb_project="p", local_log_dir=str(tmp_path), run_id="r")
    summary = {"success_rate": 0.5, "per_task": {"0": {"task": "open the drawer", "success_rate": 0.5, "episodes": 2}}}
    _log_wandb(cfg, summary)
    assert inits[0]["project"] == "p" and inits[0]["name"] == "r"
    assert logged == [{"success_rate/total": 0.5, "success_rate/open the drawer": 0.5,
                       "num_episodes/open the drawer": 2}, "finished"]
