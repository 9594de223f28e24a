"""Upstream VLA-Adapter's flags and commands: every field of its FinetuneConfig / GenerateConfig is accepted
and documented; the values naming what this stack does are honoured, the others are errors naming the flag;
the seed's and upstream's README commands run (with --dry_run True, or end to end at tiny size) and none is
rejected for an unknown flag; logs written to a file carry no progress-bar frames."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import draccus
import pytest
import torch

from prismatic.eval.config import EvalConfig
from prismatic.training import checkpoint as ckpt
from prismatic.training.config import FinetuneConfig
from prismatic.training.metrics import read_metrics
from prismatic.training.resume_dir import config_for_checkpoint_dir, given_flags
from prismatic.training.train import model_config_for
from prismatic.upstream_flags import BASE_VLM_HUB_ID, replace_openvla_paths

ROOT = Path(__file__).resolve().parents[2]
FINETUNE = ROOT / "vla-scripts" / "finetune.py"
EVAL = ROOT / "experiments" / "robot" / "libero" / "run_libero_eval.py"

# The dataclass fields of upstream's configs (OpenHelix-Team/VLA-Adapter @ 838a36d, read from the source with
# `ast`): vla-scripts/finetune.py FinetuneConfig and experiments/robot/libero/run_libero_eval.py GenerateConfig.
UPSTREAM_FINETUNE = (
    "config_file_path vlm_path use_minivlm resum_vla_path data_root_dir dataset_name run_root_dir "
    "shuffle_buffer_size use_l1_regression use_diffusion num_diffusion_steps use_film num_images_in_input "
    "use_proprio phase1_path batch_size learning_rate lr_warmup_steps num_steps_before_decay "
    "grad_accumulation_steps max_steps use_val_set val_freq val_time_limit save_freq save_latest_checkpoint_only "
    "resume resume_step image_aug diffusion_sample_freq use_lora lora_rank lora_dropout "
    "merge_lora_during_training use_fz wandb_entity wandb_project run_id_note run_id_override wandb_log_freq "
    "use_pro_version phase").split()
UPSTREAM_GENERATE = (
    "model_family pretrained_checkpoint use_l1_regression use_minivlm num_diffusion_steps use_film "
    "num_images_in_input use_proprio center_crop num_open_loop_steps unnorm_key load_in_8bit load_in_4bit "
    "task_suite_name num_steps_wait num_trials_per_task initial_states_path env_img_res run_id_note local_log_dir "
    "use_wandb wandb_entity wandb_project seed save_version use_pro_version phase").split()

# The seed's commands (the issue, verbatim).
SEED_BASELINE = ('python vla-scripts/finetune.py --config_file_path "openvla/openvla-7b" --dataset_name '
                 '"libero_spatial_no_noops" --batch_size 8 --learning_rate 5e-4 --max_steps 5000 --use_l1_regression '
                 'True --use_craft False --wandb_project "vla-baseline-test"')
SEED_CRAFT = ('python vla-scripts/finetune.py --config_file_path "openvla/openvla-7b" --dataset_name '
              '"libero_spatial_no_noops" --batch_size 8 --learning_rate 5e-4 --max_steps 20000 --use_l1_regression '
              'True --use_craft True --craft_retention_budget 0.1 --craft_dual_lr 0.01 --craft_enable_projection True '
              '--craft_enable_dual True --wandb_project "vla-craft-training"')
SEED_RESUME = ('python vla-scripts/finetune.py --config_file_path "runs/your-experiment-name--10000_chkpt" --resume True '
               '--resume_step 10000 --max_steps 20000 --use_craft True')

# Upstream README (10-12 GB recipe and the LIBERO-Spatial-Pro evaluation), verbatim apart from the launcher
# (`CUDA_VISIBLE_DEVICES=0 torchrun --standalone --nnodes 1 --nproc-per-node 1` -> `python`) and --dry_run True.
README_TRAIN = r"""data_name=libero_spatial_no_noops

