"""Skip / retry / failure bookkeeping of the drivers, with a fake trainer and evaluator (no training)."""

import functools
import json
import os
import sys

import pytest

from craft_experiments.common_utils import experiments
from craft_experiments.common_utils.experiments import main
from craft_experiments.common_utils.log_parser import find_latest_checkpoint
from tests.experiments.fakes import fake_eval, fake_train, flag


class FakeRunner:
    """Stands in for SubprocessRunner: dispatches on the script, follows `behaviour[(kind, run)]`."""

    def __init__(self, behaviour=None):
        self.behaviour = behaviour or {}
        self.calls = []

    def __call__(self, command):
        argv = list(command.argv)
        kind = "train" if any(a.endswith("finetune.py") for a in argv) else "eval"
        run = flag(argv, "run_id_override") if kind == "train" else command.log_path.parent.parent.name
        self.calls.append((kind, run, argv))
        command.log_path.parent.mkdir(parents=True, exist_ok=True)
        command.log_path.write_text(f"fake {kind}\n")
        behaviour = self.behaviour.get((kind, run), "ok")
        return fake_train(argv, behaviour) if kind == "train" else fake_eval(argv, behaviour)

    def kinds(self):
        return [(k, r) for k, r, _ in self.calls]


@pytest.fixture
def with_plots():
    """Requested by the tests that check the plots (they cost ~0.5 s each; the others skip them)."""


@pytest.fixture(autouse=True)
def no_plots(request, monkeypatch):
    if "with_plots" not in request.fixturenames:
        monkeypatch.setattr(experiments, "collect_table", functools.partial(experiments.collect_table, plots=False))


@pytest.fixture
def scripts(tmp_path):
    """Existing (unused) script paths, so the driver's up-front check passes."""
    paths = []
    for name in ("finetune.py", "run_libero_eval.py"):
        (tmp_path / name).write_text("")
        paths.append(str(tmp_path / name))
    return ["--finetune_script", paths[0], "--eval_script", paths[1]]


def _run(tmp_path, scripts, runner, *extra, table="table1"):
    argv = [table, "--output_dir", str(tmp_path / "out"), "--suites", "libero_spatial,libero_goal", "--seeds", "7,8",
            "--max_steps", "3", "--num_trials_per_task", "4", "--quiet", "--vlm_path", "unused-by-the-fakes", *scripts,
            *extra]
    return main(argv, runner=runner, environ={})


def _status(tmp_path, table="table1"):
    data = json.loads((tmp_path / "out" / "tables" / f"{table}_status.json").read_text())
    return {r["run"]: r["status"] for r in data["runs"]}


def test_full_run_then_everything_is_skipped(tmp_path, scripts, capsys, monkeypatch, with_plots):
    runner = FakeRunner()
    assert _run(tmp_path, scripts, runner) == 0
    assert len(runner.calls) == 16  # 8 runs x (train + eval)
    assert set(_status(tmp_path).values()) == {"OK"}
    md = (tmp_path / "out" / "tables" / "table1.md").read_text()
    # 1 success of 4 trials per task everywhere (all equal: nothing bold)
    assert "| VLA-Adapter | 25.0 ± 0.0 | 25.0 ± 0.0 | 25.0 ± 0.0 |" in md
    assert (tmp_path / "out" / "tables" / "table1.tex").is_file() and (tmp_path / "out" / "tables" / "table1.csv").is_file()
    plots = tmp_path / "out" / "plots" / "table1"
    assert (plots / "success_rates.png").stat().st_size > 5000
    assert (plots / "curves" / "craft--libero_spatial--seed7.png").is_file()  # from the fake metrics.jsonl
    assert (plots / "action_loss--libero_goal--seed8.png").is_file()
    run = tmp_path / "out" / "runs" / "craft--libero_goal--seed8"
    result = json.loads((run / "RESULT.json").read_text())
    assert result["success_rate"] == 0.25 and result["episodes"] == 8
    assert json.loads((run / "run.json").read_text())["variant"] == "craft" and not (run / ".lock").exists()

    monkeypatch.setattr(experiments, "collect_table", functools.partial(experiments.collect_table, plots=False))
    again = FakeRunner()
    assert _run(tmp_path, scripts, again) == 0
    assert again.calls == [] and set(_status(tmp_path).values()) == {"DONE"}
    assert "25.0 ± 0.0" in capsys.readouterr().out


