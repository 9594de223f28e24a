"""The table drivers: plan -> train -> evaluate -> collect, idempotent and resumable.

    python -m craft_experiments.common_utils.experiments table1 [flags]   # or craft_experiments/01_*/run_*.sh
    python -m craft_experiments.common_utils.experiments table1 --dry-run
    python -m craft_experiments.common_utils.experiments table1 --smoke   # the whole chain on CPU, minutes

For every run of the table (row x suite x seed, seed-major):
  1. train   `torchrun vla-scripts/finetune.py ...` into <run>/train/ unless TRAINING_DONE.json (or a
             checkpoint at max_steps) is there; an interrupted run (checkpoints, no marker) continues
             with `--resume True`. Exit code != 0: TRAINING_FAILED; no final checkpoint: NO_CHECKPOINT.
  2. eval    `run_libero_eval.py --pretrained_checkpoint <latest> ...` unless RESULT.json holds a
             result for this checkpoint and protocol. The evaluator's run id is deterministic, so an
             interrupted evaluation resumes. Exit code != 0: EVAL_FAILED; no finished result in its
             outputs: PARSE_FAILED.
  3. collect tables and plots from every RESULT.json of the table (collect.py).
A failed run is recorded (FAILURE.json, the summary) and the driver goes on with the next one;
running the same command again retries exactly the runs that are not done. SIGTERM / SIGINT are forwarded to
the running child's process group; the driver waits for it, releases the run's lock and exits 143 / 130.
With --launcher slurm each run becomes a train job and dependent eval job(s) instead, with the same
bookkeeping inside the jobs (slurm.py); --wait waits for them, --collect_only only collects.
Exit code: 0 when nothing failed, 1 when a run or the collection failed, 2 for bad settings.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from craft_experiments.common_utils.collect import Collected, collect_table
from craft_experiments.common_utils.driver_settings import REPO_ROOT, DriverSettings, add_arguments, resolve_settings
from craft_experiments.common_utils.experiment_plan import (
    TABLES,
    Command,
    PlannedRun,
    build_eval_command,
    build_finetune_command,
    check_eval_sharding,
    eval_fingerprint,
    eval_run_id,
    finetune_fingerprint,
    plan_runs,
    select_rows,
    shard_label,
    shard_tasks,
)
from craft_experiments.common_utils.log_parser import EvalParseError, find_latest_checkpoint, parse_eval_dir
from craft_experiments.common_utils.run_state import (
    FAILURE,
    LOCK,
    RESULT,
    RUN_INFO,
    TRAINING_DONE,
    RunLock,
    RunLocked,
    Status,
    check_run_info,
    clear_failure,
    now,
    read_json,
    record_failure,
    shard_result_name,
    write_json_atomic,
)

Runner = Callable[[Command], int]  # runs a command to completion, returns its exit code
ATTEMPT_HEADER = "===== attempt "  # starts each attempt's section in logs/train.log and logs/eval.log


def child_environment(command: Command, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The driver's environment + the command's additions, with the repository first on PYTHONPATH (the
    scripts import `prismatic` even when the project is not pip-installed)."""
    env = dict(os.environ if base is None else base)
    env.update(command.env)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