python vla-scripts/finetune.py \
--vlm_path pretrained_models/prism-qwen25-extra-dinosiglip-224px-0_5b \
--config_file_path pretrained_models/configs \
--data_root_dir data/libero \
--dataset_name $data_name \
--run_root_dir outputs \
--use_film False \
--num_images_in_input 2 \
--use_proprio True \
--use_lora True \
--use_fz False \
--use_minivlm True \
--image_aug True \
--num_steps_before_decay 400000 \
--max_steps 400005 \
--save_freq 5000 \
--save_latest_checkpoint_only False \
--merge_lora_during_training True \
--batch_size 1 \
--grad_accumulation_steps 8 \
--learning_rate 2e-4 \
--lora_rank 64 \
--use_pro_version True \
--wandb_entity "YOUR_WANDB_ENTITY" \
--wandb_project "$data_name" \
--run_id_note VLA-Adapter--libero_spatial_no_noops--$current_time \
--dry_run True \
> logs/VLA-Adapter--libero_spatial_no_noops--$current_time.log 2>&1 &
wait $!
"""
README_EVAL = r"""# Launch LIBERO-Spatial-Pro evals (Background running)
python experiments/robot/libero/run_libero_eval.py \
  --use_proprio True \
  --num_images_in_input 2 \
  --use_film False \
  --pretrained_checkpoint outputs/LIBERO-Spatial-Pro \
  --task_suite_name libero_spatial \
  --use_pro_version True \
  --dry_run True \
  > eval_logs/Spatial--chkpt.log 2>&1 &
wait $!
"""


def _env(hf_home: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    # `python` in the commands is this interpreter (the venv's bin first on PATH).
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", WANDB_MODE="disabled",
               OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="2")
    if hf_home is not None:
        env["HF_HOME"] = str(hf_home)
    return env


def _script_args(command: str) -> list[str]:
    """The flags of `python <script> flags...` (shell quoting removed)."""
    return shlex.split(command)[2:]


def _sandbox(tmp_path: Path) -> Path:
    """A working directory where the repository's scripts resolve under the relative names of the commands."""
    box = tmp_path / "box"
    (box / "vla-scripts").mkdir(parents=True)
    (box / "vla-scripts" / "finetune.py").symlink_to(FINETUNE)
    (box / "experiments" / "robot" / "libero").mkdir(parents=True)
    (box / "experiments" / "robot" / "libero" / "run_libero_eval.py").symlink_to(EVAL)
    return box


# ---------------------------------------------------------------------------------------------------------
# the fields
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("config, upstream", [(FinetuneConfig, UPSTREAM_FINETUNE), (EvalConfig, UPSTREAM_GENERATE)])
def test_every_upstream_field_is_a_flag(config, upstream):
    ours = {f.name for f in config.__dataclass_fields__.values()}
    assert [name for name in upstream if name not in ours] == []


@pytest.mark.parametrize("script, config", [(FINETUNE, FinetuneConfig), (EVAL, EvalConfig)])
def test_help_documents_every_flag(script, config):
    out = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=300,
                         env=_env(), cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    options = out.stdout.split(f"{config.__name__}:", 1)[1]
    # "--name TYPE   help text (default: X)", the help possibly wrapped onto the following lines
    entries = dict(re.findall(r"^  --(\w+)[^\n]*?(?:\n\s+)?(.*?)\(default:", options, re.M | re.S))
    for name in config.__dataclass_fields__:
        assert name in entries, f"--{name} missing from --help"
        assert len(entries[name].split()) >= 3, f"--{name} has no help text: {entries[name]!r}"


UNSUPPORTED = [
    (FinetuneConfig, "use_film", "True", "FiLM"),
    (FinetuneConfig, "use_diffusion", "True", "diffusion"),
    (FinetuneConfig, "use_minivlm", "False", "OpenVLA-7B"),
    (FinetuneConfig, "use_l1_regression", "False", "discrete action tokens"),
    (FinetuneConfig, "num_diffusion_steps", "100", "diffusion"),
    (FinetuneConfig, "diffusion_sample_freq", "10", "diffusion"),
    (FinetuneConfig, "phase1_path", "ckpt/phase1", "phase-1"),
    (FinetuneConfig, "phase", "Inference", "phase"),
    (EvalConfig, "use_film", "True", "FiLM"),
    (EvalConfig, "load_in_8bit", "True", "8-bit"),
    (EvalConfig, "load_in_4bit", "True", "4-bit"),
    (EvalConfig, "model_family", "llava", "model family"),
    (EvalConfig, "use_l1_regression", "False", "discrete action tokens"),
    (EvalConfig, "use_minivlm", "False", "OpenVLA-7B"),
    (EvalConfig, "num_diffusion_steps", "10", "diffusion"),
    (EvalConfig, "initial_states_path", "states.json", "JSON"),
    (EvalConfig, "phase", "Training", "phase"),
]


