"""On-disk bookkeeping of one run: what it is, what finished, what failed, who is working on it.

    run.json             {"run", "variant", "suite", "seed", "dataset_name", "finetune_fingerprint"}
    TRAINING_DONE.json   {"checkpoint", "step", "at"}: training finished and left its final checkpoint
    RESULT.json          {"success_rate", "episodes", "successes", "tasks", "checkpoint", "eval_dir",
                          "eval_fingerprint", "at"}: the evaluation finished and was parsed
    FAILURE.json         {"status", "message", "log", "at"}: the last attempt failed (removed on success)
    RESULT.shard<i>of<K>.json   one shard's result of an evaluation split over K shards (--eval_shards)
    .lock                {"pid", "host", "at"[, "slurm_job_id"]}: a driver is working on this run right now
                         (.lock-eval-shard<i>of<K>: a SLURM job evaluating that shard)
    slurm/jobs.json      {"submissions": [{"job_id", "stage", "shard", "script", "dependency", "at"}, ...]}:
                         every SLURM job submitted for this run, oldest first; slurm/*.sbatch: their scripts

All JSON files are written atomically (temp file, then rename), so a killed driver never leaves a
half-written marker that would later be mistaken for a finished stage.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from enum import Enum
from pathlib import Path

RUN_INFO = "run.json"  # log_parser.RUN_INFO_FILE reads the same file
TRAINING_DONE = "TRAINING_DONE.json"
RESULT = "RESULT.json"
FAILURE = "FAILURE.json"
LOCK = ".lock"
SLURM_DIR = "slurm"
SLURM_JOBS = "slurm/jobs.json"


def shard_result_name(shard: int, shards: int) -> str:
    return f"RESULT.shard{shard + 1}of{shards}.json"


class Status(str, Enum):
    OK = "OK"  # done in this invocation
    DONE = "DONE"  # done earlier: skipped
    PENDING = "PENDING"  # not attempted (another --stage, or an earlier stage failed)
    TRAINING_FAILED = "TRAINING_FAILED"  # the trainer exited non-zero
    NO_CHECKPOINT = "NO_CHECKPOINT"  # the trainer exited 0 but left no final checkpoint
    EVAL_FAILED = "EVAL_FAILED"  # the evaluator exited non-zero
    PARSE_FAILED = "PARSE_FAILED"  # the evaluator exited 0 but its outputs hold no finished result
    CONFIG_MISMATCH = "CONFIG_MISMATCH"  # the run directory was trained with other settings
    LOCKED = "LOCKED"  # another driver holds the run's lock
    BAD_STATE = "BAD_STATE"  # a bookkeeping file of the run cannot be read (the message names it)
    SUBMITTED = "SUBMITTED"  # slurm: jobs submitted by this invocation
    QUEUED = "QUEUED"  # slurm: a job of the run is pending or running (submitted earlier); nothing submitted
    JOB_FAILED = "JOB_FAILED"  # slurm: the run's job ended (cancelled, time limit, node failure) without a result
    INTERRUPTED = "INTERRUPTED"  # the driver was stopped by SIGTERM / SIGINT; rerun to continue

    @property
    def is_failure(self) -> bool:
        return self in FAILURES


FAILURES = {Status.TRAINING_FAILED, Status.NO_CHECKPOINT, Status.EVAL_FAILED, Status.PARSE_FAILED,
            Status.CONFIG_MISMATCH, Status.BAD_STATE, Status.JOB_FAILED, Status.INTERRUPTED}


def now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


def write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def read_json(path: Path) -> dict | None:
    """The JSON object in `path`, None if the file does not exist; invalid content is an error."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e.msg}); delete it to redo that stage") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a JSON object; delete it to redo that stage")
    return data


def check_run_info(run_dir: Path, info: dict) -> str | None:
    """None if `run_dir` has no run.json yet or the same fingerprint; else a message saying what differs."""
    stored = read_json(run_dir / RUN_INFO)
    if stored is None:
        return None
    old, new = stored.get("finetune_fingerprint"), info["finetune_fingerprint"]
    if old == new:
        return None
    diffs = []
    old_flags, new_flags = dict(map(tuple, old.get("flags", []))), dict(map(tuple, new["flags"]))
    for key in sorted(set(old_flags) | set(new_flags)):
        if old_flags.get(key) != new_flags.get(key):
            diffs.append(f"--{key}: {old_flags.get(key)} -> {new_flags.get(key)}")
    for key in ("extra_args", "world_size"):
        if old.get(key) != new[key]:
            diffs.append(f"{key}: {old.get(key)} -> {new[key]}")
    return (f"{run_dir} was trained with other settings ({'; '.join(diffs) or 'fingerprint changed'}); "
            "use another --output_dir, or delete the run directory to retrain it")


def record_failure(run_dir: Path, status: Status, message: str, log: Path | None) -> None:
    write_json_atomic(run_dir / FAILURE, {"status": status.value, "message": message,
                                          "log": str(log) if log else None, "at": now()})


def clear_failure(run_dir: Path) -> None:
    (run_dir / FAILURE).unlink(missing_ok=True)


class RunLocked(RuntimeError):
    pass


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    except OSError as e:
        return e.errno != errno.ESRCH
    return True


def read_lock(path: Path) -> dict | None:
    """The lock's holder, None when the file is gone or unreadable (a half-written lock of a killed driver)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def stale_reason(holder: dict | None) -> str | None:
    """Why a lock can be taken over (its holder ran on this host and is dead), None if it may be alive."""
    if holder is None or holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return None
    if pid_alive(holder["pid"]):
        return None
    return f"its holder, pid {holder['pid']} on this host ({holder['host']}), is not running"


class RunLock:
    """Exclusive lock on a run directory (O_CREAT|O_EXCL), so two drivers sharing an output directory
    (e.g. table1 and table4 at once) never train the same run twice. A lock whose holder ran on this host
    and is dead (a driver killed with SIGKILL, a crashed machine) is stale: it is taken over and
    `took_over` says so. A lock held by a live process, or by one on another host, makes __enter__ raise
    RunLocked (the SLURM launcher removes locks of jobs that left the queue itself, slurm.py)."""

    def __init__(self, run_dir: Path, name: str = LOCK):
        self.path = run_dir / name
        self.took_over: str | None = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                break
            except FileExistsError:
                holder = read_lock(self.path)
                reason = stale_reason(holder)
                if reason is None:
                    raise RunLocked(f"{self.path} exists (held by {json.dumps(holder) if holder else 'unknown'}); "
                                    "another driver or job is running this run: wait for it, or delete the file "
                                    "if that process is gone") from None
                self.took_over = f"took over the stale lock {self.path} ({reason})"
                self.path.unlink(missing_ok=True)
        else:
            raise RunLocked(f"{self.path}: another process took the lock at the same time")
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "at": now()}
        if os.environ.get("SLURM_JOB_ID"):
            holder["slurm_job_id"] = os.environ["SLURM_JOB_ID"]
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(holder))
        return self

    def __exit__(self, *exc) -> None:
        self.path.unlink(missing_ok=True)
