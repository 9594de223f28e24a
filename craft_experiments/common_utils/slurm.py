"""The SLURM launcher of the table drivers (`--launcher slurm`): every run of a table becomes cluster jobs.

    python -m craft_experiments.common_utils.experiments table1 --launcher slurm [--wait | --collect_only] ...
    python -m craft_experiments.common_utils.slurm job <run>/slurm/<job>.json     # what each job script runs

Jobs of one run (scripts and their specs in <run>/slurm/, ids in <run>/slurm/jobs.json):
  train     `sbatch <run>/slurm/train.sbatch`: trains the run (torchrun, --slurm_gpus_per_run per node; with
            --slurm_nodes_per_run > 1 `srun` starts torchrun on every node, c10d rendezvous on the first);
            a checkpoint left by an earlier job (time limit, scancel, preemption) makes it resume (--resume True).
  eval      `sbatch --dependency=afterok:<train> --kill-on-invalid-dep=yes <run>/slurm/eval.sbatch` (one job per
            shard with --eval_shards K: each evaluates every K-th task; the last one to finish merges the shards'
            results into RESULT.json, each task counted once).
Inside a job, the same code as the local driver does the bookkeeping (markers, FAILURE.json, locks, resume):
the job runs `execute_run` for its run and stage, so a run finished here and one finished on the cluster
are indistinguishable.

A driver invocation, per run: done (RESULT.json for this checkpoint and protocol) -> nothing; a job of the
run in the queue (`squeue`: pending, running, completing) -> nothing (never a second job for it); else ->
submit what is missing (the train job only if training is not finished, only the missing eval shards), after
removing locks of jobs that have left the queue. A job that ended without its result (FAILED, CANCELLED,
TIMEOUT, NODE_FAIL) is reported with its final state and resubmitted. The final state comes from
`scontrol show job` (the controller keeps finished jobs for MinJobAge), else `sacct` (clusters with
accounting), else the jobcomp/filetxt file (`scontrol show config`: JobCompLoc); when none knows the job, the
run's markers decide (done or not) and the state is reported as unknown. Whether to resubmit never depends on
that final state, only on the queue and the markers.

--slurm_max_parallel M: a new run's first job waits (--dependency=afterany) for the jobs of the run submitted
M runs before it, so at most M runs are in the queue at once without the driver staying up.
--wait: poll `squeue` until the table's jobs have left the queue, then collect. Without it the driver submits,
prints the job ids and returns; the same command again (or with --collect_only) collects what has finished.

Why plain sbatch scripts and not submitit: the jobs run a command line (torchrun, the evaluator), not a pickled
Python function, so submitit's main feature is unused; a plain script is what users read, copy, resubmit by
hand (`sbatch <run>/slurm/train.sbatch`) and what their cluster documentation talks about; multi-node
torchrun needs `srun` + a rendezvous line in the script either way; and it adds no dependency to the
project. The scheduler is driven through its own CLI (sbatch/squeue/scontrol/sacct), nothing else.
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from craft_experiments.common_utils.driver_settings import REPO_ROOT, DriverSettings
from craft_experiments.common_utils.experiment_plan import (
    RDZV_PORT,
    TABLES,
    PlannedRun,
    build_eval_command,
    build_finetune_command,
    eval_fingerprint,
    plan_runs,
    shard_label,
)
from craft_experiments.common_utils.run_state import (
    FAILURE,
    LOCK,
    RESULT,
    RUN_INFO,
    SLURM_DIR,
    SLURM_JOBS,
    Status,
    check_run_info,
    now,
    read_json,
    read_lock,
    shard_result_name,
    stale_reason,
    write_json_atomic,
)

# ---- talking to the scheduler ----


class SlurmError(RuntimeError):
    """A SLURM command failed (the message has the command and what it printed)."""


def _slurm(argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise SlurmError(f"{argv[0]} not found: --launcher slurm needs the SLURM client commands (sbatch, squeue, "
                         "scontrol) on PATH; run the driver on a login node of the cluster") from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{shlex.join(argv)} did not answer within {timeout:.0f} s (is slurmctld up?)") from None


@dataclass(frozen=True)
class QueuedJob:
    job_id: str
    state: str  # PENDING, RUNNING, COMPLETING, ...
    reason: str  # squeue's reason (e.g. Dependency, Resources, None)
    command: str  # the batch script's path


class Cluster:
    """The scheduler, through its CLI. Only this user's jobs are looked at."""

    # A busy controller answers "Socket timed out on send/recv operation": squeue is asked again after these
    # pauses (seconds) before the driver gives up.
    QUEUE_RETRY_PAUSES = (2, 5, 10, 20, 30)

    def __init__(self, user: str | None = None, sleep: Callable[[float], None] = time.sleep):
        self.user = user or os.environ.get("USER") or getpass.getuser()
        self.sleep = sleep

    def queue(self) -> dict[str, QueuedJob]:
        """Every job of the user that is still in the queue (pending, running, completing, ...). A squeue that
        keeps failing is an error: an unknown queue must never look empty (that would submit a second job)."""
        argv = ["squeue", "-h", "-u", self.user, "-o", "%i|%T|%r|%o"]
        for pause in (*self.QUEUE_RETRY_PAUSES, None):
            proc = _slurm(argv)
            if proc.returncode == 0:
                break
            if pause is None:
                raise SlurmError(f"squeue -u {self.user} failed (exit {proc.returncode}, {len(self.QUEUE_RETRY_PAUSES) + 1} "
                                 f"tries): {proc.stderr.strip()}")
            self.sleep(pause)
        jobs = {}
        for line in proc.stdout.splitlines():
            parts = line.strip().split("|", 3)
            if len(parts) == 4:
                jobs[parts[0]] = QueuedJob(*parts)
        return jobs

    def final_state(self, job_id: str) -> str | None:
        """The state of a job that left the queue: scontrol, else sacct, else the jobcomp file; None if no
        source knows it any more."""
        proc = _slurm(["scontrol", "-o", "show", "job", job_id])
        if proc.returncode == 0 and (m := re.search(r"\bJobState=(\S+)", proc.stdout)):
            return m.group(1)
        proc = _slurm(["sacct", "-n", "-X", "-P", "-o", "State", "-j", job_id])
        if proc.returncode == 0 and proc.stdout.strip():
            return proc.stdout.split()[0]
        return self._jobcomp_state(job_id)

    def _jobcomp_state(self, job_id: str) -> str | None:
        proc = _slurm(["scontrol", "show", "config"])
        config = dict(re.findall(r"^(\w+)\s*=\s*(.*?)\s*$", proc.stdout, re.M)) if proc.returncode == 0 else {}
        if config.get("JobCompType") != "jobcomp/filetxt" or not config.get("JobCompLoc"):
            return None
        try:
            text = Path(config["JobCompLoc"]).read_text(errors="replace")
        except OSError:
            return None
        states = re.findall(rf"^JobId={re.escape(job_id)}\s.*?\bJobState=(\S+)", text, re.M)
        return states[-1] if states else None

    def submit(self, script: Path, dependency: str | None = None) -> str:
        argv = ["sbatch", "--parsable"]
        if dependency:
            argv += [f"--dependency={dependency}", "--kill-on-invalid-dep=yes"]
        argv.append(str(script))
        proc = _slurm(argv)
        if proc.returncode != 0:
            raise SlurmError(f"{shlex.join(argv)} failed (exit {proc.returncode}): {proc.stderr.strip()}")
        job_id = proc.stdout.strip().split(";")[0]
        if not job_id.isdigit():
            raise SlurmError(f"{shlex.join(argv)} printed {proc.stdout.strip()!r}, not a job id")
        return job_id