class Interrupted(Exception):
    """The driver got SIGTERM / SIGINT; the running child has been stopped and waited for."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
KILL_GRACE_SECONDS = 60.0  # after forwarding a stop signal, the child's group gets SIGKILL if still running


def _killpg(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


class SubprocessRunner:
    """Runs a command, appending everything it prints to its log (and echoing it unless quiet).

    The child runs in its own process group (torchrun and its workers, the evaluator and its simulator
    workers). SIGTERM / SIGINT to the driver are forwarded to that whole group; the driver waits for it
    (SIGKILL after KILL_GRACE_SECONDS), notes it in the log and raises Interrupted, so the run's lock is
    released on the way out and nothing is left running."""

    def __init__(self, echo: bool = True, kill_grace: float = KILL_GRACE_SECONDS):
        self.echo = echo
        self.kill_grace = kill_grace

    def __call__(self, command: Command) -> int:
        command.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(command.log_path, "ab") as log:
            log.write(f"\n{ATTEMPT_HEADER}{now()} $ {command.display()}\n".encode())
            log.flush()
            try:
                proc = subprocess.Popen(command.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        env=child_environment(command), start_new_session=True)
            except OSError as e:
                message = f"could not start {command.argv[0]}: {e}\n"
                log.write(message.encode())
                sys.stderr.write(message)
                return 127
            received: list[int] = []
            timers: list[threading.Timer] = []

            def forward(signum, frame):
                received.append(signum)
                _killpg(proc.pid, signum)
                if not timers:
                    timers.append(threading.Timer(self.kill_grace, _killpg, (proc.pid, signal.SIGKILL)))
                    timers[0].daemon = True
                    timers[0].start()

            in_main_thread = threading.current_thread() is threading.main_thread()
            previous = {sig: signal.signal(sig, forward) for sig in STOP_SIGNALS} if in_main_thread else {}
            try:
                while chunk := proc.stdout.read1(1 << 16):
                    log.write(chunk)
                    log.flush()
                    if self.echo:
                        _echo(chunk)
                code = proc.wait()
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
                for timer in timers:
                    timer.cancel()
            if received:
                _killpg(proc.pid, signal.SIGKILL)  # stragglers of the group (e.g. simulator workers)
                name = signal.Signals(received[0]).name
                note = (f"\n===== stopped by {name}: forwarded to the process group {proc.pid}, which exited with "
                        f"code {code}; run the same command again to continue\n")
                log.write(note.encode())
                raise Interrupted(received[0])
            return code


def _echo(chunk: bytes) -> None:
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is not None:
        buffer.write(chunk)
    else:
        sys.stdout.write(chunk.decode(errors="replace"))
    sys.stdout.flush()


@dataclass
class RunOutcome:
    run: PlannedRun
    train: Status = Status.PENDING
    eval: Status = Status.PENDING
    message: str = ""
    checkpoint: str | None = None
    success_rate: float | None = None
    notes: list[str] = field(default_factory=list)  # things the driver did on the way (a stale lock taken over)

    @property
    def status(self) -> Status:
        """The run's overall status: its failure if any, else its evaluation's status."""
        for s in (self.train, self.eval):
            if s.is_failure or s is Status.LOCKED:
                return s
        return self.eval if self.train in (Status.OK, Status.DONE) else self.train


def run_info(run: PlannedRun, settings: DriverSettings) -> dict:
    return {"run": run.name, "variant": run.row.variant.key, "suite": run.suite, "seed": run.seed,
            "dataset_name": run.dataset_name, "finetune_fingerprint": finetune_fingerprint(run, settings)}


_EXCEPTION_LINE = re.compile(r"^(?:[\w.]+\.)?\w*(?:Error|Exception|Interrupt)\b.*")


def last_error_line(log_path: Path) -> str:
    """': <the last exception line of the latest attempt in the log>' (torchrun's own wrapper exception
    excluded, it only says that a child failed), or '' if there is none."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return ""
    attempt = text.rsplit(ATTEMPT_HEADER, 1)[-1]
    lines = [ln.strip() for ln in attempt.splitlines()
             if _EXCEPTION_LINE.match(ln.strip()) and "ChildFailedError" not in ln]
    return f": {lines[-1][:300]}" if lines else ""


def _fail(outcome: RunOutcome, stage: str, status: Status, message: str, log: Path | None) -> RunOutcome:
    setattr(outcome, stage, status)
    outcome.message = message
    record_failure(outcome.run.run_dir, status, message, log)
    return outcome


