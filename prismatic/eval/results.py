"""Evaluation records: the per-episode JSONL results file, the upstream-format text log, and the summary.

Run directory layout (`<local_log_dir>/<run_id>/`):
    <run_id>.txt        upstream's log lines (facts §7.2), ending with "Overall success rate: 0.8500 (85.0%)"
    results.jsonl       one line per finished episode:
                        {"task_id", "task", "episode", "success", "steps", "seconds", "error"}
                        (steps = policy steps, wait steps excluded; error = None or the traceback)
    summary.json        totals, per-task rates and the list of errored episodes
    eval_config.json    the flags of the run (a resumed run must agree on the protocol fields)
    videos/             mp4s (agentview | wrist), depending on --save_videos

Resuming: episodes with a record whose `error` is None are skipped; errored episodes are run again (the
newest record of an episode wins when reading). A torn last line (a crash while it was written) is dropped,
with a warning, before new records are appended. The counters in the log continue from the earlier records.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from prismatic.jsonl import append_record, drop_torn_tail

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.jsonl"
SUMMARY_FILE = "summary.json"
CONFIG_FILE = "eval_config.json"
VIDEO_DIR = "videos"
RESULT_FIELDS = ("task_id", "task", "episode", "success", "steps", "seconds", "error")


@dataclass
class EpisodeResult:
    task_id: int  # index in the suite
    task: str  # language instruction
    episode: int  # initial-state index
    success: bool  # the env reported task success within the step cap (False when error is set)
    steps: int  # policy steps executed (wait steps excluded)
    seconds: float  # wall time of the episode, env reset included
    error: str | None = None  # traceback of an exception that ended the episode; None when it ran to the end
    final_state: list[float] | None = field(default=None, compare=False)  # 8-d proprio at the end (not written)
    video_path: str | None = field(default=None, compare=False)  # where its video went (not written)

    def record(self) -> dict:
        """The JSONL record (exactly RESULT_FIELDS)."""
        return {"task_id": self.task_id, "task": self.task, "episode": self.episode, "success": self.success,
                "steps": self.steps, "seconds": round(self.seconds, 3), "error": self.error}

    @property
    def key(self) -> tuple[int, int]:
        return (self.task_id, self.episode)


def read_results(path: str | Path) -> dict[tuple[int, int], EpisodeResult]:
    """Read results.jsonl -> {(task_id, episode): newest record}. A truncated LAST line (a crash while
    writing) is ignored with a warning; a malformed line elsewhere is an error."""
    path = Path(path)
    if not path.is_file():
        return {}
    lines = path.read_text().splitlines()
    results: dict[tuple[int, int], EpisodeResult] = {}
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            result = EpisodeResult(**{k: data[k] for k in RESULT_FIELDS})
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            if i == len(lines) - 1:
                logger.warning("ignoring a truncated last line in %s: %r", path, line[:200])
                continue
            raise ValueError(f"{path}, line {i + 1}: malformed result record ({e}): {line[:200]!r}") from e
        results[result.key] = result
    return results


class EvalRecorder:
    """Writes the results file and the upstream-format log while episodes finish (in any order)."""

    def __init__(self, run_dir: Path, log_name: str, suite_name: str, task_names: dict[int, str],
                 episodes_per_task: dict[int, list[int]], previous: dict[tuple[int, int], EpisodeResult]):
        self.run_dir = run_dir
        self.results_path = run_dir / RESULTS_FILE
        self.log_path = run_dir / log_name
        self.suite_name = suite_name
        self.task_names = task_names
        self.episodes_per_task = episodes_per_task
        # Results of this selection of tasks/episodes that count (previous successes/failures + this run).
        self.done: dict[tuple[int, int], EpisodeResult] = {
            key: r for key, r in previous.items()
            if r.error is None and key[0] in episodes_per_task and key[1] in episodes_per_task[key[0]]
        }
        self.errors: dict[tuple[int, int], EpisodeResult] = {}
        run_dir.mkdir(parents=True, exist_ok=True)
        drop_torn_tail(self.results_path)  # else the next record would be glued onto a crash's fragment
        self._log = open(self.log_path, "a")
        self._results = open(self.results_path, "a")

    # ---- text log ----
    def line(self, message: str) -> None:
        """One upstream-style log line: to the log file (flushed) and the logger."""
        logger.info(message)
        self._log.write(message + "\n")
        self._log.flush()

    def _task_counts(self, task_id: int) -> tuple[int, int]:
        rs = [r for (t, _), r in self._finished().items() if t == task_id]
        return len(rs), sum(r.success for r in rs)

    def _finished(self) -> dict[tuple[int, int], EpisodeResult]:
        return {**self.done, **self.errors}

    def totals(self) -> tuple[int, int]:
        finished = self._finished()
        return len(finished), sum(r.success for r in finished.values())

    # ---- recording ----
    def record(self, result: EpisodeResult) -> None:
        """Append the JSONL record (flushed and fsynced: a crash loses at most the running episode) and the
        upstream log block for one finished episode."""
        append_record(self._results, result.record())
        if result.error is None:
            self.done[result.key] = result
            self.errors.pop(result.key, None)
        else:
            self.errors[result.key] = result
        task_episodes, _ = self._task_counts(result.task_id)
        total, successes = self.totals()
        self.line(f"\nTask: {result.task}")
        self.line(f"Starting episode {task_episodes}...")
        if result.error is not None:
            self.line(f"Episode error: {_last_line(result.error)}")
        self.line(f"Success: {result.success}")
        self.line(f"# episodes completed so far: {total}")
        self.line(f"# successes: {successes} ({successes / total * 100:.1f}%)")
        if task_episodes == len(self.episodes_per_task[result.task_id]):
            _, task_successes = self._task_counts(result.task_id)
            self.line(f"Current task success rate: {task_successes / task_episodes}")
            self.line(f"Current total success rate: {successes / total}")

    def summarize(self) -> dict:
        """Final log lines (upstream's last four lines come last) and summary.json. Returns the summary."""
        total, successes = self.totals()
        rate = successes / total if total else 0.0
        per_task = {}
        for task_id, episodes in sorted(self.episodes_per_task.items()):
            n, s = self._task_counts(task_id)
            per_task[str(task_id)] = {"task": self.task_names[task_id], "episodes": n, "successes": s,
                                      "success_rate": s / n if n else 0.0, "expected_episodes": len(episodes)}
        errors = [{"task_id": r.task_id, "task": r.task, "episode": r.episode, "error": r.error}
                  for r in sorted(self.errors.values(), key=lambda r: r.key)]
        if errors:
            self.line(f"\nEpisodes with errors: {len(errors)} (counted as failures; tracebacks in {RESULTS_FILE})")
            for e in errors:
                self.line(f"  task {e['task_id']} episode {e['episode']}: {_last_line(e['error'])}")
        self.line("\nFinal results:")
        self.line(f"Total episodes: {total}")
        self.line(f"Total successes: {successes}")
        self.line(f"Overall success rate: {rate:.4f} ({rate * 100:.1f}%)")
        summary = {"task_suite_name": self.suite_name, "total_episodes": total, "total_successes": successes,
                   "success_rate": rate, "num_errors": len(errors), "errors": errors, "per_task": per_task}
        tmp = self.run_dir / (SUMMARY_FILE + ".tmp")
        tmp.write_text(json.dumps(summary, indent=2))
        tmp.replace(self.run_dir / SUMMARY_FILE)
        return summary

    def close(self) -> None:
        self._log.close()
        self._results.close()


def _last_line(text: str) -> str:
    """The exception line of a traceback (its last non-empty line)."""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1].strip() if lines else text