# ---- settings travel to the jobs as JSON ----

_PATH_FIELDS = ("output_dir", "data_root_dir", "finetune_script", "eval_script")


def settings_to_json(settings: DriverSettings) -> dict:
    data = {}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        data[f.name] = str(value) if isinstance(value, Path) else list(value) if isinstance(value, tuple) else value
    return data


def settings_from_json(data: dict) -> DriverSettings:
    values = {}
    for f in dataclasses.fields(DriverSettings):
        if f.name not in data:
            raise ValueError(f"job spec: setting {f.name!r} is missing (written by another version of the driver?)")
        value = data[f.name]
        if f.name in _PATH_FIELDS:
            value = Path(value)
        elif isinstance(value, list):
            value = tuple(value)
        values[f.name] = value
    return DriverSettings(**values)


# ---- job scripts ----

def job_key(stage: str, shard: int | None, shards: int) -> str:
    """File stem of a job's script / spec / output: train, eval, eval-shard2of4."""
    return stage if shard is None else f"{stage}-{shard_label(shard, shards)}"


def sbatch_options(run: PlannedRun, settings: DriverSettings, stage: str, key: str, cwd: Path) -> list[str]:
    gpus = settings.slurm_gpus_per_run or 0
    nodes = settings.slurm_nodes_per_run if stage == "train" else 1
    options = [f"--job-name=craft-{key}-{run.name}", f"--output={run.run_dir / SLURM_DIR / key}-%j.out",
               "--open-mode=append", f"--chdir={cwd}", f"--nodes={nodes}", "--ntasks-per-node=1"]
    if gpus:
        options.append(f"--gres=gpu:{gpus if stage == 'train' else 1}")
    for name in ("partition", "account", "time"):
        if (value := getattr(settings, f"slurm_{name}")) is not None:
            options.append(f"--{name}={value}")
    if stage == "train" and settings.slurm_signal_lead > 0:
        # B: the batch shell only, i.e. this job's runner (`slurm job`), which forwards it to the trainer's process
        # group (torchrun and its ranks, or srun on several nodes); the trainer saves and exits (--save_on_sigterm)
        options.append(f"--signal=B:TERM@{settings.slurm_signal_lead}")
    return options + list(settings.slurm_extra)


