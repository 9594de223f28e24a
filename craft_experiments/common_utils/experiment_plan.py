"""The paper's tables as data, and the pure functions that turn them into runs and commands.

A table is a list of rows; a row is a label plus a `Variant` (the fine-tuning flags that define it).
Variants with the same key are the same experiment: Table 4's "full CRaFT" row IS Table 1's CRaFT run,
so a run directory is keyed by variant, suite and seed, not by table, and is trained once:

    <output_dir>/runs/<variant>--<suite>--seed<k>/
        run.json              what the run is (variant, suite, seed) + the fine-tuning fingerprint
        train/                the trainer's --run_root_dir: <run>--<step>_chkpt/, <run>/ (metrics, W&B)
        eval/                 the evaluator's --local_log_dir: EVAL-<suite>-vla-<fp>--<variant>--seed<k>/
        logs/train.log, logs/eval.log    everything the subprocesses printed (appended per attempt)
        TRAINING_DONE.json, RESULT.json, FAILURE.json    bookkeeping (run_state.py)

Nothing here touches the disk or runs anything: these functions are what --dry-run prints and what the
tests check.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from craft_experiments.common_utils.driver_settings import DriverSettings

SMOKE_DATASET = "libero_synthetic"
# Under --smoke: the trainer generates the dataset on first use; a small shuffle buffer keeps it fast.
SMOKE_FINETUNE_FLAGS = (("create_synthetic_dataset", "True"), ("shuffle_buffer_size", "256"),
                        ("wandb_log_freq", "1"), ("craft_log_freq", "1"))
# Under --smoke: one task, a short horizon, no videos (EvalConfig flags).
SMOKE_EVAL_FLAGS = (("task_ids", "[0]"), ("max_steps", "8"), ("save_videos", "none"))
# Flags that say where things go or how they are logged, not what is trained: left out of the fingerprint
# so an output directory can be moved and W&B switched on later without invalidating finished runs.
# Tasks per LIBERO suite (LIBERO's benchmark definitions), for --eval_shards; under --smoke the evaluation
# runs one task per shard (tasks 0..K-1).
SUITE_TASK_COUNTS = {"libero_spatial": 10, "libero_object": 10, "libero_goal": 10, "libero_10": 10, "libero_90": 90}
_NOT_FINGERPRINTED = {"data_root_dir", "run_root_dir", "run_id_override", "wandb_mode", "wandb_project",
                      "wandb_entity", "vlm_path", "config_file_path", "device", "resume"}


@dataclass(frozen=True)
class Variant:
    key: str  # run-directory key: one key, one fine-tuning configuration
    use_craft: bool
    flags: tuple[tuple[str, str], ...] = ()  # extra trainer flags defining the variant


@dataclass(frozen=True)
class Row:
    name: str  # selects the row with --variants
    label: str  # row label in tables and plots
    variant: Variant


@dataclass(frozen=True)
class TableSpec:
    name: str
    title: str
    rows: Callable[[DriverSettings], tuple[Row, ...]]


BASELINE = Variant("baseline", use_craft=False)
CRAFT = Variant("craft", use_craft=True)


def _table1_rows(settings: DriverSettings) -> tuple[Row, ...]:
    return (Row("baseline", "VLA-Adapter", BASELINE), Row("craft", "VLA-Adapter + CRaFT", CRAFT))


def _table2_rows(settings: DriverSettings) -> tuple[Row, ...]:
    rows = []
    for n in settings.shots:
        shot = (("n_shot_per_task", str(n)),)
        rows.append(Row(f"baseline-{n}shot", f"VLA-Adapter, {n}-shot", Variant(f"baseline-{n}shot", False, shot)))
        rows.append(Row(f"craft-{n}shot", f"VLA-Adapter + CRaFT, {n}-shot", Variant(f"craft-{n}shot", True, shot)))
    return tuple(rows)


def _table4_rows(settings: DriverSettings) -> tuple[Row, ...]:
    return (
        Row("full", "CRaFT (full)", CRAFT),
        Row("no_projection", "w/o gradient projection",
            Variant("craft-no_projection", True, (("craft_enable_projection", "False"),))),
        Row("no_dual", "w/o dual ascent (fixed λ)", Variant("craft-no_dual", True, (("craft_enable_dual", "False"),))),
        Row("anchor_raw_only", "anchor C_R only", Variant("craft-anchor_raw_only", True, (("craft_anchor_type", "raw_only"),))),
        Row("anchor_aq_only", "anchor C_AQ only", Variant("craft-anchor_aq_only", True, (("craft_anchor_type", "aq_only"),))),
    )


TABLES: dict[str, TableSpec] = {
    "table1": TableSpec("table1", "Table 1: LIBERO success rate (%), baseline vs CRaFT", _table1_rows),
    "table2": TableSpec("table2", "Table 2: few-shot LIBERO success rate (%), N demonstrations per task", _table2_rows),
    "table4": TableSpec("table4", "Table 4: CRaFT ablations, LIBERO success rate (%)", _table4_rows),
}


def select_rows(table: TableSpec, settings: DriverSettings) -> tuple[Row, ...]:
    rows = table.rows(settings)
    if not settings.variants:
        return rows
    known = {r.name: r for r in rows}
    unknown = [v for v in settings.variants if v not in known]
    if unknown:
        raise ValueError(f"--variants / CRAFT_VARIANTS: {unknown} are not rows of {table.name}; choose from {list(known)}")
    return tuple(known[v] for v in settings.variants)


@dataclass(frozen=True)
class PlannedRun:
    table: str
    row: Row
    suite: str
    seed: int
    dataset_name: str
    max_steps: int
    run_dir: Path

    @property
    def name(self) -> str:
        return run_name(self.row.variant, self.suite, self.seed)

    @property
    def train_root(self) -> Path:
        return self.run_dir / "train"

    @property
    def eval_root(self) -> Path:
        return self.run_dir / "eval"

    @property
    def logs_dir(self) -> Path:
        return self.run_dir / "logs"

    @property
    def final_checkpoint(self) -> Path:
        """Where the trainer puts the last checkpoint (it always saves the last step; the run id is ours)."""
        return self.train_root / f"{self.name}--{self.max_steps}_chkpt"


def run_name(variant: Variant, suite: str, seed: int) -> str:
    return f"{variant.key}--{suite}--seed{seed}"


def dataset_name(suite: str, settings: DriverSettings) -> str:
    return SMOKE_DATASET if settings.smoke else f"{suite}_no_noops"


def plan_runs(table: TableSpec, settings: DriverSettings) -> list[PlannedRun]:
    """Seed-major order: the first seed of every cell finishes before the second starts, so a complete
    one-seed table exists as early as possible."""
    rows = select_rows(table, settings)
    return [
        PlannedRun(table.name, row, suite, seed, dataset_name(suite, settings), settings.max_steps_for(suite),
                   settings.output_dir / "runs" / run_name(row.variant, suite, seed))
        for seed in settings.seeds for suite in settings.suites for row in rows
    ]


# ---- commands ----

@dataclass(frozen=True)
class Command:
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]  # added to the driver's environment (the runner also puts the repo on PYTHONPATH)
    log_path: Path

    def display(self) -> str:
        """A copy-pasteable line for this platform."""
        if os.name == "nt":
            prefix = "".join(f"$env:{k}='{v}'; " for k, v in self.env)
            return prefix + subprocess.list2cmdline(self.argv)
        return "".join(f"{k}={shlex.quote(v)} " for k, v in self.env) + shlex.join(self.argv)


def _flags_to_argv(flags: list[tuple[str, str]]) -> list[str]:
    return [item for name, value in flags for item in (f"--{name}", value)]


def finetune_flags(run: PlannedRun, settings: DriverSettings) -> list[tuple[str, str]]:
    """The trainer flags (draccus `--name value`) of one run, in a fixed order; extra args come after."""
    s = settings
    flags = [("model_preset", s.model_preset)]
    if s.vlm_path:
        flags.append(("vlm_path", s.vlm_path))
    if s.config_file_path:
        flags.append(("config_file_path", s.config_file_path))
    flags += [
        ("data_root_dir", str(s.data_root_dir)), ("dataset_name", run.dataset_name),
        ("run_root_dir", str(run.train_root)), ("run_id_override", run.name),
        ("batch_size", str(s.batch_size)), ("grad_accumulation_steps", str(s.grad_accumulation_steps)),
        ("learning_rate", repr(s.learning_rate)), ("lora_rank", str(s.lora_rank)),
        ("max_steps", str(run.max_steps)), ("save_freq", str(min(s.save_freq, run.max_steps))),
        ("seed", str(run.seed)), ("device", s.device),
        ("wandb_mode", s.wandb_mode), ("wandb_project", s.wandb_project),
    ]
    if s.wandb_entity:
        flags.append(("wandb_entity", s.wandb_entity))
    flags.append(("use_craft", str(run.row.variant.use_craft)))
    flags += list(run.row.variant.flags)
    if s.smoke:
        flags += list(SMOKE_FINETUNE_FLAGS)
    return flags


def _extra_finetune_args(run: PlannedRun, settings: DriverSettings) -> list[str]:
    return list(settings.finetune_args) + (list(settings.craft_args) if run.row.variant.use_craft else [])


def finetune_fingerprint(run: PlannedRun, settings: DriverSettings) -> dict:
    """What defines the trained model: flags minus locations/logging, extra args, and the world size."""
    return {
        "flags": [[k, v] for k, v in finetune_flags(run, settings) if k not in _NOT_FINGERPRINTED],
        "extra_args": _extra_finetune_args(run, settings),
        "world_size": settings.world_size,
    }


RDZV_PORT = 29500  # torchrun's c10d rendezvous port on the first node of a multi-node SLURM allocation


def _launcher_argv(settings: DriverSettings, script: Path) -> list[str]:
    if settings.launcher == "slurm":  # inside a SLURM job (slurm.py): this allocation's GPUs / nodes
        nproc, nodes = str(max(settings.slurm_gpus_per_run or 0, 1)), settings.slurm_nodes_per_run
        if nodes == 1:
            return [settings.python, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
                    "--nproc_per_node", nproc, str(script)]
        endpoint, rdzv_id = settings.rendezvous or ("$CRAFT_RDZV_ENDPOINT", "$SLURM_JOB_ID")  # dry run: placeholders
        return ["srun", "--nodes", str(nodes), "--ntasks-per-node", "1", "--kill-on-bad-exit=1",
                settings.python, "-m", "torch.distributed.run", "--nnodes", str(nodes), "--nproc_per_node", nproc,
                "--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint, "--rdzv_id", rdzv_id, str(script)]
    if settings.launcher == "torchrun":
        return [settings.python, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
                "--nproc_per_node", str(settings.gpus_per_run), str(script)]
    return [settings.python, str(script)]


def _child_env(settings: DriverSettings) -> tuple[tuple[str, str], ...]:
    # --smoke is a CPU run by definition: hide any GPU from training and evaluation alike.
    return (("CUDA_VISIBLE_DEVICES", ""),) if settings.smoke else ()


def build_finetune_command(run: PlannedRun, settings: DriverSettings, resume: bool) -> Command:
    argv = _launcher_argv(settings, settings.finetune_script) + _flags_to_argv(finetune_flags(run, settings))
    argv += _extra_finetune_args(run, settings)
    if settings.launcher == "slurm" and settings.slurm_signal_lead > 0:
        # SLURM sends SIGTERM --slurm_signal_lead seconds before the time limit (slurm.sbatch_options): finish the
        # step and save it, so that the resubmitted job resumes exactly there. Not part of the fingerprint.
        argv += ["--save_on_sigterm", "True"]
    if resume:
        argv += ["--resume", "True"]
    return Command(tuple(argv), _child_env(settings), run.logs_dir / "train.log")


def _task_list(task_ids: tuple[int, ...]) -> str:
    return "[" + ",".join(map(str, task_ids)) + "]"


def evaluation_tasks(run: PlannedRun, settings: DriverSettings) -> tuple[int, ...]:
    """The task ids an evaluation of `run` covers when it is split into --eval_shards shards."""
    if settings.smoke:
        return tuple(range(settings.eval_shards))
    if run.suite not in SUITE_TASK_COUNTS:
        raise ValueError(f"--eval_shards {settings.eval_shards}: the number of tasks of {run.suite} is not known "
                         f"(known: {sorted(SUITE_TASK_COUNTS)}); use --eval_shards 1")
    return tuple(range(SUITE_TASK_COUNTS[run.suite]))


def shard_tasks(run: PlannedRun, settings: DriverSettings, shard: int) -> tuple[int, ...]:
    """Tasks of shard `shard` (0-based) of `settings.eval_shards`: every K-th task, so shards are disjoint,
    together cover the suite, and differ in size by at most one."""
    tasks = evaluation_tasks(run, settings)
    if settings.eval_shards > len(tasks):
        raise ValueError(f"--eval_shards {settings.eval_shards} is more than the {len(tasks)} tasks of {run.suite}")
    return tasks[shard::settings.eval_shards]


def check_eval_sharding(settings: DriverSettings) -> None:
    if settings.eval_shards > 1 and any(a == "--task_ids" or a.startswith("--task_ids=") for a in settings.eval_args):
        raise ValueError("--eval_shards splits the suite's tasks itself; remove --task_ids from --eval_args")


def eval_flags(run: PlannedRun, settings: DriverSettings, checkpoint: Path | str,
               shard: int | None = None) -> list[tuple[str, str]]:
    """The evaluator's flags; with `shard`, of that shard only (its tasks as --task_ids)."""
    flags = [
        ("pretrained_checkpoint", str(checkpoint)), ("task_suite_name", run.suite),
        ("num_trials_per_task", str(settings.num_trials_per_task)), ("seed", str(run.seed)),
        ("unnorm_key", run.dataset_name), ("device", settings.device), ("local_log_dir", str(run.eval_root)),
    ]
    if settings.smoke:
        flags += [(k, _task_list(evaluation_tasks(run, settings)) if k == "task_ids" else v)
                  for k, v in SMOKE_EVAL_FLAGS]
    if shard is not None:
        tasks = _task_list(shard_tasks(run, settings, shard))
        flags = [f for f in flags if f[0] != "task_ids"] + [("task_ids", tasks)]
    return flags


