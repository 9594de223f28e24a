"""The SLURM launcher's pure parts (settings, job scripts, the job spec, --max_parallel lanes) and the evaluation
shards (split, merge, resume) with the fake runner; no cluster needed (test_slurm_launcher.py uses one)."""

import functools
import json
import os
import shlex
from pathlib import Path

import pytest

from craft_experiments.common_utils import experiments
from craft_experiments.common_utils.driver_settings import DriverSettings
from craft_experiments.common_utils.experiment_plan import TABLES, plan_runs, shard_tasks
from craft_experiments.common_utils.experiments import main, merge_shard_results
from craft_experiments.common_utils.slurm import (
    Cluster,
    Lanes,
    QueuedJob,
    SlurmError,
    job_script,
    settings_from_json,
    settings_to_json,
)
from tests.experiments.test_driver_bookkeeping import FakeRunner, _run, scripts  # noqa: F401  (fixture)
from tests.experiments.test_experiment_plan import _settings


@pytest.fixture(autouse=True)
def no_plots(monkeypatch):
    monkeypatch.setattr(experiments, "collect_table", functools.partial(experiments.collect_table, plots=False))


def _slurm_settings(*flags: str) -> DriverSettings:
    return _settings(["--launcher", "slurm", "--model_preset", "tiny", *flags])


@pytest.mark.parametrize(("flags", "message"), [
    (["--slurm_partition", "gpu"], "--slurm_partition only apply to --launcher slurm"),
    (["--wait"], "--wait only apply to --launcher slurm"),
    (["--launcher", "slurm", "--wait", "--collect_only"], "choose one"),
    (["--launcher", "slurm", "--slurm_time", "two hours"], "--slurm_time='two hours': expected a SLURM time limit"),
    (["--launcher", "slurm", "--slurm_extra", "=high"], "must be an sbatch option"),
    (["--launcher", "slurm", "--slurm_gpus_per_run", "-1"], "must be >= 0"),
    (["--collect_only", "--stage", "train"], "--collect_only contradicts --stage train"),
])
def test_bad_slurm_settings_name_the_flag(flags, message):
    with pytest.raises(ValueError, match=message):
        _settings(flags)


def test_slurm_settings_and_world_size():
    s = _slurm_settings("--gpus_per_run", "4", "--slurm_extra", "#SBATCH --qos=high; constraint=a100;-C v100")
    assert s.slurm_gpus_per_run == 4 and s.world_size == 4  # defaults to --gpus_per_run
    assert s.slurm_extra == ("--qos=high", "--constraint=a100", "-C v100")
    assert _slurm_settings("--slurm_gpus_per_run", "8", "--slurm_nodes_per_run", "2").world_size == 16
    assert _slurm_settings("--slurm_gpus_per_run", "0").world_size == 1  # a CPU job: one process
    assert _settings(["--launcher", "local"]).launcher == "torchrun"
    assert _settings(["--collect_only"]).stage == "collect"
    assert _settings(["--smoke", "--launcher", "slurm"]).slurm_time == "00:20:00"