def job_commands(run: PlannedRun, settings: DriverSettings, stage: str, shard: int | None) -> list[str]:
    """What the job will run, for the script's comment (resolved again when the job starts)."""
    if stage == "train":
        return [build_finetune_command(run, settings, resume=False).display() + "   [+ --resume True after a checkpoint]"]
    return [build_eval_command(run, settings, run.final_checkpoint, shard).display()]


def job_script(run: PlannedRun, settings: DriverSettings, stage: str, shard: int | None, cwd: Path) -> str:
    key = job_key(stage, shard, settings.eval_shards)
    spec = run.run_dir / SLURM_DIR / f"{key}.json"
    lines = ["#!/bin/bash", f"# {run.name}: {key} (written by the table driver, --launcher slurm; "
             "resubmit by hand with: sbatch <this file>)"]
    lines += [f"#SBATCH {o}" for o in sbatch_options(run, settings, stage, key, cwd)]
    lines += ["#", "# What this job runs (the driver's bookkeeping wraps it: markers, FAILURE.json, lock, resume):"]
    lines += [f"#   {c}" for c in job_commands(run, settings, stage, shard)]
    lines += ["set -euo pipefail", f"export PYTHONPATH={shlex.quote(str(REPO_ROOT))}${{PYTHONPATH:+:$PYTHONPATH}}"]
    if stage == "train" and settings.slurm_nodes_per_run > 1:
        lines.append('export CRAFT_RDZV_ENDPOINT="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1):'
                     f'{RDZV_PORT}"')
    lines.append(f"exec {shlex.quote(settings.python)} -m craft_experiments.common_utils.slurm job {shlex.quote(str(spec))}")
    return "\n".join(lines) + "\n"


