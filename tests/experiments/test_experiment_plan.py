"""Driver settings (flag > env > default, --smoke) and the commands of each table, as --dry-run prints them."""

import shlex
from pathlib import Path

import pytest

from craft_experiments.common_utils import experiment_plan as ep
from craft_experiments.common_utils.driver_settings import parse_max_steps, resolve_settings
from craft_experiments.common_utils.experiments import build_parser, main


def _settings(argv=(), env=None, table="table1"):
    args = build_parser().parse_args([table, *argv])
    return resolve_settings(args, env or {})


def _flags(argv):
    """--name value pairs after the script path -> dict (the last occurrence wins, like draccus)."""
    out, i = {}, 0
    while i < len(argv):
        if argv[i].startswith("--") and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            out[argv[i][2:]] = argv[i + 1]
            i += 2
        else:
            i += 1
    return out


def test_precedence_flag_over_env_over_default(tmp_path):
    s = _settings()
    assert s.seeds == (7, 8, 9) and s.model_preset == "vla-adapter-pro" and s.launcher == "torchrun"
    assert s.max_steps_for("libero_object") == 5000 and s.max_steps_for("libero_10") == 60000
    s = _settings(env={"CRAFT_SEEDS": "1,2", "CRAFT_BATCH_SIZE": "16", "CRAFT_OUTPUT_DIR": str(tmp_path)})
    assert s.seeds == (1, 2) and s.batch_size == 16 and s.output_dir == tmp_path.resolve()
    s = _settings(["--seeds", "5", "--batch_size", "4"], env={"CRAFT_SEEDS": "1,2", "CRAFT_BATCH_SIZE": "16"})
    assert s.seeds == (5,) and s.batch_size == 4


def test_smoke_values_replace_env_but_not_flags():
    s = _settings(["--smoke"], env={"CRAFT_MAX_STEPS": "20000", "CRAFT_MODEL_PRESET": "vla-adapter"})
    assert (s.model_preset, s.max_steps, s.device, s.suites, s.seeds) == ("tiny", 2, "cpu", ("libero_spatial",), (7,))
    assert s.data_root_dir == s.output_dir / "data" and s.output_dir.name == "craft_experiments_smoke"
    assert _settings(["--smoke", "--max_steps", "3"]).max_steps == 3


@pytest.mark.parametrize("argv, env, match", [
    ([], {"CRAFT_SEEDS": "7,x"}, "environment variable CRAFT_SEEDS='7,x'"),
    (["--gpus_per_run", "0"], {}, "--gpus_per_run='0': must be >= 1"),
    (["--suites", "spatial"], {}, "not LIBERO suite names"),
    (["--launcher", "python", "--gpus_per_run", "2"], {}, "--launcher python runs one process"),
    (["--max_steps", "libero_spatial=100"], {}, "no entry for libero_object"),
    (["--device", "tpu"], {}, "must be one of"),
])
def test_bad_settings_name_their_source(argv, env, match):
    with pytest.raises(ValueError, match=match):
        _settings(argv, env)


def test_max_steps_syntax():
    assert parse_max_steps("100") == 100
    assert parse_max_steps("libero_spatial=10, libero_10=20") == {"libero_spatial": 10, "libero_10": 20}
    with pytest.raises(ValueError):
        parse_max_steps("spatial=10")