@pytest.mark.parametrize("config, flag, value, what", UNSUPPORTED)
def test_unsupported_upstream_values_are_errors_naming_the_flag(config, flag, value, what):
    base = ["--model_preset", "tiny"] if config is FinetuneConfig else ["--pretrained_checkpoint", "x"]
    with pytest.raises(draccus.utils.ParsingError) as e:
        draccus.parse(config, args=base + [f"--{flag}", value], exit_on_error=False)
    message = str(e.value.__cause__)
    assert isinstance(e.value.__cause__, ValueError)
    assert message.startswith(f"--{flag} {value} is not supported") and what in message


def test_upstream_values_are_honoured():
    cfg = draccus.parse(FinetuneConfig, exit_on_error=False, args=[
        "--model_preset", "tiny", "--use_l1_regression", "True", "--use_minivlm", "True", "--use_film", "False",
        "--use_fz", "False", "--use_diffusion", "False", "--num_diffusion_steps", "50", "--phase", "Training",
        "--phase1_path", "None", "--merge_lora_during_training", "False"])
    assert cfg.save_merged_model is False  # upstream's name for the merged-model switch
    assert FinetuneConfig(model_preset="tiny", merge_lora_during_training=True).save_merged_model is True
    with pytest.raises(ValueError, match="--merge_lora_during_training True contradicts --save_merged_model False"):
        FinetuneConfig(model_preset="tiny", merge_lora_during_training=True, save_merged_model=False)
    # use_fz True = upstream's full fine-tuning = --use_lora False here
    assert FinetuneConfig(model_preset="tiny", use_fz=True, use_lora=False).use_lora is False
    with pytest.raises(ValueError, match="--use_fz True is upstream's full fine-tuning: pass --use_lora False"):
        FinetuneConfig(model_preset="tiny", use_fz=True)
    ev = draccus.parse(EvalConfig, exit_on_error=False, args=[
        "--pretrained_checkpoint", "x", "--model_family", "openvla", "--center_crop", "False", "--load_in_8bit",
        "False", "--load_in_4bit", "False", "--initial_states_path", "DEFAULT", "--save_version", "mine"])
    assert ev.center_crop is False and ev.save_version == "mine"


def test_use_pro_version_false_on_the_default_preset_selects_the_original_head(tmp_path):
    vlm = tmp_path / "vlm"
    vlm.mkdir()
    cfg = draccus.parse(FinetuneConfig, exit_on_error=False,
                        args=["--vlm_path", str(vlm), "--use_pro_version", "False"])
    assert cfg.model_preset == "vla-adapter"
    assert model_config_for(cfg).action_head.use_pro_version is False
    pro = FinetuneConfig(vlm_path=str(vlm), use_pro_version=True)
    assert pro.model_preset == "vla-adapter-pro" and model_config_for(pro).action_head.use_pro_version is True


# ---------------------------------------------------------------------------------------------------------
# seed commands 1 and 2: OpenVLA-7B is not a VLA-Adapter base
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", [SEED_BASELINE, SEED_CRAFT], ids=["baseline", "craft"])
def test_openvla_7b_commands_say_so_and_print_the_right_command(command, tmp_path):
    out = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=300,
                         env=_env(tmp_path / "hf"), cwd=_sandbox(tmp_path))
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert lines[0].startswith("error: --config_file_path openvla/openvla-7b is an OpenVLA-7B (Llama-2 7B) "
                               "checkpoint, not a VLA-Adapter base")
    assert lines[1] == "run instead:" and len(lines) == 3 and "unrecognized" not in out.stderr
    suggested = shlex.split(lines[2])
    assert suggested[:2] == ["python", "vla-scripts/finetune.py"]
    expected = ["--vlm_path", BASE_VLM_HUB_ID] + [a for a in _script_args(command)
                                                  if a not in ("--config_file_path", "openvla/openvla-7b")]
    assert suggested[2:] == expected  # everything else kept, in order
    cfg = draccus.parse(FinetuneConfig, args=suggested[2:], exit_on_error=False)  # parses: no unknown flag
    assert cfg.vlm_path == BASE_VLM_HUB_ID and cfg.config_file_path is None and cfg.use_l1_regression is True