def _finished_checkpoint(run: PlannedRun) -> Path | None:
    """The final checkpoint if training is done (marker, or a checkpoint at max_steps), else None."""
    done = read_json(run.run_dir / TRAINING_DONE)
    if done is not None and Path(done["checkpoint"]).is_dir():
        return Path(done["checkpoint"])
    latest = find_latest_checkpoint(run.train_root)
    if latest is not None and latest[0] >= run.max_steps:
        return latest[1]
    return None


def _train(run: PlannedRun, settings: DriverSettings, runner: Runner, outcome: RunOutcome) -> Path | None:
    checkpoint = _finished_checkpoint(run)
    if checkpoint is not None:
        outcome.train = Status.DONE
        if not (run.run_dir / TRAINING_DONE).is_file():  # finished, but the driver died before the marker
            write_json_atomic(run.run_dir / TRAINING_DONE, {"checkpoint": str(checkpoint), "at": now()})
    elif settings.stage not in ("all", "train"):
        outcome.message = "not trained yet"
        return None
    else:
        command = build_finetune_command(run, settings, resume=find_latest_checkpoint(run.train_root) is not None)
        code = runner(command)
        if code != 0:
            _fail(outcome, "train", Status.TRAINING_FAILED, f"the trainer exited with code {code}"
                  f"{last_error_line(command.log_path)}; see {command.log_path}", command.log_path)
            return None
        latest = find_latest_checkpoint(run.train_root)
        if latest is None or latest[0] < run.max_steps:
            found = f"the latest is {latest[1].name}" if latest else "there is none"
            _fail(outcome, "train", Status.NO_CHECKPOINT, f"the trainer exited 0 but left no checkpoint at step "
                  f"{run.max_steps} in {run.train_root} ({found})", command.log_path)
            return None
        checkpoint = latest[1]
        outcome.train = Status.OK
        write_json_atomic(run.run_dir / TRAINING_DONE, {"checkpoint": str(checkpoint), "at": now()})
    outcome.checkpoint = str(checkpoint)
    return checkpoint


def _run_evaluator(run: PlannedRun, settings: DriverSettings, runner: Runner, outcome: RunOutcome, checkpoint: Path,
                   shard: int | None) -> dict | None:
    """One evaluator process (the whole evaluation, or one shard); its parsed result, or None (recorded)."""
    command = build_eval_command(run, settings, checkpoint, shard)
    what = "the evaluator" if shard is None else f"the evaluator of {shard_label(shard, settings.eval_shards)}"
    code = runner(command)
    if code != 0:
        _fail(outcome, "eval", Status.EVAL_FAILED, f"{what} exited with code {code}"
              f"{last_error_line(command.log_path)}; see {command.log_path}", command.log_path)
        return None
    eval_dir = run.eval_root / eval_run_id(run, settings, checkpoint, shard)
    try:
        result = parse_eval_dir(eval_dir)
        if result.suite is not None and result.suite != run.suite:
            raise EvalParseError(f"{result.source} is an evaluation of {result.suite}, expected {run.suite}")
    except EvalParseError as e:
        _fail(outcome, "eval", Status.PARSE_FAILED, str(e), command.log_path)
        return None
    return {**result.to_dict(), "checkpoint": str(checkpoint), "eval_dir": str(eval_dir),
            "eval_fingerprint": eval_fingerprint(run, settings, checkpoint), "at": now()}