def test_table1_plan_and_commands(tmp_path):
    s = _settings(["--output_dir", str(tmp_path), "--seeds", "7,8", "--gpus_per_run", "4",
                   "--craft_args", "--craft_retention_budget 0.05", "--finetune_args", "--image_aug False"])
    runs = ep.plan_runs(ep.TABLES["table1"], s)
    assert len(runs) == 2 * 4 * 2  # rows x suites x seeds
    assert [r.name for r in runs[:3]] == ["baseline--libero_spatial--seed7", "craft--libero_spatial--seed7",
                                          "baseline--libero_object--seed7"]  # seed-major
    craft = runs[1]
    cmd = ep.build_finetune_command(craft, s, resume=False)
    assert cmd.argv[1:8] == ("-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", "4")
    assert cmd.argv[8].endswith("vla-scripts/finetune.py")
    f = _flags(cmd.argv[9:])
    assert f["use_craft"] == "True" and f["dataset_name"] == "libero_spatial_no_noops" and f["seed"] == "7"
    assert f["run_root_dir"] == str(tmp_path / "runs" / craft.name / "train") and f["run_id_override"] == craft.name
    assert f["max_steps"] == "20000" and f["craft_retention_budget"] == "0.05" and f["image_aug"] == "False"
    assert "--resume" not in cmd.argv and cmd.log_path == tmp_path / "runs" / craft.name / "logs" / "train.log"
    base = _flags(ep.build_finetune_command(runs[0], s, resume=True).argv)
    assert base["use_craft"] == "False" and "craft_retention_budget" not in base and base["resume"] == "True"
    ev = ep.build_eval_command(craft, s, craft.final_checkpoint)
    g = _flags(ev.argv)
    assert ev.argv[1].endswith("experiments/robot/libero/run_libero_eval.py")
    assert g["pretrained_checkpoint"] == str(tmp_path / "runs" / craft.name / "train" / f"{craft.name}--20000_chkpt")
    assert (g["task_suite_name"], g["num_trials_per_task"], g["seed"], g["unnorm_key"]) == (
        "libero_spatial", "50", "7", "libero_spatial_no_noops")
    assert g["local_log_dir"] == str(craft.eval_root) and g["run_id"].startswith("EVAL-libero_spatial-vla-")


def test_table2_fewshot_flags():
    s = _settings(["--suites", "libero_goal", "--seeds", "1"], table="table2")
    runs = ep.plan_runs(ep.TABLES["table2"], s)
    got = {(r.row.name, _flags(ep.build_finetune_command(r, s, False).argv).get("n_shot_per_task"),
            _flags(ep.build_finetune_command(r, s, False).argv)["use_craft"]) for r in runs}
    assert got == {("baseline-5shot", "5", "False"), ("craft-5shot", "5", "True"),
                   ("baseline-10shot", "10", "False"), ("craft-10shot", "10", "True")}


def test_table4_ablation_flags_and_shared_full_run():
    s = _settings(["--suites", "libero_goal", "--seeds", "1"], table="table4")
    runs = {r.row.name: r for r in ep.plan_runs(ep.TABLES["table4"], s)}
    expected = {"full": {}, "no_projection": {"craft_enable_projection": "False"},
                "no_dual": {"craft_enable_dual": "False"}, "anchor_raw_only": {"craft_anchor_type": "raw_only"},
                "anchor_aq_only": {"craft_anchor_type": "aq_only"}}
    for name, extra in expected.items():
        f = _flags(ep.build_finetune_command(runs[name], s, False).argv)
        assert f["use_craft"] == "True"
        for key in ("craft_enable_projection", "craft_enable_dual", "craft_anchor_type"):
            assert f.get(key) == extra.get(key), (name, key)
    table1 = {r.row.name: r for r in ep.plan_runs(ep.TABLES["table1"], s)}
    assert runs["full"].run_dir == table1["craft"].run_dir  # trained once, used by both tables


def test_variants_filter():
    s = _settings(["--variants", "no_dual,full"], table="table4")
    assert [r.name for r in ep.select_rows(ep.TABLES["table4"], s)] == ["no_dual", "full"]
    with pytest.raises(ValueError, match="not rows of table4"):
        ep.select_rows(ep.TABLES["table4"], _settings(["--variants", "craft"], table="table4"))


def test_smoke_commands(tmp_path):
    s = _settings(["--smoke", "--output_dir", str(tmp_path)])
    run = ep.plan_runs(ep.TABLES["table1"], s)[1]
    cmd = ep.build_finetune_command(run, s, resume=False)
    f = _flags(cmd.argv)
    assert (f["model_preset"], f["dataset_name"], f["max_steps"], f["device"]) == ("tiny", "libero_synthetic", "2", "cpu")
    assert f["create_synthetic_dataset"] == "True" and f["data_root_dir"] == str(tmp_path / "data")
    assert dict(cmd.env) == {"CUDA_VISIBLE_DEVICES": ""}
    g = _flags(ep.build_eval_command(run, s, run.final_checkpoint).argv)
    assert (g["task_ids"], g["num_trials_per_task"], g["max_steps"], g["unnorm_key"]) == ("[0]", "1", "8", "libero_synthetic")