def test_openvla_paths_replaced_in_any_spelling():
    argv = ["finetune.py", "--vlm_path=openvla/openvla-7b", "--config_file_path", "moojink/openvla-7b-oft-x",
            "--max_steps", "3"]
    assert replace_openvla_paths(argv) == ["finetune.py", "--vlm_path", BASE_VLM_HUB_ID, "--max_steps", "3"]
    keep = ["finetune.py", "--vlm_path", "pretrained_models/vlm", "--config_file_path", "openvla/openvla-7b"]
    assert replace_openvla_paths(keep) == ["finetune.py", "--vlm_path", "pretrained_models/vlm"]
    with pytest.raises(ValueError, match="--vlm_path openvla/openvla-7b-finetuned-libero-spatial is an OpenVLA-7B"):
        FinetuneConfig(vlm_path="openvla/openvla-7b-finetuned-libero-spatial")


@pytest.fixture(scope="module")
def upstream_world(tmp_path_factory):
    """Data and models where upstream's commands expect them: a synthetic `libero_spatial_no_noops` under
    data/libero and datasets/rlds, the synthetic base VLM in a hub cache (HF_HOME) and under pretrained_models/,
    tokenizer files under pretrained_models/configs, a released-layout checkpoint as outputs/LIBERO-Spatial-Pro."""
    from prismatic.models.config import get_preset
    from prismatic.models.vla import VLAAdapter
    from prismatic.vla.datasets.synthetic import ensure_synthetic_dataset
    from tests.eval.helpers import make_tiny_checkpoint
    from tests.models.hub_cache import BASE_VLM, add_base_vlm, repo_folder

    tmp = tmp_path_factory.mktemp("upstream")
    box = _sandbox(tmp)
    data = ensure_synthetic_dataset(box / "data" / "libero", name="libero_spatial_no_noops", num_tasks=2,
                                    episodes_per_task=2, image_size=64)
    (box / "datasets" / "rlds").mkdir(parents=True)
    (box / "datasets" / "rlds" / "libero_spatial_no_noops").symlink_to(data.parent)
    hf_home = tmp / "hf_home"
    add_base_vlm(hf_home / "hub", tmp, VLAAdapter(get_preset("tiny"), attn_implementation="sdpa"))
    snapshot = next((repo_folder(hf_home / "hub", BASE_VLM) / "snapshots").iterdir())
    local = box / "pretrained_models" / "prism-qwen25-extra-dinosiglip-224px-0_5b"
    shutil.copytree(snapshot, local)  # a downloaded copy (links resolved)
    (box / "pretrained_models" / "configs").mkdir()
    for f in local.iterdir():
        if f.is_file() and f.suffix in (".json", ".txt", ".model") or f.name.startswith("tokenizer"):
            shutil.copy(f, box / "pretrained_models" / "configs" / f.name)
    make_tiny_checkpoint(box / "outputs" / "LIBERO-Spatial-Pro", use_pro_version=True)
    for d in ("logs", "eval_logs"):
        (box / d).mkdir()
    return box, hf_home


@pytest.mark.slow
def test_the_printed_command_dry_runs(upstream_world):
    box, hf_home = upstream_world
    out = subprocess.run(["bash", "-c", SEED_BASELINE], capture_output=True, text=True, timeout=300,
                         env=_env(hf_home), cwd=box)
    suggested = out.stderr.strip().splitlines()[2]
    run = subprocess.run(["bash", "-c", suggested + " --dry_run True"], capture_output=True, text=True, timeout=600,
                         env=_env(hf_home), cwd=box)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "optimizer steps   0 -> 5000" in run.stdout and "models--Stanford-ILIAD" in run.stdout
    assert not (box / "runs").exists()


@pytest.mark.slow
def test_upstream_readme_training_command_dry_runs(upstream_world):
    box, hf_home = upstream_world
    out = subprocess.run(["bash", "-c", README_TRAIN], capture_output=True, text=True, timeout=600,
                         env=_env(hf_home), cwd=box)
    log = (box / "logs" / "VLA-Adapter--libero_spatial_no_noops--.log").read_text()
    assert out.returncode == 0, log[-3000:]
    assert "unrecognized" not in log and "optimizer steps   0 -> 400005" in log
    assert "pretrained_models/prism-qwen25-extra-dinosiglip-224px-0_5b" in log
    assert "\r" not in log
    assert not (box / "outputs" / "vla-adapter-pro+libero_spatial_no_noops").exists()