def merge_shard_results(shards: list[dict], expected_tasks: list[tuple[int, ...]]) -> dict:
    """One evaluation's result from its K shard results (shard i evaluated expected_tasks[i]). Each task is
    counted once: the shards' task ids must be exactly the expected disjoint sets, and no task description
    may appear in two shards. Raises ValueError naming the shard otherwise."""
    seen_ids: set[int] = set()
    seen_tasks: dict[str, int] = {}
    episodes = successes = 0
    tasks = []
    for i, (shard, expected) in enumerate(zip(shards, expected_tasks, strict=True)):
        ids = tuple(shard["task_ids"])
        if ids != tuple(expected):
            raise ValueError(f"shard {i + 1}: evaluated tasks {list(ids)}, expected {list(expected)}")
        if seen_ids & set(ids):
            raise ValueError(f"shard {i + 1}: tasks {sorted(seen_ids & set(ids))} are in an earlier shard too")
        seen_ids |= set(ids)
        for task in shard["tasks"]:
            if task["task"] in seen_tasks:
                raise ValueError(f"shard {i + 1}: task {task['task']!r} was evaluated by shard {seen_tasks[task['task']]} "
                                 "too; it would be counted twice")
            seen_tasks[task["task"]] = i + 1
        tasks += shard["tasks"]
        episodes += int(shard["episodes"])
        successes += int(shard["successes"])
    if episodes == 0:
        raise ValueError("the shards hold no episodes")
    first = shards[0]
    return {"source": [s["source"] for s in shards], "suite": first["suite"], "episodes": episodes,
            "successes": successes, "success_rate": successes / episodes, "tasks": tasks,
            "checkpoint": first["checkpoint"], "eval_dir": [s["eval_dir"] for s in shards],
            "eval_fingerprint": first["eval_fingerprint"], "shards": len(shards), "at": now()}


def merge_shards_if_complete(run: PlannedRun, settings: DriverSettings, checkpoint: Path) -> dict | None:
    """RESULT.json from the shard results when all K exist for this evaluation (written, and returned);
    None while some are missing. An inconsistent set is an error (EvalParseError names the problem)."""
    fingerprint = eval_fingerprint(run, settings, checkpoint)
    k = settings.eval_shards
    shards = [read_json(run.run_dir / shard_result_name(i, k)) for i in range(k)]
    if any(sh is None or sh.get("eval_fingerprint") != fingerprint for sh in shards):
        return None
    try:
        merged = merge_shard_results(shards, [shard_tasks(run, settings, i) for i in range(k)])
    except (ValueError, KeyError, TypeError) as e:
        raise EvalParseError(f"{run.run_dir}: the {k} shard results cannot be merged: {e}") from e
    write_json_atomic(run.run_dir / RESULT, merged)
    return merged


def _evaluate(run: PlannedRun, settings: DriverSettings, runner: Runner, outcome: RunOutcome, checkpoint: Path,
              shards: tuple[int, ...] | None = None) -> None:
    """Evaluate (every shard, or only `shards` of them: a SLURM shard job) unless a result for this checkpoint and
    protocol exists; with several shards the result is their merge, written once all of them are in."""
    fingerprint = eval_fingerprint(run, settings, checkpoint)
    previous = read_json(run.run_dir / RESULT)
    if previous is not None and previous.get("eval_fingerprint") == fingerprint:
        outcome.eval, outcome.success_rate = Status.DONE, float(previous["success_rate"])
        return
    if settings.stage not in ("all", "eval"):
        outcome.message = f"trained; not evaluated (--stage {settings.stage})"
        return
    k = settings.eval_shards
    if k == 1:
        result = _run_evaluator(run, settings, runner, outcome, checkpoint, None)
        if result is not None:
            write_json_atomic(run.run_dir / RESULT, result)
            outcome.eval, outcome.success_rate = Status.OK, result["success_rate"]
        return
    for shard in shards if shards is not None else range(k):
        path = run.run_dir / shard_result_name(shard, k)
        done = read_json(path)
        if done is not None and done.get("eval_fingerprint") == fingerprint:
            continue
        result = _run_evaluator(run, settings, runner, outcome, checkpoint, shard)
        if result is None:
            return
        write_json_atomic(path, {**result, "shard": shard, "task_ids": list(shard_tasks(run, settings, shard))})
    try:
        merged = merge_shards_if_complete(run, settings, checkpoint)
    except EvalParseError as e:
        _fail(outcome, "eval", Status.PARSE_FAILED, str(e), None)
        return
    if merged is None:
        outcome.message = f"evaluated {', '.join(shard_label(i, k) for i in shards or ())}; other shards pending"
        return
    outcome.eval, outcome.success_rate = Status.OK, merged["success_rate"]