def write_job(run: PlannedRun, settings: DriverSettings, stage: str, shard: int | None, cwd: Path) -> Path:
    """Write <run>/slurm/<key>.sbatch and its spec <key>.json; return the script's path."""
    key = job_key(stage, shard, settings.eval_shards)
    directory = run.run_dir / SLURM_DIR
    write_json_atomic(directory / f"{key}.json", {"table": run.table, "run": run.name, "stage": stage, "shard": shard,
                                                  "settings": settings_to_json(settings)})
    script = directory / f"{key}.sbatch"
    tmp = script.with_name(f".{script.name}.tmp")
    tmp.write_text(job_script(run, settings, stage, shard, cwd))
    tmp.chmod(0o755)
    tmp.replace(script)
    return script


# ---- the driver side ----

def read_submissions(run: PlannedRun) -> list[dict]:
    data = read_json(run.run_dir / SLURM_JOBS)
    return list(data.get("submissions", [])) if data else []


def _record_submission(run: PlannedRun, entry: dict) -> None:
    write_json_atomic(run.run_dir / SLURM_JOBS, {"submissions": [*read_submissions(run), entry]})


def _label(entry: dict) -> str:
    return entry["key"]


def active_jobs(run: PlannedRun, queue: dict[str, QueuedJob]) -> list[tuple[str, str, QueuedJob]]:
    """(job id, key, queue entry) of the run's jobs still in the queue: recorded ids, and any job whose script
    is in the run's slurm/ directory (a job submitted by a driver killed before it could record the id)."""
    found: dict[str, tuple[str, str, QueuedJob]] = {}
    for entry in read_submissions(run):
        if entry["job_id"] in queue:
            found[entry["job_id"]] = (entry["job_id"], _label(entry), queue[entry["job_id"]])
    prefix = str(run.run_dir / SLURM_DIR) + os.sep
    for job in queue.values():
        if job.command.startswith(prefix) and job.job_id not in found:
            found[job.job_id] = (job.job_id, Path(job.command).stem, job)
    return sorted(found.values(), key=lambda t: int(t[0]) if t[0].isdigit() else 0)


def latest_submissions(run: PlannedRun) -> dict[str, dict]:
    latest: dict[str, dict] = {}
    for entry in read_submissions(run):
        latest[_label(entry)] = entry
    return latest


class Lanes:
    """--slurm_max_parallel: at most `size` runs in the queue; a new run waits for the oldest one's jobs."""

    def __init__(self, size: int):
        self.size = size
        self.tails: deque[list[str]] = deque()

    def occupy(self, job_ids: list[str]) -> None:
        if self.size and job_ids:
            self.tails.append(job_ids)

    def dependency(self) -> str | None:
        if not self.size or len(self.tails) < self.size:
            return None
        return "afterany:" + ":".join(self.tails.popleft())


def _remove_stale_locks(run: PlannedRun, queue: dict[str, QueuedJob], outcome) -> bool:
    """Remove locks of jobs that left the queue (and of dead processes on this host); False if a live lock
    holder remains (outcome LOCKED)."""
    for path in sorted(run.run_dir.glob(LOCK + "*")):
        holder = read_lock(path)
        job = (holder or {}).get("slurm_job_id")
        if job is not None and str(job) not in queue:
            outcome.notes.append(f"removed {path.name} of job {job}, which is no longer in the queue")
        elif (reason := stale_reason(holder)) is not None:
            outcome.notes.append(f"removed the stale lock {path.name} ({reason})")
        elif holder is None and path.exists() and time.time() - path.stat().st_mtime > 60:
            outcome.notes.append(f"removed the unreadable lock {path.name}")
        else:
            outcome.train, outcome.message = Status.LOCKED, (
                f"{path} is held by {json.dumps(holder)} (a driver running this run here); not submitting")
            return False
        path.unlink(missing_ok=True)
    return True


def _ended(run: PlannedRun, cluster: Cluster) -> list[str]:
    """'job N (key) ended STATE' for each latest job of the run that did not complete successfully."""
    out = []
    for key, entry in latest_submissions(run).items():
        state = cluster.final_state(entry["job_id"]) or "in an unknown state (no record left)"
        if not state.startswith("COMPLETED"):
            out.append(f"job {entry['job_id']} ({key}) ended {state}")
    return out