@pytest.mark.slow
def test_upstream_readme_eval_command_dry_runs(upstream_world):
    box, hf_home = upstream_world
    out = subprocess.run(["bash", "-c", README_EVAL], capture_output=True, text=True, timeout=600,
                         env=_env(hf_home), cwd=box)
    log = (box / "eval_logs" / "Spatial--chkpt.log").read_text()
    assert out.returncode == 0, log[-3000:]
    assert "unrecognized" not in log and "libero_spatial" in log and "outputs/LIBERO-Spatial-Pro" in log


# ---------------------------------------------------------------------------------------------------------
# seed command 3: a checkpoint directory as --config_file_path resumes that run
# ---------------------------------------------------------------------------------------------------------

def test_seed_resume_command_names_a_missing_checkpoint(tmp_path):
    out = subprocess.run(["bash", "-c", SEED_RESUME], capture_output=True, text=True, timeout=300, env=_env(),
                         cwd=_sandbox(tmp_path))
    assert out.returncode == 1 and "unrecognized" not in out.stderr
    assert out.stderr.strip() == (
        "error: --config_file_path runs/your-experiment-name--10000_chkpt does not exist: with --resume True it "
        "names the checkpoint directory of the run to continue (<run_root_dir>/<run id>--<step>_chkpt)")


def _fake_checkpoint(root: Path, run_id: str, step: int, **flags) -> Path:
    path = ckpt.checkpoint_dir(root, run_id, step)
    path.mkdir(parents=True)
    saved = FinetuneConfig(model_preset="tiny", dataset_name="libero_synthetic", **flags).to_dict()
    (path / "finetune_config.json").write_text(json.dumps(saved))
    return path


def test_checkpoint_dir_config_is_the_runs_with_the_given_flags_on_top(tmp_path):
    path = _fake_checkpoint(tmp_path / "runs", "exp", 30, batch_size=2, learning_rate=1e-3, use_craft=True,
                            run_root_dir="elsewhere", max_steps=30)
    argv = ["--config_file_path", str(path), "--resume", "True", "--resume_step", "30", "--max_steps", "60",
            "--use_craft", "True"]
    cfg = draccus.parse(FinetuneConfig, args=argv, exit_on_error=False)  # real preset, no --vlm_path: allowed
    assert given_flags(argv) == {"config_file_path", "resume", "resume_step", "max_steps", "use_craft"}
    resolved = config_for_checkpoint_dir(cfg, given_flags(argv))
    assert (resolved.model_preset, resolved.batch_size, resolved.learning_rate) == ("tiny", 2, 1e-3)  # the run's
    assert resolved.max_steps == 60 and resolved.use_craft is True  # the command's
    assert (resolved.run_root_dir, resolved.run_id_override) == (str(tmp_path / "runs"), "exp")  # the directory's
    assert resolved.resume is True and resolved.resume_step == 30 and resolved.config_file_path is None
    # upstream's --resum_vla_path names the directory the same way
    via = FinetuneConfig(model_preset="tiny", resume=True, resum_vla_path=str(path))
    assert config_for_checkpoint_dir(via, {"resum_vla_path", "resume", "model_preset"}).run_id_override == "exp"
    # a command that is not a checkpoint-directory resume is left alone
    plain = FinetuneConfig(model_preset="tiny", max_steps=5)
    assert config_for_checkpoint_dir(plain, {"max_steps"}) is plain
    with pytest.raises(ValueError, match="--resume_step 20 contradicts the checkpoint directory"):
        config_for_checkpoint_dir(draccus.parse(FinetuneConfig, exit_on_error=False, args=[
            "--config_file_path", str(path), "--resume", "True", "--resume_step", "20"]), {"resume_step"})
    with pytest.raises(ValueError, match="--resum_vla_path .* names a checkpoint to continue: pass --resume True"):
        FinetuneConfig(model_preset="tiny", resum_vla_path=str(path))
    with pytest.raises(FileNotFoundError, match="--resum_vla_path .* is not a checkpoint directory"):
        config_for_checkpoint_dir(FinetuneConfig(model_preset="tiny", resume=True, resum_vla_path=str(tmp_path)), set())