def test_job_scripts(tmp_path):
    s = _slurm_settings("--output_dir", str(tmp_path), "--slurm_partition", "gpu", "--slurm_account", "lab",
                        "--slurm_time", "1-00:00:00", "--slurm_gpus_per_run", "4", "--slurm_extra", "qos=high")
    run = plan_runs(TABLES["table1"], s)[0]
    train = job_script(run, s, "train", None, Path("/work"))
    sbatch = [ln for ln in train.splitlines() if ln.startswith("#SBATCH")]
    assert sbatch == [f"#SBATCH --job-name=craft-train-{run.name}", f"#SBATCH --output={run.run_dir}/slurm/train-%j.out",
                      "#SBATCH --open-mode=append", "#SBATCH --chdir=/work", "#SBATCH --nodes=1",
                      "#SBATCH --ntasks-per-node=1", "#SBATCH --gres=gpu:4", "#SBATCH --partition=gpu",
                      "#SBATCH --account=lab", "#SBATCH --time=1-00:00:00",
                      "#SBATCH --signal=B:TERM@300", "#SBATCH --qos=high"]
    assert "--save_on_sigterm True" in train  # the trainer saves on that signal
    assert "--standalone --nnodes 1 --nproc_per_node 4" in train
    assert train.splitlines()[-1] == (f"exec {shlex.quote(s.python)} -m craft_experiments.common_utils.slurm job "
                                      f"{run.run_dir}/slurm/train.json")
    evaluation = job_script(run, s, "eval", None, Path("/work"))
    assert "#SBATCH --gres=gpu:1" in evaluation and "run_libero_eval.py" in evaluation
    assert "--signal" not in evaluation  # an evaluation resumes by run id whenever it is killed
    no_signal = _slurm_settings("--output_dir", str(tmp_path), "--slurm_signal_lead", "0")
    text = job_script(plan_runs(TABLES["table1"], no_signal)[0], no_signal, "train", None, Path("/work"))
    assert "--signal" not in text and "--save_on_sigterm" not in text

    multi = _slurm_settings("--output_dir", str(tmp_path), "--slurm_gpus_per_run", "8", "--slurm_nodes_per_run", "2")
    text = job_script(plan_runs(TABLES["table1"], multi)[0], multi, "train", None, Path("/work"))
    assert "#SBATCH --nodes=2" in text and "#SBATCH --gres=gpu:8" in text
    assert 'export CRAFT_RDZV_ENDPOINT="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1):29500"' in text
    assert ("srun --nodes 2 --ntasks-per-node 1 --kill-on-bad-exit=1" in text and "--nnodes 2 --nproc_per_node 8 "
            "--rdzv_backend c10d --rdzv_endpoint '$CRAFT_RDZV_ENDPOINT' --rdzv_id '$SLURM_JOB_ID'" in text)


def test_settings_travel_to_the_job_unchanged():
    s = _slurm_settings("--max_steps", "libero_spatial=3,libero_goal=4,libero_object=5,libero_10=6", "--slurm_extra",
                        "qos=high", "--eval_args", "--num_envs 2", "--eval_shards", "3")
    back = settings_from_json(json.loads(json.dumps(settings_to_json(s))))
    assert back == s and isinstance(back.output_dir, Path) and back.eval_args == ("--num_envs", "2")


def test_lanes_bound_the_runs_in_the_queue():
    lanes = Lanes(2)
    assert lanes.dependency() is None
    lanes.occupy(["1", "2"])
    assert lanes.dependency() is None
    lanes.occupy(["3"])
    assert lanes.dependency() == "afterany:1:2"  # the third run waits for the first run's jobs
    lanes.occupy(["4"])
    assert lanes.dependency() == "afterany:3"
    unlimited = Lanes(0)
    unlimited.occupy(["1"])
    assert unlimited.dependency() is None


def test_dry_run_shows_the_sbatch_calls_and_writes_nothing(tmp_path, capsys):
    argv = ["table1", "--launcher", "slurm", "--dry-run", "--output_dir", str(tmp_path / "out"), "--suites",
            "libero_spatial", "--seeds", "7", "--slurm_partition", "gpu", "--slurm_gpus_per_run", "4", "--eval_shards", "2"]
    assert main(argv, environ={}) == 0
    out = capsys.readouterr().out
    assert out.count("# slurm: sbatch ") == 6 and "--partition=gpu" in out and "--gres=gpu:4" in out
    assert out.count("--task_ids '[0,2,4,6,8]'") == 2 and out.count("--task_ids '[1,3,5,7,9]'") == 2
    assert not (tmp_path / "out").exists()


def test_slurm_commands_missing_is_one_clear_error(tmp_path, scripts, monkeypatch, capsys):  # noqa: F811
    monkeypatch.setenv("PATH", str(tmp_path))  # no squeue / sbatch
    assert _run(tmp_path, scripts, FakeRunner(), "--launcher", "slurm") == 1
    assert "squeue not found: --launcher slurm needs the SLURM client commands" in capsys.readouterr().err


# ---- evaluation shards ----

def test_shards_partition_the_suite():
    s = _settings(["--eval_shards", "3"])
    run = plan_runs(TABLES["table1"], s)[0]
    parts = [shard_tasks(run, s, i) for i in range(3)]
    assert parts == [(0, 3, 6, 9), (1, 4, 7), (2, 5, 8)]
    with pytest.raises(ValueError, match="more than the 10 tasks"):
        shard_tasks(run, _settings(["--eval_shards", "11"]), 0)


