"""Faults a hostile user (or a cluster) inflicts on a training run: nothing lost, nothing silently wrong.

Each test names the fault; the run must either survive it or stop with an error that tells the truth.
"""

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from prismatic.training import checkpoint as ckpt
from prismatic.training import train as train_mod
from prismatic.training.config import FinetuneConfig
from prismatic.training.metrics import read_metrics
from prismatic.training.train import train


def _cfg(data_root, run_root, **kw):
    base = dict(model_preset="tiny", dataset_name="libero_synthetic", data_root_dir=str(data_root),
                run_root_dir=str(run_root), device="cpu", batch_size=2, learning_rate=1e-3, max_steps=2,
                save_freq=2, shuffle_buffer_size=16, image_aug=False, lora_rank=2, wandb_mode="disabled",
                wandb_log_freq=1, seed=3, run_id_override="r")
    base.update(kw)
    return FinetuneConfig(**base)


# ------------------------------------------------------------------ item 5: resume with new optimizer flags
def test_resume_with_overridden_learning_rate_uses_it(synthetic_data_root, tmp_path):
    # warmup over 4 steps: the LR at (0-based) step s is lr * (0.1 + 0.9 * s / 4), written out here
    train(_cfg(synthetic_data_root, tmp_path, lr_warmup_steps=4))
    with pytest.raises(ValueError, match="learning_rate.*--resume_override_flags learning_rate"):
        train(_cfg(synthetic_data_root, tmp_path, lr_warmup_steps=4, learning_rate=2e-4, max_steps=4, resume=True))
    result = train(_cfg(synthetic_data_root, tmp_path, lr_warmup_steps=4, learning_rate=2e-4, max_steps=4,
                        resume=True, resume_override_flags="learning_rate"))
    rows = {r["step"]: r for r in read_metrics(result.run_dir)}
    assert rows[2]["lr"] == pytest.approx(1e-3 * (0.1 + 0.9 * 1 / 4))  # before the resume: the old LR
    assert rows[3]["lr"] == pytest.approx(2e-4 * (0.1 + 0.9 * 2 / 4))  # after: the new one, same schedule
    assert rows[4]["lr"] == pytest.approx(2e-4 * (0.1 + 0.9 * 3 / 4))
    state = ckpt.load_checkpoint(result.last_checkpoint, need_lora=True, need_merged=True)
    assert state.training_state["scheduler"]["base_lrs"] == [2e-4]
    assert state.training_state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(2e-4)  # step 4: warmup done
    assert state.finetune_config["learning_rate"] == 2e-4  # a later plain resume continues with the new LR
    records = [json.loads(line) for line in (result.run_dir / "resume_overrides.jsonl").read_text().splitlines()]
    assert records == [{"step": 2, "flag": "learning_rate", "checkpoint": 1e-3, "now": 2e-4,
                        "from": str(ckpt.checkpoint_dir(tmp_path, "r", 2))}]


def test_resume_override_flags_are_validated(synthetic_data_root, tmp_path):
    with pytest.raises(ValueError, match="--resume_override_flags is set but --resume is False"):
        _cfg(synthetic_data_root, tmp_path, resume_override_flags="learning_rate")
    with pytest.raises(ValueError, match="unknown: \\['learnin_rate'\\]"):
        _cfg(synthetic_data_root, tmp_path, resume=True, resume_override_flags="learnin_rate")
    with pytest.raises(ValueError, match="--resume_override_flags: \\['batch_size'\\] cannot be overridden"):
        train(_cfg(synthetic_data_root, tmp_path, resume=True, resume_override_flags="batch_size"))


@pytest.fixture(scope="module")
def trained_root(synthetic_data_root, tmp_path_factory):
    """Run "r", 2 steps, checkpoints at steps 1 and 2 (copy it before damaging it)."""
    root = tmp_path_factory.mktemp("trained")
    train(_cfg(synthetic_data_root, root, save_freq=1))
    return root


def _copy(trained_root, tmp_path):
    shutil.copytree(trained_root, tmp_path / "runs")
    return tmp_path / "runs"


# ------------------------------------------------------------------ item 1: non-finite hyper-parameters / updates
@pytest.mark.parametrize("flag,value", [("learning_rate", float("inf")), ("learning_rate", float("nan")),
                                        ("weight_decay", float("inf")), ("max_grad_norm", float("nan"))])
