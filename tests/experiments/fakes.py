"""Fake evaluation outputs and fake trainer/evaluator, for testing the parsers and the drivers' bookkeeping
without training or simulating anything.

The fakes follow the real contracts: the trainer writes `<run_root_dir>/<run_id>--<max_steps>_chkpt/`; the
evaluator writes `<local_log_dir>/<run_id>/<run_id>.txt` (upstream lines, facts §7.2) and `results.jsonl`.
`behaviour` strings steer them: "ok", "crash" (exit 1), "no_checkpoint" (exit 0, nothing written),
"unfinished" (exit 0, a log without its final lines).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

TASKS = ("pick up the black bowl between the plate and the ramekin and place it on the plate",
         "pick up the black bowl next to the ramekin and place it on the plate")


def upstream_log_lines(outcomes: dict[str, list[bool]], suite: str | None = "libero_spatial", final: bool = True,
                       prefix: str = "") -> list[str]:
    """The lines upstream's run_libero_eval.py logs (facts §7.2), for the given per-task outcomes."""
    lines = [f"{prefix}Task suite: {suite}"] if suite else []
    total = successes = 0
    for task, results in outcomes.items():
        task_successes = 0
        for k, success in enumerate(results):
            total += 1
            successes += success
            task_successes += success
            lines += [f"{prefix}", f"{prefix}Task: {task}", f"{prefix}Starting episode {k + 1}...",
                      f"{prefix}Success: {success}", f"{prefix}# episodes completed so far: {total}",
                      f"{prefix}# successes: {successes} ({successes / total * 100:.1f}%)"]
        lines += [f"{prefix}Current task success rate: {task_successes / len(results)}",
                  f"{prefix}Current total success rate: {successes / total}"]
    if final:
        rate = successes / total
        lines += [f"{prefix}Final results:", f"{prefix}Total episodes: {total}", f"{prefix}Total successes: {successes}",
                  f"{prefix}Overall success rate: {rate:.4f} ({rate * 100:.1f}%)"]
    return lines


def results_jsonl_lines(outcomes: dict[str, list[bool]], task_ids: list[int] | None = None) -> list[str]:
    ids = task_ids if task_ids is not None else list(range(len(outcomes)))
    return [json.dumps({"task_id": t, "task": task, "episode": k, "success": s, "steps": 100, "seconds": 1.5,
                        "error": None})
            for t, (task, results) in zip(ids, outcomes.items()) for k, s in enumerate(results)]


def write_eval_run(local_log_dir: Path, run_id: str, outcomes: dict[str, list[bool]], suite: str,
                   final: bool = True, task_ids: list[int] | None = None) -> Path:
    """An evaluator run directory: <run_id>.txt + results.jsonl."""
    run_dir = Path(local_log_dir) / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / f"{run_id}.txt").write_text("\n".join(upstream_log_lines(outcomes, suite=None, final=final)) + "\n")
    (run_dir / "results.jsonl").write_text("\n".join(results_jsonl_lines(outcomes, task_ids)) + "\n")
    return run_dir


def task_name(task_id: int) -> str:
    return TASKS[task_id] if task_id < len(TASKS) else f"fake task number {task_id}"


def flag(argv: list[str], name: str) -> str:
    i = argv.index(f"--{name}")
    return argv[i + 1]


def fake_train(argv: list[str], behaviour: str = "ok") -> int:
    """Environment (for runs as real processes, e.g. SLURM jobs): FAKE_ARGV_LOG appends the argv as a JSON line;
    FAKE_TRAIN_SLEEP=S sleeps S seconds after writing a step-1 checkpoint (so the run can be killed mid-way and
    resumed); FAKE_PID_FILE receives the pid."""
    if os.environ.get("FAKE_ARGV_LOG"):
        with open(os.environ["FAKE_ARGV_LOG"], "a") as f:
            f.write(json.dumps(argv) + "\n")
    if os.environ.get("FAKE_PID_FILE"):
        Path(os.environ["FAKE_PID_FILE"]).write_text(str(os.getpid()))
    if os.environ.get("FAKE_TRAIN_SLEEP") and "--resume" not in argv:
        root, run_id = Path(flag(argv, "run_root_dir")), flag(argv, "run_id_override")
        (root / f"{run_id}--1_chkpt").mkdir(parents=True, exist_ok=True)
        if "--save_on_sigterm" in argv and flag(argv, "save_on_sigterm") == "True":
            # as the real trainer does with --save_on_sigterm True: save the step reached, exit 143
            def save_and_exit(signum, frame):
                (root / f"{run_id}--1_chkpt" / "SAVED_ON_SIGTERM").write_text(str(time.time()))
                sys.exit(128 + signum)

            signal.signal(signal.SIGTERM, save_and_exit)
        time.sleep(float(os.environ["FAKE_TRAIN_SLEEP"]))
    if behaviour == "crash":
        print("Traceback (most recent call last):\nRuntimeError: CUDA out of memory (fake)")
        return 1
    if behaviour == "no_checkpoint":
        return 0
    root, run_id, steps = Path(flag(argv, "run_root_dir")), flag(argv, "run_id_override"), int(flag(argv, "max_steps"))
    checkpoint = root / f"{run_id}--{steps}_chkpt"
    checkpoint.mkdir(parents=True, exist_ok=True)
    (checkpoint / "finetune_config.json").write_text(json.dumps({"craft_retention_budget": 0.1}))
    run_dir = root / run_id
    run_dir.mkdir(exist_ok=True)
    with (run_dir / "metrics.jsonl").open("a") as f:
        for step in range(1, steps + 1):
            f.write(json.dumps({"step": step, "loss": 1.0 / step, "retention_loss": 0.05 * step, "lambda": 0.1 * step})
                    + "\n")
    print(f"checkpoint: {checkpoint}")
    return 0


def fake_eval(argv: list[str], behaviour: str = "ok", successes_per_task: int = 1) -> int:
    if behaviour == "crash":
        print("ValueError: --pretrained_checkpoint does not exist (fake)")
        return 1
    local, run_id, suite = Path(flag(argv, "local_log_dir")), flag(argv, "run_id"), flag(argv, "task_suite_name")
    trials = int(flag(argv, "num_trials_per_task"))
    if "--task_ids" in argv:  # the evaluator's list syntax, e.g. [0,2,4]
        task_ids = [int(t) for t in flag(argv, "task_ids").strip("[]").split(",")]
    else:
        task_ids = list(range(len(TASKS)))
    outcomes = {task_name(t): [k < successes_per_task for k in range(trials)] for t in task_ids}
    write_eval_run(local, run_id, outcomes, suite, final=behaviour != "unfinished", task_ids=task_ids)
    return 0