def test_failures_are_recorded_and_the_rest_goes_on(tmp_path, scripts, capsys):
    runner = FakeRunner({("train", "craft--libero_spatial--seed7"): "crash",
                         ("train", "baseline--libero_goal--seed7"): "no_checkpoint",
                         ("eval", "craft--libero_goal--seed7"): "crash",
                         ("eval", "baseline--libero_spatial--seed8"): "unfinished"})
    assert _run(tmp_path, scripts, runner) == 1
    status = _status(tmp_path)
    assert status["craft--libero_spatial--seed7"] == "TRAINING_FAILED"
    assert status["baseline--libero_goal--seed7"] == "NO_CHECKPOINT"
    assert status["craft--libero_goal--seed7"] == "EVAL_FAILED"
    assert status["baseline--libero_spatial--seed8"] == "PARSE_FAILED"
    assert sum(s == "OK" for s in status.values()) == 4
    assert ("eval", "craft--libero_spatial--seed7") not in runner.kinds()  # no evaluation without a checkpoint
    out = capsys.readouterr().out
    assert "FAILED / NOT DONE" in out and "RuntimeError: CUDA out of memory (fake)" in out
    failure = json.loads((tmp_path / "out" / "runs" / "baseline--libero_spatial--seed8" / "FAILURE.json").read_text())
    assert failure["status"] == "PARSE_FAILED" and "did not finish" in failure["message"]

    retry = FakeRunner()  # the problems are gone: exactly the failed stages run again
    assert _run(tmp_path, scripts, retry) == 0
    assert sorted(retry.kinds()) == sorted([
        ("train", "craft--libero_spatial--seed7"), ("eval", "craft--libero_spatial--seed7"),
        ("train", "baseline--libero_goal--seed7"), ("eval", "baseline--libero_goal--seed7"),
        ("eval", "craft--libero_goal--seed7"), ("eval", "baseline--libero_spatial--seed8")])
    assert not list((tmp_path / "out" / "runs").glob("*/FAILURE.json"))


def test_interrupted_training_resumes_and_finished_checkpoint_is_adopted(tmp_path, scripts):
    runs = tmp_path / "out" / "runs"
    (runs / "baseline--libero_spatial--seed7" / "train" / "baseline--libero_spatial--seed7--1_chkpt").mkdir(parents=True)
    (runs / "craft--libero_spatial--seed7" / "train" / "craft--libero_spatial--seed7--3_chkpt").mkdir(parents=True)
    runner = FakeRunner()
    assert _run(tmp_path, scripts, runner, "--seeds", "7", "--suites", "libero_spatial") == 0
    train_calls = {r: argv for k, r, argv in runner.calls if k == "train"}
    assert list(train_calls) == ["baseline--libero_spatial--seed7"]  # craft had its step-3 checkpoint already
    assert train_calls["baseline--libero_spatial--seed7"][-2:] == ["--resume", "True"]
    assert find_latest_checkpoint(runs / "baseline--libero_spatial--seed7" / "train")[0] == 3


def test_changed_settings_are_a_config_mismatch(tmp_path, scripts, capsys):
    assert _run(tmp_path, scripts, FakeRunner(), "--seeds", "7", "--suites", "libero_spatial") == 0
    runner = FakeRunner()
    assert _run(tmp_path, scripts, runner, "--seeds", "7", "--suites", "libero_spatial", "--learning_rate", "1e-3") == 1
    assert runner.calls == [] and set(_status(tmp_path).values()) == {"CONFIG_MISMATCH"}
    assert "--learning_rate: 0.0002 -> 0.001" in capsys.readouterr().out
    # a different evaluation protocol re-evaluates the same checkpoints (no retraining)
    runner = FakeRunner()
    assert _run(tmp_path, scripts, runner, "--seeds", "7", "--suites", "libero_spatial", "--num_trials_per_task", "2") == 0
    assert [k for k, _ in runner.kinds()] == ["eval", "eval"]