def test_non_finite_hyper_parameters_are_config_errors(synthetic_data_root, tmp_path, flag, value):
    with pytest.raises(ValueError, match=f"--{flag} must be a finite number"):
        _cfg(synthetic_data_root, tmp_path, **{flag: value})


def test_a_non_finite_update_never_writes_a_checkpoint_and_says_what_is_left(synthetic_data_root, trained_root,
                                                                               tmp_path, monkeypatch):
    # An update that overflows while the loss that produced it was finite (what --learning_rate inf did):
    # the step's loss check cannot see it, the check of the updated parameters before the save must.
    real_step = train_mod.train_step

    def overflowing_step(ctx, micro):
        metrics = real_step(ctx, micro)
        if ctx.scheduler.last_epoch == poison_at:
            with torch.no_grad():
                ctx.params[0].view(-1)[0] = float("inf")
        return metrics

    monkeypatch.setattr(train_mod, "train_step", overflowing_step)
    poison_at = 1
    with pytest.raises(FloatingPointError, match="non-finite parameters after optimizer step 1 .*not saving a "
                                                 "checkpoint; no checkpoint of run 'r' was written yet"):
        train(_cfg(synthetic_data_root, tmp_path / "fresh", save_freq=1))
    assert ckpt.list_checkpoints(tmp_path / "fresh", "r") == {}
    root = _copy(trained_root, tmp_path)
    poison_at = 3
    with pytest.raises(FloatingPointError) as info:
        train(_cfg(synthetic_data_root, root, save_freq=1, max_steps=4, resume=True))
    message = str(info.value)
    assert "non-finite parameters after optimizer step 3" in message
    assert f"the last intact checkpoint is {ckpt.checkpoint_dir(root, 'r', 2)} (step 2)" in message
    assert "--resume True --resume_override_flags learning_rate --learning_rate <lower>" in message
    assert sorted(ckpt.list_checkpoints(root, "r")) == [1, 2]
    assert [p.name for p in root.iterdir() if p.name.startswith(".")] == []


def test_a_diverged_loss_names_the_last_checkpoint_and_the_resume_command(synthetic_data_root, trained_root,
                                                                           tmp_path):
    # lr 1e37 is finite, the update of step 3 is finite (~1e37) and step 4's loss overflows
    root = _copy(trained_root, tmp_path)
    cfg = _cfg(synthetic_data_root, root, learning_rate=1e37, save_freq=10, max_steps=6, resume=True,
               resume_override_flags="learning_rate")
    with pytest.raises(FloatingPointError) as info:
        train(cfg)
    message = str(info.value)
    assert "non-finite loss at optimizer step" in message
    assert f"the last intact checkpoint is {ckpt.checkpoint_dir(root, 'r', 2)} (step 2)" in message
    command = message.split("to continue from it with a lower learning rate: ")[1]
    assert command.startswith("python vla-scripts/finetune.py --model_preset tiny ")
    assert f"--run_root_dir {root} " in command and command.count("--learning_rate") == 1


# ------------------------------------------------------------------ item 2: resume verifies the checkpoint
@pytest.mark.parametrize("victim", ["lora_adapter/adapter_model.safetensors", "training_state.pt"])
def test_resume_refuses_a_damaged_checkpoint_naming_the_file(synthetic_data_root, trained_root, tmp_path, victim):
    root = _copy(trained_root, tmp_path)
    target = ckpt.checkpoint_dir(root, "r", 2) / victim
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit in the middle: the file still parses
    target.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"damaged: {re.escape(victim)} \\(sha256 differs"):
        train(_cfg(synthetic_data_root, root, max_steps=3, resume=True))


def test_resume_refuses_a_checkpoint_without_its_proprio_projector(synthetic_data_root, trained_root, tmp_path):
    root = _copy(trained_root, tmp_path)
    (ckpt.checkpoint_dir(root, "r", 2) / "proprio_projector--2_checkpoint.pt").unlink()
    with pytest.raises(FileNotFoundError, match="missing proprio_projector--2_checkpoint.pt"):
        train(_cfg(synthetic_data_root, root, max_steps=3, resume=True))


