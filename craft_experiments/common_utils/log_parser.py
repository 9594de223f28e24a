"""Success rates from LIBERO evaluation outputs, the latest checkpoint of a run, and a table CLI.

Two evaluation outputs are understood (both written by `experiments/robot/libero/run_libero_eval.py`):

* the upstream log `EVAL-<suite>-<model_family>-<date_time>[--<note>].txt` (facts §7.2). Lines may carry a
  logger prefix; what is read: `Task suite: <suite>`, `Task: <description>` (the task context of the
  following lines), `Success: True|False` (one per episode), `Current task success rate: <float>`,
  `Total episodes: N`, `Total successes: S` and the final `Overall success rate: 0.8500 (85.0%)`.
  A log without the final line is an unfinished evaluation, which is an error, never a partial result.
* the JSONL results file (`results.jsonl` in the evaluator's run directory), one line per episode:
  {"task_id", "task", "episode", "success", "steps", "seconds", "error"}.

When both exist for one evaluation they must agree (episodes and successes); a disagreement is an error.

CLI (tables over seeds from a tree of logs):

    python -m craft_experiments.common_utils.log_parser --logs outputs/craft_experiments/runs --format md
    python -m craft_experiments.common_utils.log_parser --wandb RUN_DIR_OR_ENTITY/PROJECT/RUN_ID --format csv
    python craft_experiments/common_utils/log_parser.py --wandb_project "vla-craft-training" --output_dir "results/" \
        --generate_latex_table     # every run of a W&B project (public API, needs network + login) -> results/

With --output_dir the tables are written there (`success_rates.{md,csv}` from --logs,
`wandb_<project>.{md,csv}` from --wandb_project, `wandb_runs.{md,csv}` from --wandb; `.tex` too with
--generate_latex_table) and a one-line summary is printed; without it the table goes to stdout (--output, --format).

Rows (methods) and seeds of the `--logs` table come from the `run.json` the drivers write next to each
evaluation; for other logs, from the log's `--<note>` suffix, else from its directory name (a
`seed<k>` part gives the seed and is removed from the method name).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

if not __package__:  # run as a file (`python craft_experiments/common_utils/log_parser.py`): the repository on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from craft_experiments.common_utils.tables import ResultRecord, build_table, render_table  # noqa: E402

log = logging.getLogger(__name__)

# ---- upstream log lines (facts §7.2) ----
_TASK_RE = re.compile(r"(?:^|\s)Task:\s+(?P<task>.*\S)\s*$")
_SUCCESS_RE = re.compile(r"(?:^|\s)Success:\s*(?P<value>True|False)\s*$")
_CURRENT_TASK_RATE_RE = re.compile(r"Current task success rate:\s*(?P<rate>[-+0-9.eE]+)")
_TOTAL_EPISODES_RE = re.compile(r"Total episodes:\s*(?P<n>\d+)")
_TOTAL_SUCCESSES_RE = re.compile(r"Total successes:\s*(?P<n>\d+)")
_OVERALL_RE = re.compile(r"Overall success rate:\s*(?P<rate>[-+0-9.eE]+)")
_SUITE_RE = re.compile(r"Task suite:\s*(?P<suite>\S+)")
_LOG_NAME_RE = re.compile(r"^EVAL-(?P<suite>[^-]+)-(?P<rest>.*?)(?:--(?P<note>[^/]+))?\.txt$")
_SUITE_IN_NAME_RE = re.compile(r"(libero_[a-z0-9]+)")
# The "Overall" line has 4 decimals; the counts must reproduce it to that precision.
_RATE_TOLERANCE = 5.1e-5
JSONL_KEYS = ("task_id", "task", "episode", "success", "steps", "seconds", "error")

# ---- checkpoints (INTERFACES: run_root_dir/{run_id}--{step}_chkpt/, written atomically) ----
_CHECKPOINT_RE = re.compile(r"^(?P<run_id>.+)--(?P<step>\d+)_chkpt$")

# File the drivers write in every run directory (see run_state.py); read here to group logs.
RUN_INFO_FILE = "run.json"
_SEED_RE = re.compile(r"(?:^|[-_+])seed[-_=]?(?P<seed>\d+)")
_GENERIC_DIR_NAMES = {"eval", "evals", "logs", "log", "results"}


class EvalParseError(ValueError):
    """An evaluation output that cannot be turned into a success rate (message names the file)."""


@dataclass(frozen=True)
class TaskResult:
    task: str
    episodes: int
    successes: int

    @property
    def success_rate(self) -> float:
        return self.successes / self.episodes if self.episodes else float("nan")


@dataclass(frozen=True)
class EvalResult:
    """One finished evaluation of one checkpoint on one suite."""

    source: Path
    suite: str | None
    episodes: int
    successes: int
    success_rate: float  # in [0, 1]
    tasks: tuple[TaskResult, ...] = field(default=())

    def to_dict(self) -> dict:
        return {
            "source": str(self.source), "suite": self.suite, "episodes": self.episodes, "successes": self.successes,
            "success_rate": self.success_rate,
            "tasks": [{"task": t.task, "episodes": t.episodes, "successes": t.successes} for t in self.tasks],
        }


def _suite_from_log_name(path: Path) -> str | None:
    m = _LOG_NAME_RE.match(path.name)
    return m.group("suite") if m else None


def parse_eval_log(path: str | Path) -> EvalResult:
    """Parse one upstream-format evaluation log. Raises EvalParseError if it is unfinished or inconsistent.

    The evaluator appends to the same log when it resumes an interrupted run, so the LAST "Overall success
    rate" line and the totals just before it are the final state. Per-task results come from the
    `Success:` lines under each `Task:` line; when a resume re-ran episodes, those lines no longer add up
    to the totals and per-task detail is left to the JSONL results (see `parse_eval_pair`).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise EvalParseError(f"cannot read evaluation log {path}: {e}") from e
    counts: dict[str, list[int]] = {}  # task -> [episodes, successes], in order of appearance
    reported_task_rate: dict[str, tuple[float, int]] = {}  # task -> (rate, line number)
    current: str | None = None
    overall: tuple[float, int] | None = None
    total_episodes = total_successes = None  # the totals printed before the last "Overall" line
    pending_episodes = pending_successes = None
    suite = None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if m := _TASK_RE.search(line):
            current = m.group("task")
            counts.setdefault(current, [0, 0])
        elif m := _SUCCESS_RE.search(line):
            if current is None:
                raise EvalParseError(f"{path}:{lineno}: 'Success:' line before any 'Task:' line")
            counts[current][0] += 1
            counts[current][1] += m.group("value") == "True"
        elif m := _CURRENT_TASK_RATE_RE.search(line):
            if current is None:
                raise EvalParseError(f"{path}:{lineno}: 'Current task success rate' before any 'Task:' line")
            reported_task_rate[current] = (_parse_rate(m.group("rate"), path, lineno), lineno)
        elif m := _OVERALL_RE.search(line):
            overall = (_parse_rate(m.group("rate"), path, lineno), lineno)
            total_episodes, total_successes = pending_episodes, pending_successes
        elif m := _TOTAL_EPISODES_RE.search(line):
            pending_episodes = int(m.group("n"))
        elif m := _TOTAL_SUCCESSES_RE.search(line):
            pending_successes = int(m.group("n"))
        elif m := _SUITE_RE.search(line):
            suite = m.group("suite")
    if overall is None:
        raise EvalParseError(f"{path}: no 'Overall success rate' line: the evaluation did not finish")
    rate, overall_line = overall
    counted_episodes = sum(c[0] for c in counts.values())
    counted_successes = sum(c[1] for c in counts.values())
    if total_episodes is None or total_successes is None:
        if counted_episodes == 0:
            raise EvalParseError(f"{path}: no 'Success:' lines and no 'Total episodes'/'Total successes' lines; "
                                 "cannot tell how many episodes the rate is over")
        total_episodes, total_successes = counted_episodes, counted_successes
    if total_episodes == 0 or abs(rate - total_successes / total_episodes) > _RATE_TOLERANCE:
        raise EvalParseError(f"{path}:{overall_line}: 'Overall success rate: {rate}' does not match "
                             f"{total_successes}/{total_episodes} episodes")
    tasks: tuple[TaskResult, ...] = ()
    if (counted_episodes, counted_successes) == (total_episodes, total_successes):
        for task, (task_rate, lineno) in reported_task_rate.items():
            episodes, successes = counts[task]
            if episodes and abs(task_rate - successes / episodes) > 1e-4:
                raise EvalParseError(f"{path}:{lineno}: task {task!r} reports success rate {task_rate} but its "
                                     f"'Success:' lines give {successes}/{episodes}")
        tasks = tuple(TaskResult(t, e, s) for t, (e, s) in counts.items())
    return EvalResult(path, suite or _suite_from_log_name(path), total_episodes, total_successes,
                      total_successes / total_episodes, tasks)