def test_locked_run_is_skipped(tmp_path, scripts):
    lock = tmp_path / "out" / "runs" / "craft--libero_spatial--seed7" / ".lock"
    lock.parent.mkdir(parents=True)
    lock.write_text('{"pid": 1, "host": "elsewhere"}')
    runner = FakeRunner()
    assert _run(tmp_path, scripts, runner, "--seeds", "7", "--suites", "libero_spatial") == 0
    assert _status(tmp_path)["craft--libero_spatial--seed7"] == "LOCKED"
    assert ("train", "craft--libero_spatial--seed7") not in runner.kinds() and lock.exists()


def test_stages_and_tables_share_runs(tmp_path, scripts):
    common = ("--seeds", "7", "--suites", "libero_spatial")
    runner = FakeRunner()
    assert _run(tmp_path, scripts, runner, *common, "--stage", "train") == 0
    assert [k for k, _ in runner.kinds()] == ["train", "train"] and set(_status(tmp_path).values()) == {"PENDING"}
    runner = FakeRunner()
    assert _run(tmp_path, scripts, runner, *common, "--stage", "eval") == 0
    assert [k for k, _ in runner.kinds()] == ["eval", "eval"]
    runner = FakeRunner()
    assert _run(tmp_path, scripts, runner, *common, "--variants", "full,no_dual", table="table4") == 0
    assert runner.kinds() == [("train", "craft-no_dual--libero_spatial--seed7"), ("eval", "craft-no_dual--libero_spatial--seed7")]
    assert _status(tmp_path, "table4") == {"craft--libero_spatial--seed7": "DONE", "craft-no_dual--libero_spatial--seed7": "OK"}
    (tmp_path / "out" / "tables" / "table4.md").unlink()
    runner = FakeRunner()
    assert _run(tmp_path, scripts, runner, *common, "--stage", "collect", table="table4") == 0
    assert runner.calls == [] and "CRaFT (full)" in (tmp_path / "out" / "tables" / "table4.md").read_text()


def test_unreadable_marker_is_named(tmp_path, scripts, capsys):
    assert _run(tmp_path, scripts, FakeRunner(), "--seeds", "7", "--suites", "libero_spatial") == 0
    (tmp_path / "out" / "runs" / "craft--libero_spatial--seed7" / "RESULT.json").write_text("{broken")
    assert _run(tmp_path, scripts, FakeRunner(), "--seeds", "7", "--suites", "libero_spatial") == 1
    out = capsys.readouterr().out
    assert "BAD_STATE" in out and "RESULT.json is not valid JSON" in out and "PROBLEM:" in out


def test_subprocess_runner_with_real_scripts(tmp_path):
    """The real SubprocessRunner end to end: small python scripts stand in for trainer and evaluator."""
    scripts = []
    for kind in ("train", "eval"):
        path = tmp_path / f"fake_{kind}.py"
        path.write_text("import sys\nfrom tests.experiments.fakes import fake_%s\nsys.exit(fake_%s(sys.argv[1:]))\n"
                        % (kind, kind))
        scripts.append(str(path))
    env = {"CRAFT_PYTHON": sys.executable, "PATH": os.environ.get("PATH", "")}
    argv = ["table1", "--output_dir", str(tmp_path / "out"), "--suites", "libero_spatial", "--seeds", "7", "--max_steps",
            "2", "--num_trials_per_task", "2", "--launcher", "python", "--model_preset", "tiny", "--finetune_script", scripts[0], "--eval_script",
            scripts[1], "--quiet"]
    assert main(argv, environ=env) == 0
    log = (tmp_path / "out" / "runs" / "craft--libero_spatial--seed7" / "logs" / "train.log").read_text()
    assert "===== attempt" in log and "checkpoint:" in log  # header + what the script printed
    assert "| VLA-Adapter + CRaFT | 50.0 ± – |" in (tmp_path / "out" / "tables" / "table1.md").read_text()