def _flags(**kw) -> list[str]:
    return [a for k, v in kw.items() for a in (f"--{k}", str(v))]


@pytest.mark.slow
def test_seed_resume_command_continues_the_run_exactly_and_logs_plain_lines(synthetic_data_root, tmp_path):
    """Seed command 3 at tiny size: a 6-step run (CLI, output to a file) is cut back to its step-2 checkpoint,
    then `--config_file_path runs/<run>--2_chkpt --resume True --resume_step 2 --max_steps 6 --use_craft True`
    continues that run (its config, its run dir) to the same weights and metrics. Neither log has a carriage
    return; the plain progress line comes every --wandb_log_freq steps (and at step 1 and the last)."""
    box = _sandbox(tmp_path)
    common = dict(model_preset="tiny", dataset_name="libero_synthetic", data_root_dir=str(synthetic_data_root),
                  device="cpu", batch_size=4, save_freq=2, shuffle_buffer_size=64, lora_rank=4, wandb_log_freq=2,
                  use_craft=True, run_id_override="your-experiment-name", max_steps=6)
    with open(tmp_path / "full.log", "w") as log:
        full = subprocess.run([sys.executable, "vla-scripts/finetune.py", *_flags(**common, run_root_dir="ref")],
                              stdout=log, stderr=subprocess.STDOUT, env=_env(), cwd=box, timeout=600)
    text = (tmp_path / "full.log").read_text()
    assert full.returncode == 0, text[-3000:]
    shutil.copytree(box / "ref", box / "runs", symlinks=True)  # the run as if stopped after its step-2 save
    for step in (4, 6):
        shutil.rmtree(ckpt.checkpoint_dir(box / "runs", "your-experiment-name", step))
    resume = ('python vla-scripts/finetune.py --config_file_path "runs/your-experiment-name--2_chkpt" --resume True '
              '--resume_step 2 --max_steps 6 --use_craft True > second.log 2>&1')
    second = subprocess.run(["bash", "-c", resume], env=_env(), cwd=box, timeout=600)
    text2 = (box / "second.log").read_text()
    assert second.returncode == 0, text2[-3000:]
    assert "resuming run your-experiment-name from runs/your-experiment-name--2_chkpt (step 2)" in text2
    for t, steps in ((text, [1, 2, 4, 6]), (text2, [4, 6])):
        assert "\r" not in t  # no tqdm frames in a log file
        assert [int(s) for s in re.findall(r"train: step (\d+)/6: Loss", t)] == steps
    assert "ETA" in text2
    assert sorted(p.name for p in (box / "runs").iterdir()) == [
        "your-experiment-name", "your-experiment-name--2_chkpt", "your-experiment-name--4_chkpt",
        "your-experiment-name--6_chkpt"]
    a = ckpt.load_checkpoint(ckpt.checkpoint_dir(box / "ref", "your-experiment-name", 6), True, False)
    b = ckpt.load_checkpoint(ckpt.checkpoint_dir(box / "runs", "your-experiment-name", 6), True, False)
    for name in ("action_head", "lora_adapter"):
        for k, v in getattr(a, name).items():
            assert torch.equal(v, getattr(b, name)[k]), f"{name}.{k}"
    assert torch.equal(a.action_queries, b.action_queries)
    rows_ref = read_metrics(box / "ref" / "your-experiment-name")
    rows = read_metrics(box / "runs" / "your-experiment-name")
    assert [r["step"] for r in rows] == [r["step"] for r in rows_ref] == [1, 2, 4, 6]
    assert [r["loss"] for r in rows] == [r["loss"] for r in rows_ref]

def test_no_progress_bar_unless_stderr_is_a_terminal(monkeypatch):
    from prismatic.training import train as train_module
    from prismatic.training.distributed import DistInfo

    main = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))

    class Stream:
        def __init__(self, tty):
            self.tty = tty

        def isatty(self):
            return self.tty

        def write(self, s):
            return len(s)

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stderr", Stream(False))
    assert train_module._progress_bar(main, 0, 10) is None  # a file / pipe: the plain lines only
    monkeypatch.setattr(sys, "stderr", Stream(True))
    bar = train_module._progress_bar(main, 0, 10)
    assert bar is not None
    bar.close()
    other = DistInfo(rank=1, local_rank=1, world_size=2, device=torch.device("cpu"))
    assert train_module._progress_bar(other, 0, 10) is None