def _parse_rate(raw: str, path: Path, lineno: int) -> float:
    try:
        rate = float(raw)
    except ValueError as e:
        raise EvalParseError(f"{path}:{lineno}: success rate {raw!r} is not a number") from e
    if not (0.0 <= rate <= 1.0) or math.isnan(rate):
        raise EvalParseError(f"{path}:{lineno}: success rate {rate} is outside [0, 1]")
    return rate


def parse_results_jsonl(path: str | Path, suite: str | None = None) -> EvalResult:
    """Parse the per-episode JSONL results. `suite` defaults to a `libero_*` part of the file name.

    Same reading rules as the evaluator's own reader: an episode recorded twice (an errored episode run
    again on resume) counts once, with its newest record; a cut-off LAST line (a crash while writing)
    is ignored with a warning; any other malformed line is an error.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise EvalParseError(f"cannot read results file {path}: {e}") from e
    newest: dict[tuple[int, int], tuple[str, bool]] = {}  # (task_id, episode) -> (task, success)
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if lineno == len(lines):
                log.warning("%s: ignoring a cut-off last line (%s)", path, e.msg)
                continue
            raise EvalParseError(f"{path}:{lineno}: not valid JSON ({e.msg})") from e
        if not isinstance(row, dict) or (missing := [k for k in JSONL_KEYS if k not in row]):
            raise EvalParseError(f"{path}:{lineno}: missing keys {missing if isinstance(row, dict) else JSONL_KEYS}")
        task_id, episode, success = row["task_id"], row["episode"], row["success"]
        if not (type(task_id) is int and type(episode) is int and type(success) is bool):
            raise EvalParseError(f"{path}:{lineno}: task_id and episode must be integers and success a boolean, got "
                                 f"{task_id!r}, {episode!r}, {success!r}")
        newest[(task_id, episode)] = (str(row["task"]), success)
    if not newest:
        raise EvalParseError(f"{path}: no episodes in the results file")
    counts: dict[int, list] = {}  # task_id -> [task, episodes, successes]
    for (task_id, _), (task, success) in sorted(newest.items()):
        entry = counts.setdefault(task_id, [task, 0, 0])
        entry[1] += 1
        entry[2] += success
    tasks = tuple(TaskResult(t, e, s) for _, (t, e, s) in sorted(counts.items()))
    episodes, successes = sum(t.episodes for t in tasks), sum(t.successes for t in tasks)
    if suite is None and (m := _SUITE_IN_NAME_RE.search(path.stem)):
        suite = m.group(1)
    return EvalResult(path, suite, episodes, successes, successes / episodes, tasks)


def find_eval_outputs(directory: str | Path) -> list[tuple[Path | None, Path | None]]:
    """(log, jsonl) pairs in one directory. A JSONL file pairs with the log of the same stem, or with the
    only log when the directory holds exactly one of each; other JSONL files stand alone only in a
    directory without logs (so a results file is never counted twice)."""
    directory = Path(directory)
    logs = sorted(directory.glob("EVAL-*.txt"))
    if not logs and (own := directory / f"{directory.name}.txt").is_file():
        logs = [own]  # the evaluator names its log after its run directory (--run_id)
    jsonls = sorted(directory.glob("*.jsonl"))
    if len(logs) == 1 and len(jsonls) == 1:
        return [(logs[0], jsonls[0])]
    by_stem = {j.stem: j for j in jsonls}
    if logs:
        return [(log, by_stem.get(log.stem)) for log in logs]
    return [(None, j) for j in jsonls]


def parse_eval_pair(log: Path | None, jsonl: Path | None) -> EvalResult:
    """One evaluation from its log and/or its JSONL results, cross-checked when both exist."""
    if log is None and jsonl is None:
        raise ValueError("parse_eval_pair needs a log or a JSONL file")
    if log is None:
        return parse_results_jsonl(jsonl)
    result = parse_eval_log(log)
    if jsonl is not None:
        detail = parse_results_jsonl(jsonl, suite=result.suite)
        if (detail.episodes, detail.successes) != (result.episodes, result.successes):
            raise EvalParseError(f"{log} reports {result.successes}/{result.episodes} successes but {jsonl} holds "
                                 f"{detail.successes}/{detail.episodes}")
        if not result.tasks:
            result = EvalResult(result.source, result.suite, result.episodes, result.successes, result.success_rate,
                                detail.tasks)
    return result


def parse_eval_dir(directory: str | Path) -> EvalResult:
    """The single evaluation held in `directory` (what the drivers' `eval/` directories contain)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise EvalParseError(f"evaluation directory {directory} does not exist")
    pairs = find_eval_outputs(directory)
    if not pairs:
        raise EvalParseError(f"{directory}: no EVAL-*.txt log and no *.jsonl results file")
    if len(pairs) > 1:
        raise EvalParseError(f"{directory}: several evaluations ({[str(p[0] or p[1]) for p in pairs]}); expected one")
    return parse_eval_pair(*pairs[0])


# ---- checkpoints ----

def list_checkpoints(run_root_dir: str | Path) -> list[tuple[int, Path]]:
    """Every `*--<step>_chkpt` directory in `run_root_dir`, sorted by step (temporary dirs never match)."""
    root = Path(run_root_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        if (m := _CHECKPOINT_RE.match(child.name)) and child.is_dir():
            found.append((int(m.group("step")), child))
    return sorted(found)


def find_latest_checkpoint(run_root_dir: str | Path) -> tuple[int, Path] | None:
    """(step, path) of the checkpoint with the highest step, None if there is none. Two checkpoints with
    the same highest step (two run ids in one root) are ambiguous and raise ValueError."""
    found = list_checkpoints(run_root_dir)
    if not found:
        return None
    top = found[-1][0]
    tied = [p for s, p in found if s == top]
    if len(tied) > 1:
        raise ValueError(f"{run_root_dir}: several checkpoints at step {top}: {[p.name for p in tied]}; "
                         "give each run its own run_root_dir")
    return top, tied[0]


# ---- grouping logs of a whole tree into table records ----

def _identity_from_run_info(start: Path, root: Path) -> dict | None:
    for directory in [start, *start.parents][:4]:
        info = directory / RUN_INFO_FILE
        if info.is_file():
            try:
                return json.loads(info.read_text())
            except json.JSONDecodeError as e:
                raise EvalParseError(f"{info}: not valid JSON ({e.msg})") from e
        if directory == root:
            break
    return None


def _split_seed(name: str) -> tuple[str, int | None]:
    m = _SEED_RE.search(name)
    if not m:
        return name, None
    stripped = (name[: m.start()] + name[m.end():]).strip("-_+")
    return stripped or name, int(m.group("seed"))


def identify_evaluation(source: Path, root: Path) -> tuple[str, int | None]:
    """(method, seed) of one evaluation output, for grouping (see the module docstring)."""
    info = _identity_from_run_info(source.parent, root)
    if info is not None:
        return str(info["variant"]), info.get("seed")
    m = _LOG_NAME_RE.match(source.name)
    if m and m.group("note"):
        return _split_seed(m.group("note"))
    directory = source.parent
    while directory.name.lower() in _GENERIC_DIR_NAMES and directory != root and directory.parent != directory:
        directory = directory.parent
    return _split_seed(directory.name)


def collect_records(root: str | Path) -> tuple[list[ResultRecord], list[tuple[Path, str]]]:
    """Table records from every evaluation under `root`, and (path, reason) for each output that could
    not be used (unfinished, inconsistent, no suite)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"--logs directory {root} does not exist")
    records, problems = [], []
    directories = sorted({p.parent for p in root.rglob("EVAL-*.txt")} | {p.parent for p in root.rglob("*.jsonl")})
    for directory in directories:
        for log, jsonl in find_eval_outputs(directory):
            source = log or jsonl
            try:
                result = parse_eval_pair(log, jsonl)
                if result.suite is None:
                    raise EvalParseError(f"{source}: cannot tell the task suite (no 'Task suite:' line, no suite in the name)")
                method, seed = identify_evaluation(source, root)
            except EvalParseError as e:
                problems.append((source, str(e)))
                continue
            records.append(ResultRecord(method, result.suite, seed, result.success_rate, str(source)))
    return records, problems


DEFAULT_METRICS = "VLA Train/Loss,CRaFT/Retention Loss,CRaFT/Lambda,CRaFT/Conflict Ratio,CRaFT/Gradient Cosine"
# The retention probe's keys (finetune.py --probe_freq): added to the default --metrics for the runs that logged them.
PROBE_METRICS = ("Probe/VQA Accuracy", "Probe/Caption NLL", "Probe/Linear Probe Accuracy", "Probe/CKA to θ0")


def metric_columns(metrics: str | None, histories: dict) -> list[str]:
    """--metrics as given, or the default list plus each Probe/ metric that some of `histories` logged."""
    if metrics is not None:
        return [m.strip() for m in metrics.split(",") if m.strip()]
    probe = [m for m in PROBE_METRICS if any(h.last(m) is not None for h in histories.values())]
    return DEFAULT_METRICS.split(",") + probe


def _wandb_table(sources: list[str], metrics: str | None, fmt: str) -> str:
    from craft_experiments.common_utils.wandb_logs import load_history_source, render_last_values

    histories = {src: load_history_source(src) for src in sources}
    return render_last_values(histories, metric_columns(metrics, histories), fmt)


class WandbUnavailable(RuntimeError):
    """The W&B public API could not be used (no network, no login, no such project)."""


def fetch_project_histories(project: str, entity: str | None = None, api=None) -> dict[str, object]:
    """{run name: MetricHistory} of every run of a W&B project through the public API (`api`: injectable).
    Any failure of the API (no login, no network, unknown project) is one WandbUnavailable naming the project."""
    from craft_experiments.common_utils.wandb_logs import fetch_online_run

    path = f"{entity}/{project}" if entity else project
    try:
        if api is None:
            import wandb

            api = wandb.Api(timeout=30)
        runs = list(api.runs(path))
        if not runs:
            raise WandbUnavailable(f"W&B project {path!r} has no runs")
        histories = {}
        for run in runs:
            name = getattr(run, "name", None) or run.id
            histories[name if name not in histories else f"{name} ({run.id})"] = fetch_online_run(
                "/".join(run.path), api=api)
        return histories
    except WandbUnavailable:
        raise
    except Exception as e:  # wandb.errors.* (UsageError: no key, AuthenticationError / CommError: no network), OSError
        raise WandbUnavailable(
            f"cannot read W&B project {path!r} through the W&B API: {type(e).__name__}: {str(e).rstrip('.')}. "
            "The API needs network "
            "access and a login (`wandb login` or WANDB_API_KEY); without them, read local runs instead: "
            "--wandb <run or wandb/ directory>, or --logs <evaluation logs>") from e


def _write_tables(output_dir: Path, stem: str, render, latex: bool) -> list[Path]:
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in ("md", "csv") + (("tex",) if latex else ()):
        path = output_dir / f"{stem}.{fmt}"
        path.write_text(render(fmt))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m craft_experiments.common_utils.log_parser",
        description="Success-rate tables (mean ± sample std over seeds, ddof=1) from LIBERO evaluation logs, "
                    "and last values of training metrics from W&B runs.")
    parser.add_argument("--logs", type=Path, help="directory searched recursively for EVAL-*.txt logs / *.jsonl results")
    parser.add_argument("--wandb", action="append", default=[], metavar="SRC",
                        help="a W&B run: an offline/online run directory, a .wandb file, a directory holding them "
                             "(searched recursively), or ENTITY/PROJECT/RUN_ID (public API; needs a login). Repeatable.")
    parser.add_argument("--metrics", help=f"comma-separated metric keys for --wandb (default: {DEFAULT_METRICS}, plus "
                        "the Probe/ metrics of the retention probe when a run logged them)")
    parser.add_argument("--format", choices=("md", "tex", "csv"), default="md", help="output format (default: md)")
    parser.add_argument("--output", type=Path, help="write here instead of stdout")
    parser.add_argument("--strict", action="store_true", help="exit 1 if any evaluation output cannot be used")
    parser.add_argument("--wandb_project", help="every run of this W&B project (public API: needs network and a "
                        "login): a table of the last value of each --metrics key per run")
    parser.add_argument("--wandb_entity", help="the entity (user or team) of --wandb_project (default: yours)")
    parser.add_argument("--output_dir", type=Path, help="write the tables into this directory (md and csv; tex too "
                        "with --generate_latex_table) instead of stdout")
    parser.add_argument("--generate_latex_table", action="store_true",
                        help="also write the LaTeX table (.tex) into --output_dir (without --output_dir: = --format tex)")
    args = parser.parse_args(argv)
    if args.logs is None and not args.wandb and not args.wandb_project:
        parser.error("give --logs DIR, --wandb SRC and/or --wandb_project NAME")
    if args.output_dir is not None and args.output is not None:
        parser.error("--output writes one table, --output_dir several: give one of them")
    if args.wandb_entity and not args.wandb_project:
        parser.error("--wandb_entity is the entity of --wandb_project")
    if args.output_dir is not None:
        return _main_to_directory(args)
    if args.generate_latex_table:
        args.format = "tex"
    if args.wandb_project:
        parser.error("--wandb_project writes its tables into --output_dir; give one (e.g. --output_dir results/)")
    parts, status = [], 0
    if args.logs is not None:
        records, problems = collect_records(args.logs)
        for path, reason in problems:
            print(f"skipped {path}: {reason}", file=sys.stderr)
        if problems and args.strict:
            status = 1
        if not records:
            print(f"no finished evaluation under {args.logs}", file=sys.stderr)
            return 1
        parts.append(render_table(build_table(records), args.format))
    if args.wandb:
        parts.append(_wandb_table(args.wandb, args.metrics, args.format))
    text = "\n".join(parts)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    return status


def _main_to_directory(args: argparse.Namespace) -> int:
    """--output_dir: every requested table in md + csv (+ tex), one line per file written."""
    written, status = [], 0
    if args.logs is not None:
        records, problems = collect_records(args.logs)
        for path, reason in problems:
            print(f"skipped {path}: {reason}", file=sys.stderr)
        if problems and args.strict:
            status = 1
        if not records:
            print(f"no finished evaluation under {args.logs}", file=sys.stderr)
            return 1
        table = build_table(records)
        written += _write_tables(args.output_dir, "success_rates", lambda fmt: render_table(table, fmt),
                                 args.generate_latex_table)
    if args.wandb:
        from craft_experiments.common_utils.wandb_logs import load_history_source, render_last_values

        histories = {src: load_history_source(src) for src in args.wandb}
        metrics = metric_columns(args.metrics, histories)
        written += _write_tables(args.output_dir, "wandb_runs", lambda fmt: render_last_values(histories, metrics, fmt),
                                 args.generate_latex_table)
    if args.wandb_project:
        from craft_experiments.common_utils.wandb_logs import render_last_values

        try:
            histories = fetch_project_histories(args.wandb_project, args.wandb_entity)
        except WandbUnavailable as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        stem = "wandb_" + re.sub(r"[^\w.-]+", "_", args.wandb_project)
        project_metrics = metric_columns(args.metrics, histories)
        written += _write_tables(args.output_dir, stem, lambda fmt: render_last_values(histories, project_metrics, fmt),
                                 args.generate_latex_table)
    for path in written:
        print(f"wrote {path}")
    return status


if __name__ == "__main__":
    sys.exit(main())