@pytest.mark.parametrize(("flags", "message"), [
    (["--eval_args", "--task_ids [0]"], "remove --task_ids from --eval_args"),
    (["--suites", "libero_goal,libero_90", "--max_steps", "5", "--eval_shards", "11"],
     "--eval_shards 11 is more than the 10 tasks of libero_goal"),
])
def test_bad_sharding_is_a_usage_error(flags, message, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["table1", "--eval_shards", "2", *flags, "--dry-run"], environ={})
    assert stopped.value.code == 2 and message in capsys.readouterr().err


def test_sharded_evaluation_merges_each_task_once_and_resumes(tmp_path, scripts):  # noqa: F811
    runner = FakeRunner({("eval", "craft--libero_goal--seed8"): "crash"})
    assert _run(tmp_path, scripts, runner, "--eval_shards", "3") == 1
    evals = [argv for kind, _, argv in runner.calls if kind == "eval"]
    assert len(evals) == 3 * 8 - 2  # the crashed run's first shard failed: its other two did not start
    run = tmp_path / "out" / "runs" / "baseline--libero_spatial--seed7"
    result = json.loads((run / "RESULT.json").read_text())
    # 10 tasks x 4 trials, one success per task (fakes.py), over three shards
    assert (result["episodes"], result["successes"], result["shards"]) == (40, 10, 3)
    assert sorted(json.loads((run / f"RESULT.shard{i}of3.json").read_text())["task_ids"][0] for i in (1, 2, 3)) == [0, 1, 2]
    assert len({t["task"] for t in result["tasks"]}) == 10

    retry = FakeRunner()
    assert _run(tmp_path, scripts, retry, "--eval_shards", "3") == 0
    assert retry.kinds() == [("eval", "craft--libero_goal--seed8")] * 3
    again = FakeRunner()
    assert _run(tmp_path, scripts, again, "--eval_shards", "3") == 0 and again.calls == []


def test_merge_refuses_to_count_a_task_twice():
    def shard(ids, tasks):
        return {"task_ids": ids, "tasks": [{"task": t, "episodes": 2, "successes": 1} for t in tasks], "episodes":
                2 * len(tasks), "successes": len(tasks), "source": "x", "suite": "libero_spatial", "checkpoint": "c",
                "eval_dir": "d", "eval_fingerprint": {}}

    merged = merge_shard_results([shard([0, 2], ["a", "c"]), shard([1], ["b"])], [(0, 2), (1,)])
    assert (merged["episodes"], merged["successes"], merged["success_rate"]) == (6, 3, 0.5)
    with pytest.raises(ValueError, match="task 'a' was evaluated by shard 1 too"):
        merge_shard_results([shard([0, 2], ["a", "c"]), shard([1], ["a"])], [(0, 2), (1,)])
    with pytest.raises(ValueError, match=r"shard 2: evaluated tasks \[0\], expected \[1\]"):
        merge_shard_results([shard([0, 2], ["a", "c"]), shard([0], ["b"])], [(0, 2), (1,)])


def test_queue_asks_again_when_the_controller_is_busy(tmp_path, monkeypatch):
    """A stand-in `squeue` on PATH that times out twice (as a loaded slurmctld does), then answers."""
    counter, squeue = tmp_path / "calls", tmp_path / "squeue"
    squeue.write_text(f"#!/bin/bash\nn=$(cat {counter} 2>/dev/null || echo 0); echo $((n + 1)) > {counter}\n"
                      "if [ \"$n\" -lt 2 ]; then echo 'slurm_load_jobs error: Socket timed out on send/recv operation' >&2;"
                      " exit 1; fi\necho '12|RUNNING|None|/x/slurm/train.sbatch'\n")
    squeue.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    pauses = []
    cluster = Cluster(user="me", sleep=pauses.append)
    assert cluster.queue() == {"12": QueuedJob("12", "RUNNING", "None", "/x/slurm/train.sbatch")}
    assert pauses == [2, 5]
    counter.write_text("-100")  # keeps failing: an error, never an empty queue
    with pytest.raises(SlurmError, match=r"6 tries\): slurm_load_jobs error: Socket timed out"):
        cluster.queue()