def slurm_run(run: PlannedRun, settings: DriverSettings, cluster: Cluster, queue: dict[str, QueuedJob], lanes: Lanes,
              submit: bool, cwd: Path):
    """One run under --launcher slurm: its state, and (with `submit`) the jobs it still needs, submitted."""
    from craft_experiments.common_utils import experiments as ex  # the local driver's bookkeeping (no cycle at import)

    outcome = ex.RunOutcome(run)
    info = ex.run_info(run, settings)
    mismatch = check_run_info(run.run_dir, info)
    if mismatch is not None:
        outcome.train, outcome.message = Status.CONFIG_MISMATCH, mismatch
        return outcome
    k = settings.eval_shards
    checkpoint = ex._finished_checkpoint(run)
    if checkpoint is not None:
        outcome.train, outcome.checkpoint = Status.DONE, str(checkpoint)
        try:
            if k > 1:
                ex.merge_shards_if_complete(run, settings, checkpoint)
        except ex.EvalParseError as e:
            outcome.eval, outcome.message = Status.PARSE_FAILED, str(e)
            return outcome
        previous = read_json(run.run_dir / RESULT)
        if previous is not None and previous.get("eval_fingerprint") == eval_fingerprint(run, settings, checkpoint):
            outcome.eval, outcome.success_rate = Status.DONE, float(previous["success_rate"])
            return outcome
    active = active_jobs(run, queue)
    if active:
        lanes.occupy([job_id for job_id, _, _ in active])
        status = Status.QUEUED
        if checkpoint is None:
            outcome.train = status
        else:
            outcome.eval = status
        outcome.message = ", ".join(f"job {j} ({key}) {q.state}" + (f" ({q.reason})" if q.reason not in ("None", "") else "")
                                    for j, key, q in active)
        return outcome
    ended = _ended(run, cluster)
    failure = read_json(run.run_dir / FAILURE)
    previous = f"{failure['status']}: {failure['message']}" if failure else "; ".join(ended)
    if not submit:
        if failure is not None:
            status = Status(failure["status"])
            stage = "train" if status in (Status.TRAINING_FAILED, Status.NO_CHECKPOINT) else "eval"
            setattr(outcome, stage, status)
            outcome.message = failure["message"] + (f" ({'; '.join(ended)})" if ended else "")
        elif ended:
            setattr(outcome, "train" if checkpoint is None else "eval", Status.JOB_FAILED)
            outcome.message = "; ".join(ended) + "; run the driver again (without --collect_only) to resubmit"
        elif not read_submissions(run):
            outcome.message = "no job submitted yet"
        return outcome
    if not _remove_stale_locks(run, queue, outcome):
        return outcome
    train = checkpoint is None and settings.stage in ("all", "train")
    evaluate = settings.stage in ("all", "eval") and (checkpoint is not None or train)
    if checkpoint is None and not train:
        outcome.message = "not trained yet (--stage eval submits evaluations of trained runs only)"
        return outcome
    if read_json(run.run_dir / RUN_INFO) is None:
        write_json_atomic(run.run_dir / RUN_INFO, info)
    shards: list[int | None] = [None]
    if k > 1:
        fingerprint = eval_fingerprint(run, settings, checkpoint) if checkpoint is not None else None
        shards = [i for i in range(k) if checkpoint is None or (read_json(run.run_dir / shard_result_name(i, k)) or {})
                  .get("eval_fingerprint") != fingerprint]
    lane = lanes.dependency()
    submitted: list[tuple[str, str]] = []
    train_id = None
    if train:
        train_id = _submit(run, settings, cluster, "train", None, lane, cwd)
        submitted.append((train_id, f"train{f', --dependency={lane}' if lane else ''}"))
        outcome.train = Status.SUBMITTED
    if evaluate:
        dependency = f"afterok:{train_id}" if train_id else lane
        for shard in shards:
            job_id = _submit(run, settings, cluster, "eval", shard, dependency, cwd)
            submitted.append((job_id, job_key("eval", shard, k) + (f", --dependency={dependency}" if dependency else "")))
        outcome.eval = Status.SUBMITTED
    lanes.occupy([job_id for job_id, _ in submitted])
    outcome.message = "submitted " + ", ".join(f"job {j} ({what})" for j, what in submitted)
    if previous:
        outcome.message += f"; previous attempt: {previous}"
    return outcome