def execute_run(run: PlannedRun, settings: DriverSettings, runner: Runner, shards: tuple[int, ...] | None = None,
                lock_name: str = LOCK) -> RunOutcome:
    """Train and evaluate one run as far as `settings.stage` allows, skipping what is done (`shards`: only
    these evaluation shards; `lock_name`: the lock file, one per SLURM shard job so shards run in parallel)."""
    outcome = RunOutcome(run)
    info = run_info(run, settings)
    mismatch = check_run_info(run.run_dir, info)
    if mismatch is not None:
        outcome.train, outcome.message = Status.CONFIG_MISMATCH, mismatch
        return outcome
    lock = RunLock(run.run_dir, lock_name)
    try:
        with lock:
            if lock.took_over:
                outcome.notes.append(lock.took_over)
            if read_json(run.run_dir / RUN_INFO) is None:
                write_json_atomic(run.run_dir / RUN_INFO, info)
            checkpoint = _train(run, settings, runner, outcome)
            if checkpoint is not None:
                _evaluate(run, settings, runner, outcome, checkpoint, shards)
            if not (outcome.train.is_failure or outcome.eval.is_failure):
                clear_failure(run.run_dir)
    except RunLocked as e:
        outcome.train, outcome.message = Status.LOCKED, str(e)
    except Interrupted as e:
        e.outcome = outcome
        raise
    return outcome


def outcome_from_disk(run: PlannedRun) -> RunOutcome:
    """What the run's markers say (for --stage collect, which runs nothing)."""
    outcome = RunOutcome(run)
    if (checkpoint := _finished_checkpoint(run)) is not None:
        outcome.train, outcome.checkpoint = Status.DONE, str(checkpoint)
    if (result := read_json(run.run_dir / RESULT)) is not None:
        outcome.eval, outcome.success_rate = Status.DONE, float(result["success_rate"])
    if (failure := read_json(run.run_dir / FAILURE)) is not None:
        status = Status(failure["status"])
        setattr(outcome, "train" if status in (Status.TRAINING_FAILED, Status.NO_CHECKPOINT) else "eval", status)
        outcome.message = failure["message"]
    return outcome


def describe_run(run: PlannedRun, settings: DriverSettings) -> list[str]:
    """--dry-run lines of one run: its commands, the skipped ones commented out with the reason."""
    lines = [f"# --- {run.name} (row {run.row.name!r}, {run.suite}, seed {run.seed})"]
    mismatch = check_run_info(run.run_dir, run_info(run, settings))
    if mismatch is not None:
        lines.append(f"# CONFIG_MISMATCH: {mismatch}")
    checkpoint = _finished_checkpoint(run)
    train = build_finetune_command(run, settings, resume=checkpoint is None and find_latest_checkpoint(run.train_root) is not None)
    lines.append(f"# skip (trained: {checkpoint.name}): {train.display()}" if checkpoint else train.display())
    checkpoint = checkpoint or run.final_checkpoint
    shards = [None] if settings.eval_shards == 1 else list(range(settings.eval_shards))
    evaluations = [build_eval_command(run, settings, checkpoint, shard).display() for shard in shards]
    previous = read_json(run.run_dir / RESULT)
    if previous is not None and previous.get("eval_fingerprint") == eval_fingerprint(run, settings, checkpoint):
        lines += [f"# skip (evaluated: {100 * previous['success_rate']:.1f}%): {e}" for e in evaluations]
    else:
        lines += evaluations
    if settings.launcher == "slurm":
        from craft_experiments.common_utils.slurm import describe_jobs

        lines += describe_jobs(run, settings)
    return lines


