"""Every setting of the table drivers: its flag, its environment variable, its default, its --smoke value.

Precedence: command-line flag > environment variable > default. Under `--smoke` the smoke value
replaces both the default and the environment variable (a stray CRAFT_MAX_STEPS in a shell must not
turn the CPU smoke run into a real one); an explicit flag still wins.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
PAPER_SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10")
# Upstream's recommended steps per suite for 4 GPUs x 16 per GPU (facts §8.3, VLA-Adapter issue #35).
DEFAULT_MAX_STEPS = "libero_spatial=20000,libero_object=5000,libero_goal=50000,libero_10=60000"
# local = torchrun on this machine; slurm = one cluster job per run (and stage), each running torchrun (slurm.py)
LAUNCHERS = ("local", "torchrun", "python", "slurm")
DEVICES = ("auto", "cpu", "cuda")
WANDB_MODES = ("online", "offline", "disabled")
MODEL_PRESETS = ("vla-adapter", "vla-adapter-pro", "mid", "tiny")
_SUITE_RE = re.compile(r"^libero_[a-z0-9]+$")
_SLURM_TIME_RE = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")  # sbatch --time: MM, MM:SS, HH:MM:SS, D-HH[:MM[:SS]]
_NO_SMOKE = object()


# ---- value parsers (each raises ValueError with a message the caller prefixes with the flag/env name) ----

def _int_list(text: str) -> tuple[int, ...]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ValueError("expected a comma-separated list of integers, got an empty value")
    try:
        values = tuple(int(t) for t in items)
    except ValueError as e:
        raise ValueError(f"expected a comma-separated list of integers, got {text!r}") from e
    if len(set(values)) != len(values):
        raise ValueError(f"duplicate values in {text!r}")
    return values


def _positive_int_list(text: str) -> tuple[int, ...]:
    values = _int_list(text)
    if any(v < 1 for v in values):
        raise ValueError(f"values must be >= 1, got {text!r}")
    return values


def _suite_list(text: str) -> tuple[str, ...]:
    suites = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    if not suites:
        raise ValueError("expected at least one LIBERO suite")
    bad = [s for s in suites if not _SUITE_RE.match(s)]
    if bad:
        raise ValueError(f"not LIBERO suite names: {bad} (e.g. {','.join(PAPER_SUITES)})")
    return suites


def _name_list(text: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"must be >= 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"must be >= 0, got {value}")
    return value


def _optional_non_negative_int(text: str) -> int | None:
    return _non_negative_int(text) if text.strip() else None


def _slurm_time(text: str) -> str | None:
    if not text.strip():
        return None
    if not _SLURM_TIME_RE.match(text.strip()):
        raise ValueError(f"expected a SLURM time limit (MM, HH:MM:SS or D-HH:MM:SS), got {text!r}")
    return text.strip()


def _sbatch_lines(text: str) -> tuple[str, ...]:
    """Raw #SBATCH options separated by ';' or newlines, with or without the '#SBATCH' prefix and the leading
    '--' (`qos=high;constraint=a100`: a value starting with '--' would be taken for a flag by the shell's argparse)."""
    items = []
    for part in re.split(r"[;\n]", text):
        part = part.strip()
        if part.startswith("#SBATCH"):
            part = part[len("#SBATCH"):].strip()
        if not part:
            continue
        if not part.startswith("-"):
            part = "--" + part
        if not re.match(r"^--?[A-Za-z]", part):
            raise ValueError(f"each entry must be an sbatch option such as qos=high or --qos=high, got {part!r}")
        items.append(part)
    return tuple(items)


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError(f"must be > 0, got {value}")
    return value


def _choice(options: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in options:
            raise ValueError(f"must be one of {options}, got {text!r}")
        return text

    return parse


def _args(text: str) -> tuple[str, ...]:
    return tuple(shlex.split(text))


def _optional_str(text: str) -> str | None:
    return text or None


def parse_max_steps(text: str) -> dict[str, int] | int:
    """`N` (every suite) or `suite=N,suite=N,...`."""
    text = text.strip()
    if "=" not in text:
        return _positive_int(text)
    steps = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        suite, sep, value = part.partition("=")
        if not sep or not _SUITE_RE.match(suite.strip()):
            raise ValueError(f"expected N or suite=N[,suite=N...], got {text!r}")
        steps[suite.strip()] = _positive_int(value.strip())
    return steps


@dataclass(frozen=True)
class Setting:
    name: str  # attribute and flag name (--name)
    env: str  # environment variable
    default: str  # documented default, parsed like any user value ("" = unset)
    parse: Callable[[str], Any]
    help: str
    smoke: Any = _NO_SMOKE  # value under --smoke (a string, parsed), or _NO_SMOKE to keep the default


SETTINGS = (
    Setting("output_dir", "CRAFT_OUTPUT_DIR", "outputs/craft_experiments", Path,
            "where runs (runs/<run>/), tables (tables/) and plots (plots/) go", smoke="outputs/craft_experiments_smoke"),
    Setting("data_root_dir", "CRAFT_DATA_ROOT", "data/libero", _optional_str,
            "RLDS root holding <suite>_no_noops/ (the trainer's --data_root_dir); empty: <output_dir>/data", smoke=""),
    Setting("suites", "CRAFT_SUITES", ",".join(PAPER_SUITES), _suite_list, "comma-separated LIBERO suites",
            smoke="libero_spatial"),
    Setting("seeds", "CRAFT_SEEDS", "7,8,9", _int_list,
            "comma-separated seeds; each seeds training (--seed) and evaluation (--seed). 7 = upstream's eval seed",
            smoke="7"),
    Setting("variants", "CRAFT_VARIANTS", "", _name_list,
            "comma-separated rows of the table to run (default: all). table1: baseline,craft; table2: "
            "baseline-<N>shot,craft-<N>shot; table4: full,no_projection,no_dual,anchor_raw_only,anchor_aq_only"),
    Setting("shots", "CRAFT_SHOTS", "5,10", _positive_int_list, "table2: demonstrations per task (--n_shot_per_task)",
            smoke="2"),
    Setting("model_preset", "CRAFT_MODEL_PRESET", "vla-adapter-pro", _choice(MODEL_PRESETS), "the trainer's --model_preset",
            smoke="tiny"),
    Setting("vlm_path", "CRAFT_VLM_PATH", "", _optional_str,
            "Prismatic base VLM directory (the trainer's --vlm_path; required by the real presets)"),
    Setting("config_file_path", "CRAFT_CONFIG_FILE_PATH", "", _optional_str,
            "tokenizer/config directory (the trainer's --config_file_path; default: the trainer's)"),
    Setting("gpus_per_run", "CRAFT_GPUS_PER_RUN", "1", _positive_int, "processes (GPUs) per training run (torchrun)",
            smoke="1"),
    Setting("launcher", "CRAFT_LAUNCHER", "torchrun", _choice(LAUNCHERS),
            "torchrun or local (python -m torch.distributed.run --standalone here), python (one process here), or "
            "slurm (every run becomes cluster jobs: sbatch scripts in <run>/slurm/; see the --slurm_* flags)"),
    Setting("slurm_partition", "CRAFT_SLURM_PARTITION", "", _optional_str, "slurm: #SBATCH --partition (default: the "
            "cluster's default partition)"),
    Setting("slurm_account", "CRAFT_SLURM_ACCOUNT", "", _optional_str, "slurm: #SBATCH --account"),
    Setting("slurm_time", "CRAFT_SLURM_TIME", "", _slurm_time, "slurm: #SBATCH --time of every job (HH:MM:SS or "
            "D-HH:MM:SS; default: the partition's). A training job killed by it resumes from its last checkpoint "
            "when the driver resubmits it", smoke="00:20:00"),
    Setting("slurm_signal_lead", "CRAFT_SLURM_SIGNAL_LEAD", "300", _non_negative_int,
            "slurm: seconds before a training job's time limit at which SLURM sends it SIGTERM (#SBATCH "
            "--signal=B:TERM@S); the trainer (--save_on_sigterm True) finishes its step, saves a checkpoint and "
            "exits, so the resubmitted job loses no steps; 0 = no early signal (work since the last --save_freq "
            "checkpoint is lost at the limit)"),
    Setting("slurm_gpus_per_run", "CRAFT_SLURM_GPUS_PER_RUN", "", _optional_non_negative_int,
            "slurm: GPUs per node of a training job (#SBATCH --gres=gpu:N, torchrun --nproc_per_node N; evaluation "
            "jobs get one); 0 = a CPU job with one process (default: --gpus_per_run)", smoke="0"),
    Setting("slurm_nodes_per_run", "CRAFT_SLURM_NODES_PER_RUN", "1", _positive_int,
            "slurm: nodes per training job (> 1: srun starts torchrun on each node, c10d rendezvous on the "
            "allocation's first node)"),
    Setting("slurm_max_parallel", "CRAFT_SLURM_MAX_PARALLEL", "0", _non_negative_int,
            "slurm: at most this many runs in the queue at once (later runs wait via --dependency=afterany); "
            "0 = no limit"),
    Setting("slurm_extra", "CRAFT_SLURM_EXTRA", "", _sbatch_lines,
            "slurm: extra #SBATCH options, ';'-separated, e.g. \"qos=high;constraint=a100\" (the leading -- may be left out)"),
    Setting("slurm_poll_seconds", "CRAFT_SLURM_POLL_SECONDS", "30", _positive_float,
            "slurm: with --wait, seconds between two looks at the queue (squeue)"),
    Setting("eval_shards", "CRAFT_EVAL_SHARDS", "1", _positive_int,
            "split each evaluation's tasks over K evaluator processes (K jobs under slurm; one after another "
            "here) and merge their results"),
    Setting("device", "CRAFT_DEVICE", "auto", _choice(DEVICES), "--device of training and evaluation", smoke="cpu"),
    Setting("batch_size", "CRAFT_BATCH_SIZE", "8", _positive_int, "per-device batch size", smoke="2"),
    Setting("grad_accumulation_steps", "CRAFT_GRAD_ACCUM", "1", _positive_int, "micro-batches per optimizer step",
            smoke="1"),
    Setting("learning_rate", "CRAFT_LEARNING_RATE", "2e-4", _positive_float, "peak learning rate (VLA-Adapter recipe)"),
    Setting("lora_rank", "CRAFT_LORA_RANK", "64", _positive_int, "LoRA rank (VLA-Adapter recipe)", smoke="8"),
    Setting("max_steps", "CRAFT_MAX_STEPS", DEFAULT_MAX_STEPS, parse_max_steps,
            "optimizer steps: N, or suite=N,... (default: upstream's per-suite steps for 4 GPUs x 16; scale them to "
            "your global batch)", smoke="2"),
    Setting("save_freq", "CRAFT_SAVE_FREQ", "5000", _positive_int,
            "checkpoint period in steps (the last step is always saved)", smoke="2"),
    Setting("num_trials_per_task", "CRAFT_NUM_TRIALS", "50", _positive_int, "evaluation episodes per task", smoke="1"),
    Setting("wandb_mode", "CRAFT_WANDB_MODE", "offline", _choice(WANDB_MODES),
            "W&B mode of training (offline runs are read back for the plots)", smoke="offline"),
    Setting("wandb_project", "CRAFT_WANDB_PROJECT", "craft-experiments", str, "W&B project"),
    Setting("wandb_entity", "CRAFT_WANDB_ENTITY", "", _optional_str, "W&B entity (default: yours)"),
    Setting("finetune_args", "CRAFT_FINETUNE_ARGS", "", _args,
            "extra flags for every fine-tuning run, one shell-quoted string (placed last, so they override)"),
    Setting("craft_args", "CRAFT_CRAFT_ARGS", "", _args,
            "extra flags for CRaFT runs only, e.g. \"--craft_retention_budget 0.05\""),
    Setting("eval_args", "CRAFT_EVAL_ARGS", "", _args, "extra flags for every evaluation, e.g. \"--num_envs 4\""),
    Setting("python", "CRAFT_PYTHON", sys.executable, str, "Python interpreter of the training/evaluation processes"),
    Setting("finetune_script", "CRAFT_FINETUNE_SCRIPT", str(REPO_ROOT / "vla-scripts" / "finetune.py"), Path,
            "the fine-tuning script"),
    Setting("eval_script", "CRAFT_EVAL_SCRIPT", str(REPO_ROOT / "experiments" / "robot" / "libero" / "run_libero_eval.py"),
            Path, "the LIBERO evaluation script"),
)


@dataclass(frozen=True)
class DriverSettings:
    output_dir: Path
    data_root_dir: Path
    suites: tuple[str, ...]
    seeds: tuple[int, ...]
    variants: tuple[str, ...]
    shots: tuple[int, ...]
    model_preset: str
    vlm_path: str | None
    config_file_path: str | None
    gpus_per_run: int
    launcher: str
    device: str
    batch_size: int
    grad_accumulation_steps: int
    learning_rate: float
    lora_rank: int
    max_steps: dict[str, int] | int
    save_freq: int
    num_trials_per_task: int
    wandb_mode: str
    wandb_project: str
    wandb_entity: str | None
    finetune_args: tuple[str, ...]
    craft_args: tuple[str, ...]
    eval_args: tuple[str, ...]
    python: str
    finetune_script: Path
    eval_script: Path
    slurm_partition: str | None = None
    slurm_account: str | None = None
    slurm_time: str | None = None
    slurm_signal_lead: int = 300  # seconds before the time limit: SIGTERM to the training job (0 = none)
    slurm_gpus_per_run: int | None = None  # resolved to --gpus_per_run when not given
    slurm_nodes_per_run: int = 1
    slurm_max_parallel: int = 0
    slurm_extra: tuple[str, ...] = ()
    slurm_poll_seconds: float = 30.0
    eval_shards: int = 1
    smoke: bool = False
    dry_run: bool = False
    stage: str = "all"  # all | train | eval | collect
    quiet: bool = False
    wait: bool = False  # slurm: after submitting, wait for the jobs and collect
    # Set inside a multi-node SLURM job only (slurm.py): torchrun's (c10d endpoint host:port, rendezvous id).
    rendezvous: tuple[str, str] | None = None

    @property
    def world_size(self) -> int:
        """Training processes of one run (part of the fine-tuning fingerprint)."""
        if self.launcher == "slurm":
            return max(self.slurm_gpus_per_run or 0, 1) * self.slurm_nodes_per_run
        return self.gpus_per_run

    def max_steps_for(self, suite: str) -> int:
        if isinstance(self.max_steps, int):
            return self.max_steps
        if suite not in self.max_steps:
            raise ValueError(f"--max_steps / CRAFT_MAX_STEPS has no entry for {suite} (has {sorted(self.max_steps)})")
        return self.max_steps[suite]


STAGES = ("all", "train", "eval", "collect")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register every setting (default None: 'not given', resolved later) and the run-control flags."""
    for s in SETTINGS:
        if s.smoke is _NO_SMOKE:
            smoke = ""
        else:
            smoke = f"; --smoke: {s.smoke!r}" if s.smoke else "; --smoke: <output_dir>/data"
        parser.add_argument(f"--{s.name}", default=None, metavar=s.name.upper(),
                            help=f"{s.help} [env {s.env}; default {s.default!r}{smoke}]".replace("%", "%%"))
    parser.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                        help="print every command (and what would be skipped); run nothing, write nothing")
    parser.add_argument("--smoke", action="store_true",
                        help="the whole chain on CPU: tiny preset, generated libero_synthetic data, 2 steps, one "
                             "episode of one task with a short horizon")
    parser.add_argument("--stage", choices=STAGES, default="all",
                        help="all (default): train, evaluate, collect; train / eval: only that stage (then collect); "
                             "collect: only rebuild tables and plots from existing outputs")
    parser.add_argument("--quiet", action="store_true", help="do not echo training/evaluation output (it is always "
                        "written to <run>/logs/)")
    parser.add_argument("--wait", action="store_true",
                        help="--launcher slurm: after submitting, wait until the table's jobs have left the queue, then "
                             "collect (default: submit and return; run the command again, or with --collect_only, to "
                             "collect)")
    parser.add_argument("--collect_only", "--collect-only", dest="collect_only", action="store_true",
                        help="submit and run nothing: read the runs' state (and under slurm their jobs' state) and "
                             "rebuild tables and plots (= --stage collect)")


def resolve_settings(args: argparse.Namespace, environ: Mapping[str, str]) -> DriverSettings:
    """Flag > environment variable > default (smoke value under --smoke). Errors name the flag or variable."""
    values: dict[str, Any] = {}
    defaulted: set[str] = set()  # settings that took the default or the smoke value
    for s in SETTINGS:
        given = getattr(args, s.name)
        if given is not None:
            raw, origin = given, f"--{s.name}"
        elif args.smoke and s.smoke is not _NO_SMOKE:
            raw, origin = s.smoke, f"the --smoke value of --{s.name}"
        elif s.env in environ:
            raw, origin = environ[s.env], f"environment variable {s.env}"
        else:
            raw, origin = s.default, f"the default of --{s.name}"
        if origin.startswith(("the default", "the --smoke value")):
            defaulted.add(s.name)
        try:
            values[s.name] = s.parse(raw)
        except ValueError as e:
            raise ValueError(f"{origin}={raw!r}: {e}") from e
    # A relative path the user gave is relative to the working directory; the defaults are relative to the
    # repository, so `cd craft_experiments/01_main_results && bash run_table1_experiments.sh` uses the same
    # outputs/ and data/ as a call from the repository root.
    def location(name: str, raw: str) -> Path:
        path = Path(raw).expanduser()
        return (REPO_ROOT / path if name in defaulted else path).resolve()

    output_dir = location("output_dir", str(values["output_dir"]))
    data_root = values["data_root_dir"]
    values["output_dir"] = output_dir
    values["data_root_dir"] = location("data_root_dir", data_root) if data_root else output_dir / "data"
    for key in ("finetune_script", "eval_script"):
        values[key] = Path(values[key]).expanduser().resolve()
    if values["launcher"] == "local":
        values["launcher"] = "torchrun"
    if values["slurm_gpus_per_run"] is None:
        values["slurm_gpus_per_run"] = values["gpus_per_run"]
    stage = "collect" if args.collect_only else args.stage
    if args.collect_only and args.stage not in ("all", "collect"):
        raise ValueError(f"--collect_only contradicts --stage {args.stage}")
    if values["launcher"] != "slurm":
        given = [f"--{s.name}" for s in SETTINGS if s.name.startswith("slurm_") and getattr(args, s.name) is not None]
        if args.wait:
            given.append("--wait")
        if given:
            raise ValueError(f"{', '.join(given)} only apply to --launcher slurm (the launcher is {values['launcher']})")
    settings = DriverSettings(**values, smoke=args.smoke, dry_run=args.dry_run, stage=stage, quiet=args.quiet,
                              wait=args.wait)
    if settings.wait and stage == "collect":
        raise ValueError("--wait submits and waits; --collect_only / --stage collect submits nothing: choose one")
    if settings.launcher == "python" and settings.gpus_per_run != 1:
        raise ValueError(f"--launcher python runs one process; --gpus_per_run is {settings.gpus_per_run} "
                         "(use --launcher torchrun)")
    if settings.stage != "collect":
        for suite in settings.suites:
            settings.max_steps_for(suite)
    return settings