# ------------------------------------------------------------------ item 3: a fresh run never clobbers a run
def test_fresh_run_into_an_existing_run_id_is_refused_then_overwrite_moves_it_aside(synthetic_data_root,
                                                                                       trained_root, tmp_path):
    root = _copy(trained_root, tmp_path)
    metrics_before = (root / "r" / "metrics.jsonl").read_text()
    with pytest.raises(FileExistsError, match="--resume True .*--run_id_note / --run_id_override .*--overwrite True"):
        train(_cfg(synthetic_data_root, root, max_steps=1, save_freq=1))
    assert (root / "r" / "metrics.jsonl").read_text() == metrics_before  # untouched
    train(_cfg(synthetic_data_root, root, max_steps=1, save_freq=1, overwrite=True))
    aside = [p for p in root.iterdir() if p.name.startswith("r.overwritten-")]
    assert len(aside) == 1
    assert sorted(p.name for p in aside[0].iterdir()) == ["r", "r--1_chkpt", "r--2_chkpt"]
    assert (aside[0] / "r" / "metrics.jsonl").read_text() == metrics_before
    assert sorted(ckpt.list_checkpoints(root, "r")) == [1]  # the new run's only
    assert [r["step"] for r in read_metrics(root / "r")] == [1]


# ------------------------------------------------------------------ item 4 + 6: torn metrics line, stale temp dirs
def test_resume_repairs_a_torn_metrics_line_and_removes_stale_temp_dirs(synthetic_data_root, trained_root, tmp_path,
                                                                         caplog):
    root = _copy(trained_root, tmp_path)
    metrics = root / "r" / "metrics.jsonl"
    rows = metrics.read_text().splitlines()
    metrics.write_text(rows[0] + "\n" + rows[1][: len(rows[1]) // 2])  # killed while writing step 2's line
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = root / f".tmp-r--3_chkpt-{socket.gethostname()}-{dead.pid}"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"partial")
    result = train(_cfg(synthetic_data_root, root, max_steps=3, resume=True, resume_step=1))
    assert "torn line" in caplog.text
    assert not stale.exists()
    assert [r["step"] for r in read_metrics(result.run_dir)] == [1, 2, 3]


def test_a_bad_metrics_line_is_named_before_the_model_is_built(synthetic_data_root, trained_root, tmp_path):
    root = _copy(trained_root, tmp_path)
    metrics = root / "r" / "metrics.jsonl"
    rows = metrics.read_text().splitlines()
    metrics.write_text("garbage\n" + "\n".join(rows) + "\n")
    with pytest.raises(ValueError, match="metrics.jsonl, line 1: not a metrics record"):
        train(_cfg(synthetic_data_root, root, max_steps=3, resume=True))


# ------------------------------------------------------------------ item 9: paths from user strings
@pytest.mark.parametrize("flag,value", [("run_id_override", "../../escaped"), ("run_id_override", "a/b"),
                                        ("run_id_override", ".."), ("run_id_note", "x/../../y"),
                                        ("dataset_name", "libero_synthetic/../../x")])
def test_paths_from_user_strings_stay_inside_their_roots(synthetic_data_root, tmp_path, flag, value):
    with pytest.raises(ValueError, match=f"--{flag}"):
        _cfg(synthetic_data_root, tmp_path, **{flag: value})


# ------------------------------------------------------------------ item 10: config errors before any work
def test_unknown_dataset_and_anchor_cache_without_craft_are_config_errors(synthetic_data_root, tmp_path):
    with pytest.raises(ValueError, match="--dataset_name: unknown dataset name 'libero_spatail_no_noops'"):
        _cfg(synthetic_data_root, tmp_path, dataset_name="libero_spatail_no_noops")
    with pytest.raises(ValueError, match="--craft_anchor_cache True needs --use_craft True"):
        _cfg(synthetic_data_root, tmp_path, craft_anchor_cache=True)
    with pytest.raises(ValueError, match="--overwrite True .* cannot be combined with --resume True"):
        _cfg(synthetic_data_root, tmp_path, overwrite=True, resume=True)


# ------------------------------------------------------------------ items 8 + 10: the command line
ROOT = Path(__file__).resolve().parents[2]


def _finetune_args(data_root, run_root, *extra):
    return ["--model_preset", "tiny", "--dataset_name", "libero_synthetic", "--data_root_dir", str(data_root),
            "--run_root_dir", str(run_root), "--device", "cpu", "--batch_size", "2", "--shuffle_buffer_size", "16",
            "--image_aug", "False", "--lora_rank", "2", "--wandb_log_freq", "1", "--run_id_override", "r", *extra]


def _launch(args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(ROOT / "vla-scripts/finetune.py"), *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_until(proc, predicate, timeout_s=240):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended early ({proc.returncode}):\n{proc.communicate()[1][-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for the run")
        time.sleep(0.2)


def _metric_steps(run_dir):
    path = run_dir / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.endswith("}")] \
        if path.is_file() else []


def test_user_errors_are_one_line_without_a_traceback(synthetic_data_root, tmp_path):
    cases = [(["--resume", "True"], "error: --resume True but no checkpoint of run 'r'"),  # fails in train()
             (["--run_id_override", "../../escaped"], "error: --run_id_override must be a plain directory name")]
    for extra, expected in cases:  # later flags win: the second case replaces the run id
        proc = _launch(_finetune_args(synthetic_data_root, tmp_path, "--max_steps", "2", *extra))
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 1, err[-3000:]
        assert expected in err and "Traceback" not in err, err[-3000:]
    assert not (tmp_path.parent / "escaped").exists()


@pytest.mark.slow
def test_sigint_exits_130_naming_the_checkpoint_and_a_resume_command_that_works(synthetic_data_root, tmp_path):
    runs = tmp_path / "runs"
    proc = _launch(_finetune_args(synthetic_data_root, runs, "--max_steps", "1000", "--save_freq", "2"))
    _wait_until(proc, lambda: 2 in ckpt.list_checkpoints(runs, "r"))
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    latest = max(ckpt.list_checkpoints(runs, "r"))
    assert f"the last intact checkpoint is {ckpt.checkpoint_dir(runs, 'r', latest)} (step {latest}); resume with:" in err
    assert not [p for p in runs.iterdir() if p.name.startswith(".")]  # no half-written checkpoint left
    command = shlex.split(err.split("resume with:\n  ")[1].splitlines()[0])
    assert command[:2] == ["python", "vla-scripts/finetune.py"] and command[-2:] == ["--resume", "True"]
    resumed = _launch(command[2:] + ["--max_steps", str(latest + 1)])  # the printed command, two steps shorter
    out, err = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, err[-3000:]
    assert f"resuming from {ckpt.checkpoint_dir(runs, 'r', latest)}" in err
    assert f"final step {latest + 1}" in out


@pytest.mark.slow
def test_save_on_sigterm_saves_the_current_step_and_exits_143(synthetic_data_root, tmp_path):
    runs = tmp_path / "runs"
    proc = _launch(_finetune_args(synthetic_data_root, runs, "--max_steps", "1000", "--save_freq", "500",
                                  "--save_on_sigterm", "True"))
    _wait_until(proc, lambda: len(_metric_steps(runs / "r")) >= 2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    steps = _metric_steps(runs / "r")
    saved = ckpt.list_checkpoints(runs, "r")
    assert list(saved) == [steps[-1]]  # the step it was in when the signal came, not a multiple of save_freq
    assert f"SIGTERM: saved a checkpoint and stopped; the last intact checkpoint is {saved[steps[-1]]}" in err
    loaded = ckpt.load_checkpoint(saved[steps[-1]], need_lora=True, need_merged=True)  # complete, verified
    assert loaded.training_state["step"] == steps[-1]


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds the torchrun workers through /proc")
def test_save_on_sigterm_under_ddp_when_only_one_rank_gets_it(synthetic_data_root, tmp_path):
    # Saving is collective: the ranks must agree on the step to stop at even if the signal reaches one of them.
    runs = tmp_path / "runs"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(ROOT / "vla-scripts/finetune.py"),
                             *_finetune_args(synthetic_data_root, runs, "--max_steps", "1000", "--save_freq", "500",
                                             "--save_on_sigterm", "True")],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    workers = []
    try:
        _wait_until(proc, lambda: len(_metric_steps(runs / "r")) >= 2, timeout_s=400)
        workers = sorted(_children(proc.pid))
        assert len(workers) == 2, workers
        os.kill(workers[-1], signal.SIGTERM)  # the later-started worker: rank 1
        _, err = proc.communicate(timeout=180)  # ranks that disagree deadlock in the save: a timeout here
    finally:
        for pid in [proc.pid, *workers]:  # torchrun starts each worker in its own session
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode != 0  # torchrun reports its workers' exit code 143 as a failure
    assert "SIGTERM: saved a checkpoint and stopped" in err, err[-3000:]  # rank 0 stopped too, after saving
    steps = _metric_steps(runs / "r")
    saved = ckpt.list_checkpoints(runs, "r")
    assert list(saved) == [steps[-1]], (list(saved), steps)
    state = ckpt.load_checkpoint(saved[steps[-1]], need_lora=True, need_merged=True).training_state
    assert state["step"] == steps[-1]  # the collective save completed (a rank left out would have hung it)