def format_summary(table: str, outcomes: list[RunOutcome], collected: Collected | None) -> str:
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.status.value] = counts.get(o.status.value, 0) + 1
    lines = [f"== {table}: {len(outcomes)} runs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))]
    for o in outcomes:
        rate = f"{100 * o.success_rate:5.1f}%" if o.success_rate is not None else "   -  "
        lines.append(f"  {o.status.value:<16} {rate}  {o.run.name}" + (f"  ({o.message})" if o.message else ""))
    failed = [o for o in outcomes if (o.status.is_failure or o.status is Status.LOCKED)
              and o.status is not Status.INTERRUPTED]
    if failed:
        lines.append("FAILED / NOT DONE (run the same command again to retry):")
        lines += [f"  {o.status.value}: {o.run.name}: {o.message}" for o in failed]
    if collected is not None:
        lines += ["", *(f"note: {n}" for n in collected.notes), *(f"PROBLEM: {p}" for p in collected.problems)]
        lines += ["written:", *(f"  {p}" for p in collected.files), "", collected_markdown(collected)]
    return "\n".join(lines) + "\n"


def collected_markdown(collected: Collected) -> str:
    from craft_experiments.common_utils.tables import render_markdown

    return render_markdown(collected.table)


def write_status(settings: DriverSettings, table: str, outcomes: list[RunOutcome], collected: Collected) -> Path:
    path = settings.output_dir / "tables" / f"{table}_status.json"
    write_json_atomic(path, {
        "table": table, "at": now(), "stage": settings.stage,
        "runs": [{"run": o.run.name, "row": o.run.row.name, "suite": o.run.suite, "seed": o.run.seed,
                  "status": o.status.value, "train": o.train.value, "eval": o.eval.value, "message": o.message,
                  "checkpoint": o.checkpoint, "success_rate": o.success_rate} for o in outcomes],
        "notes": collected.notes, "problems": collected.problems,
    })
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m craft_experiments.common_utils.experiments",
        description=__doc__.split("\n\n")[0] + " Every setting is a flag or an environment variable "
                    "(flag > environment variable > default; under --smoke the smoke value replaces default and "
                    "environment variable).",
        epilog="Outputs: <output_dir>/runs/<variant>--<suite>--seed<k>/ (train/, eval/, logs/, markers), "
               "<output_dir>/tables/<table>.{md,tex,csv} and <table>_status.json, <output_dir>/plots/<table>/. "
               "Statuses: OK, DONE (skipped), PENDING, TRAINING_FAILED, NO_CHECKPOINT, EVAL_FAILED, PARSE_FAILED, "
               "CONFIG_MISMATCH, LOCKED, BAD_STATE; with --launcher slurm also SUBMITTED, QUEUED, JOB_FAILED. Exit code 0: "
               "nothing failed; 1: something failed; 2: bad settings; 130 / 143: stopped by SIGINT / SIGTERM (rerun "
               "to continue).")
    parser.add_argument("table", choices=sorted(TABLES), help="which table: " + "; ".join(
        f"{t.name} = {t.title}" for t in TABLES.values()).replace("%", "%%"))
    add_arguments(parser)
    return parser


def _check_scripts(settings: DriverSettings) -> None:
    needed = {"all": ("finetune_script", "eval_script"), "train": ("finetune_script",), "eval": ("eval_script",)}
    for name in needed.get(settings.stage, ()):
        path = getattr(settings, name)
        if not path.is_file():
            raise ValueError(f"--{name} {path} does not exist")
    if settings.stage in ("all", "train") and settings.model_preset in ("vla-adapter", "vla-adapter-pro") \
            and not settings.vlm_path:
        raise ValueError(f"--model_preset {settings.model_preset} trains on the Prismatic base VLM: give its directory "
                         "with --vlm_path or CRAFT_VLM_PATH (e.g. pretrained_models/prism-qwen25-extra-dinosiglip-224px-"
                         "0_5b, and --config_file_path pretrained_models/configs); --dry-run shows the plan without it")


