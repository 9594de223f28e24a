"""Success rates from evaluation logs (upstream format) and JSONL results; latest checkpoint; the CLI."""

import json

import pytest

from craft_experiments.common_utils import log_parser as lp
from tests.experiments.fakes import TASKS, results_jsonl_lines, upstream_log_lines, write_eval_run

# A log as upstream writes it (facts §7.2 line formats), including a logger prefix on some lines and an
# episode that raised (counted as a failure).
UPSTREAM_LOG = """\
Task suite: libero_spatial
2025-09-01 10:00:00 INFO Task: pick up the black bowl on the plate
Starting episode 1...
Success: True
# episodes completed so far: 1
# successes: 1 (100.0%)

Task: pick up the black bowl on the plate
Starting episode 2...
Episode error: RuntimeError: MuJoCo step failed
Success: False
# episodes completed so far: 2
# successes: 1 (50.0%)
Current task success rate: 0.5
Current total success rate: 0.5

Task: put the bowl in the drawer
Starting episode 1...
Success: True
# episodes completed so far: 3
# successes: 2 (66.7%)

Task: put the bowl in the drawer
Starting episode 2...
Success: True
# episodes completed so far: 4
# successes: 3 (75.0%)
Current task success rate: 1.0
Current total success rate: 0.75
Final results:
Total episodes: 4
Total successes: 3
2025-09-01 10:05:00 INFO Overall success rate: 0.7500 (75.0%)
"""


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_upstream_log_overall_and_per_task(tmp_path):
    r = lp.parse_eval_log(_write(tmp_path / "EVAL-libero_spatial-openvla-2025_09_01-10_00_00.txt", UPSTREAM_LOG))
    assert (r.suite, r.episodes, r.successes, r.success_rate) == ("libero_spatial", 4, 3, 0.75)
    assert [(t.task, t.episodes, t.successes) for t in r.tasks] == [
        ("pick up the black bowl on the plate", 2, 1), ("put the bowl in the drawer", 2, 2)]


def test_suite_from_file_name_when_no_suite_line(tmp_path):
    text = UPSTREAM_LOG.replace("Task suite: libero_spatial\n", "")
    r = lp.parse_eval_log(_write(tmp_path / "EVAL-libero_goal-openvla-2025_09_01-10_00_00--note.txt", text))
    assert r.suite == "libero_goal"


def test_unfinished_log_is_an_error(tmp_path):
    lines = upstream_log_lines({TASKS[0]: [True, False]}, final=False)
    with pytest.raises(lp.EvalParseError, match="did not finish"):
        lp.parse_eval_log(_write(tmp_path / "EVAL-libero_spatial-x.txt", "\n".join(lines)))


@pytest.mark.parametrize("bad, match", [
    ("Overall success rate: 0.9000 (90.0%)", "does not match 3/4"),
    ("Overall success rate: 1.5000 (150.0%)", "outside"),
])
def test_inconsistent_overall_rate_is_an_error(tmp_path, bad, match):
    text = UPSTREAM_LOG.replace("2025-09-01 10:05:00 INFO Overall success rate: 0.7500 (75.0%)", bad)
    with pytest.raises(lp.EvalParseError, match=match):
        lp.parse_eval_log(_write(tmp_path / "EVAL-libero_spatial-x.txt", text))


def test_wrong_task_rate_is_an_error(tmp_path):
    text = UPSTREAM_LOG.replace("Current task success rate: 1.0", "Current task success rate: 0.5")
    with pytest.raises(lp.EvalParseError, match="drawer"):
        lp.parse_eval_log(_write(tmp_path / "EVAL-libero_spatial-x.txt", text))


def test_resumed_log_uses_the_last_final_block(tmp_path):
    # First attempt finished with an errored episode; the evaluator's resume re-ran it and appended.
    first = upstream_log_lines({TASKS[0]: [True, False]})
    rerun = ["", f"Task: {TASKS[0]}", "Starting episode 2...", "Success: True", "# episodes completed so far: 2",
             "# successes: 2 (100.0%)", "Final results:", "Total episodes: 2", "Total successes: 2",
             "Overall success rate: 1.0000 (100.0%)"]
    r = lp.parse_eval_log(_write(tmp_path / "EVAL-libero_spatial-x.txt", "\n".join(first + rerun)))
    assert (r.episodes, r.successes, r.success_rate) == (2, 2, 1.0)
    assert r.tasks == ()  # the Success lines (3) no longer add up: per-task detail comes from the JSONL


def test_results_jsonl(tmp_path):
    outcomes = {TASKS[0]: [True, True, False], TASKS[1]: [False, False, True]}
    r = lp.parse_results_jsonl(_write(tmp_path / "results-libero_object.jsonl", "\n".join(results_jsonl_lines(outcomes))))
    assert (r.suite, r.episodes, r.successes) == ("libero_object", 6, 3)
    assert [(t.episodes, t.successes) for t in r.tasks] == [(3, 2), (3, 1)]


def test_results_jsonl_newest_record_wins_and_cut_off_last_line(tmp_path):
    lines = results_jsonl_lines({TASKS[0]: [False, True]})
    rerun = json.loads(lines[0]) | {"success": True, "error": None}
    path = _write(tmp_path / "results.jsonl", "\n".join(lines + [json.dumps(rerun), '{"task_id": 0, "ta']))
    r = lp.parse_results_jsonl(path)
    assert (r.episodes, r.successes) == (2, 2)