def _submit(run: PlannedRun, settings: DriverSettings, cluster: Cluster, stage: str, shard: int | None,
            dependency: str | None, cwd: Path) -> str:
    script = write_job(run, settings, stage, shard, cwd)
    job_id = cluster.submit(script, dependency)
    _record_submission(run, {"job_id": job_id, "stage": stage, "shard": shard,
                             "key": job_key(stage, shard, settings.eval_shards), "script": str(script),
                             "dependency": dependency, "at": now()})
    return job_id


def plan_jobs_in_queue(runs: list[PlannedRun], queue: dict[str, QueuedJob]) -> dict[str, QueuedJob]:
    return {job_id: q for run in runs for job_id, _, q in active_jobs(run, queue)}


def wait_for_jobs(runs: list[PlannedRun], cluster: Cluster, poll_seconds: float, out: TextIO,
                  sleep: Callable[[float], None] = time.sleep) -> None:
    """Block until no job of the plan is in the queue, printing the counts whenever they change."""
    last = None
    while True:
        mine = plan_jobs_in_queue(runs, cluster.queue())
        if not mine:
            print("== all jobs of the table have left the queue", file=out, flush=True)
            return
        counts: dict[str, int] = {}
        for q in mine.values():
            counts[q.state] = counts.get(q.state, 0) + 1
        line = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        if line != last:
            print(f"== {now()} waiting for {len(mine)} job(s): {line}  (squeue -u {cluster.user})", file=out, flush=True)
            last = line
        sleep(poll_seconds)


def run_table(runs: list[PlannedRun], settings: DriverSettings, out: TextIO, cluster: Cluster | None = None) -> list:
    """The driver's slurm pass over the plan (submit, or with --stage collect only read), then --wait."""
    cluster = cluster or Cluster()
    cwd = Path.cwd()
    submit = settings.stage != "collect"
    queue = cluster.queue()
    lanes = Lanes(settings.slurm_max_parallel)
    outcomes = []
    for i, run in enumerate(runs, start=1):
        try:
            outcome = slurm_run(run, settings, cluster, queue, lanes, submit, cwd)
        except ValueError as e:  # an unreadable marker or jobs file: named, the other runs go on
            from craft_experiments.common_utils.experiments import RunOutcome

            outcome = RunOutcome(run, train=Status.BAD_STATE, message=str(e))
        for note in outcome.notes:
            print(f"note: {run.name}: {note}", file=out)
        print(f"===== [{i}/{len(runs)}] {run.name}: {outcome.status.value} {outcome.message}", file=out, flush=True)
        outcomes.append(outcome)
    if not settings.wait:
        if any(o.status in (Status.SUBMITTED, Status.QUEUED) for o in outcomes):
            print(f"\nJobs are in the queue. Watch: squeue -u {cluster.user}; logs: <run>/logs/*.log and "
                  "<run>/slurm/*.out. Collect: the same command again (or with --collect_only), or with --wait.",
                  file=out)
        return outcomes
    wait_for_jobs(runs, cluster, settings.slurm_poll_seconds, out)
    queue = cluster.queue()
    return [slurm_run(run, settings, cluster, queue, Lanes(0), False, cwd) for run in runs]