def _raise_interrupted(signum, frame):
    raise Interrupted(signum)


def _interrupted(table: str, e: Interrupted, done: list[RunOutcome], out: TextIO) -> int:
    outcome = getattr(e, "outcome", None)
    name = outcome.run.name if outcome is not None else "between runs"
    print(f"\n== {table}: stopped by {e} ({name}); the child was stopped and its lock released. {len(done)} run(s) "
          "were handled before. Run the same command again to continue where it stopped.", file=out, flush=True)
    return 128 + e.signum


def _run_locally(runs: list[PlannedRun], settings: DriverSettings, runner: Runner, outcomes: list[RunOutcome],
                 out: TextIO) -> None:
    for i, run in enumerate(runs, start=1):
        if settings.stage == "collect":
            try:
                outcomes.append(outcome_from_disk(run))
            except ValueError as e:
                outcomes.append(RunOutcome(run, train=Status.BAD_STATE, message=str(e)))
            continue
        print(f"\n===== [{i}/{len(runs)}] {run.name}", file=out, flush=True)
        try:
            outcome = execute_run(run, settings, runner)
        except ValueError as e:  # an unreadable marker file: named in the message, the other runs go on
            outcome = RunOutcome(run, train=Status.BAD_STATE, message=str(e))
        for note in outcome.notes:
            print(f"note: {run.name}: {note}", file=out, flush=True)
        print(f"===== [{i}/{len(runs)}] {run.name}: {outcome.status.value} {outcome.message}", file=out, flush=True)
        outcomes.append(outcome)


def main(argv: list[str] | None = None, runner: Runner | None = None, environ: Mapping[str, str] | None = None,
         out: TextIO | None = None) -> int:
    out = out or sys.stdout
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = resolve_settings(args, os.environ if environ is None else environ)
        table = TABLES[args.table]
        rows = select_rows(table, settings)
        runs = plan_runs(table, settings)
        check_eval_sharding(settings)
        if settings.eval_shards > 1:
            for run in runs:
                shard_tasks(run, settings, 0)
        if not settings.dry_run:
            _check_scripts(settings)
    except ValueError as e:
        parser.error(str(e))
    if settings.dry_run:
        print(f"# {table.title}: {len(runs)} runs, output in {settings.output_dir}", file=out)
        print("# every command runs with the repository prepended to PYTHONPATH", file=out)
        if settings.stage in ("all", "train") and settings.model_preset in ("vla-adapter", "vla-adapter-pro") \
                and not settings.vlm_path:
            print(f"# WARNING: --model_preset {settings.model_preset} needs --vlm_path / CRAFT_VLM_PATH (the Prismatic "
                  "base VLM directory); the fine-tune commands below fail without it", file=out)
        for run in runs:
            try:
                print("\n".join(describe_run(run, settings)), file=out)
            except ValueError as e:  # an unreadable marker file
                print(f"# --- {run.name}: BAD_STATE: {e}", file=out)
        return 0
    if settings.launcher == "slurm":
        from craft_experiments.common_utils.slurm import SlurmError, run_table

        try:
            outcomes = run_table(runs, settings, out)
        except SlurmError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    else:
        in_main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _raise_interrupted) if in_main_thread else None
        outcomes = []
        try:
            _run_locally(runs, settings, runner or SubprocessRunner(echo=not settings.quiet), outcomes, out)
        except Interrupted as e:
            return _interrupted(table.name, e, outcomes, out)
        finally:
            if in_main_thread:
                signal.signal(signal.SIGTERM, previous)
    collected = collect_table(table, rows, runs, settings.suites, settings.output_dir)
    collected.files.append(write_status(settings, table.name, outcomes, collected))
    print("\n" + format_summary(table.name, outcomes, collected), file=out, end="")
    failed = any(o.status.is_failure for o in outcomes) or bool(collected.problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