@pytest.mark.parametrize("line, match", [
    ('{"task_id": 0}', "missing keys"),
    ('{"task_id": "0", "task": "t", "episode": 0, "success": 1, "steps": 1, "seconds": 1, "error": null}', "boolean"),
    ("not json", "not valid JSON"),
])
def test_results_jsonl_bad_lines(tmp_path, line, match):
    good = results_jsonl_lines({TASKS[0]: [True]})[0]
    with pytest.raises(lp.EvalParseError, match=match):
        lp.parse_results_jsonl(_write(tmp_path / "results.jsonl", "\n".join([line, good])))


def test_eval_dir_of_the_evaluator_cross_checks_log_and_jsonl(tmp_path):
    outcomes = {TASKS[0]: [True, False], TASKS[1]: [True, True]}
    run_dir = write_eval_run(tmp_path, "my_run", outcomes, "libero_spatial")  # log named after the run id
    r = lp.parse_eval_dir(run_dir)
    assert (r.episodes, r.successes, r.success_rate) == (4, 3, 0.75)
    (run_dir / "results.jsonl").write_text("\n".join(results_jsonl_lines({TASKS[0]: [True, True]})))
    with pytest.raises(lp.EvalParseError, match="holds 2/2"):
        lp.parse_eval_dir(run_dir)


def test_eval_dir_without_outputs(tmp_path):
    with pytest.raises(lp.EvalParseError, match="does not exist"):
        lp.parse_eval_dir(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(lp.EvalParseError, match="no EVAL"):
        lp.parse_eval_dir(tmp_path / "empty")


def test_latest_checkpoint(tmp_path):
    assert lp.find_latest_checkpoint(tmp_path / "nothing") is None
    for name in ("run--500_chkpt", "run--1500_chkpt", "run--200_chkpt", ".run--9000_chkpt.tmp", "run"):
        (tmp_path / name).mkdir()
    (tmp_path / "run--99999_chkpt").write_text("a file, not a checkpoint")
    step, path = lp.find_latest_checkpoint(tmp_path)
    assert (step, path.name) == (1500, "run--1500_chkpt")  # numeric, not lexicographic order
    (tmp_path / "other--1500_chkpt").mkdir()
    with pytest.raises(ValueError, match="several checkpoints at step 1500"):
        lp.find_latest_checkpoint(tmp_path)


def test_collect_records_groups_by_run_info_note_and_directory(tmp_path):
    ok = {TASKS[0]: [True, True, True, True, False]}  # 0.8
    # 1) a driver run directory with run.json
    run = tmp_path / "runs" / "craft--libero_spatial--seed7"
    _write(run / "run.json", json.dumps({"variant": "craft", "suite": "libero_spatial", "seed": 7}))
    write_eval_run(run / "eval", "EVAL-libero_spatial-vla-abc--craft--seed7", ok, "libero_spatial")
    # 2) an upstream log with a --note
    _write(tmp_path / "flat" / "EVAL-libero_spatial-openvla-2025_01_01-00_00_00--baseline_seed8.txt",
           "\n".join(upstream_log_lines(ok)))
    # 3) a log in a directory named after the run; 4) an unfinished one
    _write(tmp_path / "mine" / "baseline-seed9" / "eval" / "EVAL-libero_spatial-x.txt", "\n".join(upstream_log_lines(ok)))
    _write(tmp_path / "flat" / "EVAL-libero_spatial-x-2025--broken.txt", "\n".join(upstream_log_lines(ok, final=False)))
    records, problems = lp.collect_records(tmp_path)
    assert sorted((r.method, r.seed, r.suite, r.success_rate) for r in records) == [
        ("baseline", 8, "libero_spatial", 0.8), ("baseline", 9, "libero_spatial", 0.8), ("craft", 7, "libero_spatial", 0.8)]
    assert len(problems) == 1 and "did not finish" in problems[0][1]


@pytest.mark.parametrize("fmt, expected", [
    ("md", "| baseline | 90.0 ± 10.0 |"), ("tex", r"baseline & 90.0 $\pm$ 10.0 \\"), ("csv", "baseline,libero_spatial,3,"),
])
def test_cli_tables(tmp_path, capsys, fmt, expected):
    # 0.8, 0.9, 1.0 over three seeds -> 90.0 ± 10.0 (sample std)
    for seed, outcome in ((1, [True] * 8 + [False] * 2), (2, [True] * 9 + [False]), (3, [True] * 10)):
        _write(tmp_path / f"baseline-seed{seed}" / "EVAL-libero_spatial-x.txt",
               "\n".join(upstream_log_lines({TASKS[0]: outcome})))
    assert lp.main(["--logs", str(tmp_path), "--format", fmt]) == 0
    assert expected in capsys.readouterr().out


def test_cli_strict_and_empty(tmp_path, capsys):
    _write(tmp_path / "a" / "EVAL-libero_spatial-x.txt", "\n".join(upstream_log_lines({TASKS[0]: [True]}, final=False)))
    assert lp.main(["--logs", str(tmp_path)]) == 1  # nothing usable
    assert "did not finish" in capsys.readouterr().err
    _write(tmp_path / "b-seed1" / "EVAL-libero_spatial-x.txt", "\n".join(upstream_log_lines({TASKS[0]: [True]})))
    assert lp.main(["--logs", str(tmp_path)]) == 0
    assert lp.main(["--logs", str(tmp_path), "--strict"]) == 1