def describe_jobs(run: PlannedRun, settings: DriverSettings) -> list[str]:
    """--dry-run lines: the sbatch calls the driver would make for this run (nothing is written)."""
    cwd = Path.cwd()
    key = job_key("train", None, 1)
    lines = [f"# slurm: sbatch {run.run_dir / SLURM_DIR / key}.sbatch  "
             f"({' '.join(sbatch_options(run, settings, 'train', key, cwd))})"]
    shards = [None] if settings.eval_shards == 1 else list(range(settings.eval_shards))
    for shard in shards:
        key = job_key("eval", shard, settings.eval_shards)
        lines.append(f"# slurm: sbatch --dependency=afterok:<train job> {run.run_dir / SLURM_DIR / key}.sbatch  "
                     f"({' '.join(sbatch_options(run, settings, 'eval', key, cwd))})")
    return lines


# ---- the job side ----

def run_job(spec_path: Path, out: TextIO = sys.stdout) -> int:
    """Inside a SLURM job: the run's stage (train, or evaluation / one shard of it), with the driver's bookkeeping."""
    from craft_experiments.common_utils import experiments as ex

    spec = read_json(spec_path)
    if spec is None:
        print(f"job spec {spec_path} does not exist", file=sys.stderr)
        return 2
    settings = settings_from_json(spec["settings"])
    rendezvous = None
    if os.environ.get("CRAFT_RDZV_ENDPOINT"):
        rendezvous = (os.environ["CRAFT_RDZV_ENDPOINT"], os.environ.get("SLURM_JOB_ID", "craft"))
    settings = dataclasses.replace(settings, stage=spec["stage"], quiet=True, dry_run=False, wait=False,
                                   rendezvous=rendezvous)
    runs = [r for r in plan_runs(TABLES[spec["table"]], settings) if r.name == spec["run"]]
    if len(runs) != 1:
        print(f"{spec_path}: run {spec['run']!r} is not in the plan of {spec['table']}", file=sys.stderr)
        return 2
    run, shard = runs[0], spec["shard"]
    lock = LOCK if shard is None else f"{LOCK}-eval-{shard_label(shard, settings.eval_shards)}"
    job = os.environ.get("SLURM_JOB_ID", "?")
    print(f"{now()} job {job}: {run.name}: {job_key(spec['stage'], shard, settings.eval_shards)}", file=out, flush=True)
    try:
        # After forwarding SIGTERM, give the trainer until the time limit to finish its step and save (SLURM
        # itself kills what is left at the limit); the default grace otherwise.
        grace = max(ex.KILL_GRACE_SECONDS, float(settings.slurm_signal_lead)) if spec["stage"] == "train" \
            else ex.KILL_GRACE_SECONDS
        outcome = ex.execute_run(run, settings, ex.SubprocessRunner(echo=False, kill_grace=grace),
                                 shards=None if shard is None else (shard,), lock_name=lock)
    except ex.Interrupted as e:
        print(f"{now()} job {job}: stopped by {e} (scancel, time limit or preemption); the driver resubmits it and "
              "training resumes from its last checkpoint", file=out, flush=True)
        return 128 + e.signum
    for note in outcome.notes:
        print(f"note: {note}", file=out)
    if spec["stage"] == "train" and outcome.train in (Status.OK, Status.DONE):
        print(f"{now()} job {job}: {run.name}: trained ({outcome.train.value}): {outcome.checkpoint}", file=out, flush=True)
    else:
        print(f"{now()} job {job}: {run.name}: {outcome.status.value} {outcome.message}", file=out, flush=True)
    stage_ok = outcome.train in (Status.OK, Status.DONE) and not outcome.status.is_failure \
        and outcome.status is not Status.LOCKED
    return 0 if stage_ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m craft_experiments.common_utils.slurm",
                                     description="What a job script of the SLURM launcher runs (see the module doc).")
    sub = parser.add_subparsers(dest="command", required=True)
    job = sub.add_parser("job", help="run one job: its run, stage and shard come from the spec file")
    job.add_argument("spec", type=Path, help="<run>/slurm/<job>.json, written by the driver next to the script")
    args = parser.parse_args(argv)
    return run_job(args.spec)


if __name__ == "__main__":
    sys.exit(main())