def test_fingerprints_ignore_locations_but_not_experiment_settings(tmp_path):
    a = _settings(["--output_dir", str(tmp_path / "a"), "--data_root_dir", "/data/x", "--wandb_mode", "disabled"])
    b = _settings(["--output_dir", str(tmp_path / "b"), "--data_root_dir", "/data/y"])
    ra, rb = ep.plan_runs(ep.TABLES["table1"], a)[0], ep.plan_runs(ep.TABLES["table1"], b)[0]
    assert ep.finetune_fingerprint(ra, a) == ep.finetune_fingerprint(rb, b)
    c = _settings(["--output_dir", str(tmp_path / "a"), "--learning_rate", "1e-4"])
    assert ep.finetune_fingerprint(ep.plan_runs(ep.TABLES["table1"], c)[0], c) != ep.finetune_fingerprint(ra, a)
    # the evaluator's run id is deterministic, and changes with the protocol
    assert ep.eval_run_id(ra, a, "x--5_chkpt") == ep.eval_run_id(rb, b, "/elsewhere/x--5_chkpt")
    d = _settings(["--num_trials_per_task", "10"])
    assert ep.eval_run_id(ep.plan_runs(ep.TABLES["table1"], d)[0], d, "x--5_chkpt") != ep.eval_run_id(ra, a, "x--5_chkpt")


@pytest.mark.parametrize("table, runs", [("table1", 2 * 4 * 3), ("table2", 4 * 4 * 3), ("table4", 5 * 4 * 3)])
def test_dry_run_prints_every_command_and_writes_nothing(tmp_path, capsys, table, runs):
    assert main([table, "--dry-run", "--output_dir", str(tmp_path / "out")], environ={}) == 0
    out = capsys.readouterr().out
    commands = [line for line in out.splitlines() if line and not line.startswith("#")]
    assert len(commands) == 2 * runs  # one training and one evaluation per run
    assert sum("finetune.py" in c for c in commands) == runs and sum("run_libero_eval.py" in c for c in commands) == runs
    for c in commands:
        shlex.split(c)  # copy-pasteable
    assert not (tmp_path / "out").exists()


def test_bad_settings_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["table1", "--seeds", "a"], environ={})
    assert e.value.code == 2 and "--seeds='a'" in capsys.readouterr().err


def test_missing_script_is_reported_before_anything_runs(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["table1", "--output_dir", str(tmp_path), "--finetune_script", str(tmp_path / "nope.py")], environ={})
    assert e.value.code == 2 and "nope.py does not exist" in capsys.readouterr().err
    assert not Path(tmp_path / "runs").exists()


@pytest.mark.parametrize("table", sorted(ep.TABLES))
@pytest.mark.parametrize("smoke", [False, True])
def test_every_command_parses_with_the_real_trainer_and_evaluator_configs(table, smoke, tmp_path):
    """The contract: each flag the drivers pass exists in FinetuneConfig / EvalConfig and validates."""
    draccus = pytest.importorskip("draccus")
    from prismatic.eval.config import EvalConfig
    from prismatic.training.config import FinetuneConfig

    # real presets need a base VLM directory that tests do not have: check them with the tiny preset
    argv = ["--output_dir", str(tmp_path), "--seeds", "1"] + (["--smoke"] if smoke else ["--model_preset", "tiny"])
    s = _settings(argv + ["--craft_args", "--craft_retention_budget 0.05"], table=table)
    for run in ep.plan_runs(ep.TABLES[table], s):
        train = ep.build_finetune_command(run, s, resume=False)
        script = train.argv.index(str(s.finetune_script))
        cfg = draccus.parse(FinetuneConfig, args=list(train.argv[script + 1:]))
        assert cfg.run_id_override == run.name and cfg.use_craft == run.row.variant.use_craft
        assert cfg.max_steps == run.max_steps and cfg.seed == run.seed
        for name, value in run.row.variant.flags:
            assert str(getattr(cfg, name)) == value, (run.name, name)
        evaluation = ep.build_eval_command(run, s, run.final_checkpoint)
        ecfg = draccus.parse(EvalConfig, args=list(evaluation.argv[2:]))
        assert ecfg.task_suite_name == run.suite and ecfg.run_id == ep.eval_run_id(run, s, run.final_checkpoint)
        assert ecfg.task_ids == ([0] if smoke else None)