def eval_fingerprint(run: PlannedRun, settings: DriverSettings, checkpoint: Path | str) -> dict:
    """What defines an evaluation: the checkpoint (by name), the protocol flags and the extra args. The same
    for a whole evaluation and for one split into shards (a merged sharded result is that evaluation)."""
    flags = [[k, Path(v).name if k == "pretrained_checkpoint" else v]
             for k, v in eval_flags(run, settings, checkpoint) if k not in ("local_log_dir", "device")]
    return {"flags": flags, "extra_args": list(settings.eval_args)}


def fingerprint_hash(fingerprint: dict) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:10]


def shard_label(shard: int, shards: int) -> str:
    return f"shard{shard + 1}of{shards}"


def eval_run_id(run: PlannedRun, settings: DriverSettings, checkpoint: Path | str, shard: int | None = None) -> str:
    """The evaluator's run directory name. Deterministic, so an interrupted evaluation resumes; it
    carries the fingerprint, so a different protocol or checkpoint gets its own directory (and each shard
    of a sharded evaluation its own)."""
    fp = fingerprint_hash(eval_fingerprint(run, settings, checkpoint))
    suffix = f"--{shard_label(shard, settings.eval_shards)}" if shard is not None else ""
    return f"EVAL-{run.suite}-vla-{fp}--{run.row.variant.key}--seed{run.seed}{suffix}"


def build_eval_command(run: PlannedRun, settings: DriverSettings, checkpoint: Path | str,
                       shard: int | None = None) -> Command:
    argv = [settings.python, str(settings.eval_script)]
    argv += _flags_to_argv(eval_flags(run, settings, checkpoint, shard)
                           + [("run_id", eval_run_id(run, settings, checkpoint, shard))])
    argv += list(settings.eval_args)
    log = "eval.log" if shard is None else f"eval-{shard_label(shard, settings.eval_shards)}.log"
    return Command(tuple(argv), _child_env(settings), run.logs_dir / log)
