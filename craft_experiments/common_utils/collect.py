"""Turn a table's finished runs into its tables (Markdown, LaTeX, CSV) and plots (PNG).

    <output_dir>/tables/<table>.md | .tex | .csv      success rates, mean ± sample std over seeds
    <output_dir>/plots/<table>/success_rates.png       bars per suite (+ Avg.), one per row, std error bars
    <output_dir>/plots/<table>/curves/<run>.png        training curves of each run (W&B or metrics.jsonl)
    <output_dir>/plots/<table>/action_loss--<suite>--seed<k>.png   the rows' action losses on shared axes
    <output_dir>/tables/<table>.probe.md | .csv       per run: success rate beside the last logged retention-probe
                                                       values (finetune.py --probe_freq; only the Probe/ metrics
                                                       some run logged; no file when none did)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from craft_experiments.common_utils.experiment_plan import PlannedRun, Row, TableSpec
from craft_experiments.common_utils.log_parser import find_latest_checkpoint
from craft_experiments.common_utils.run_state import RESULT, read_json
from craft_experiments.common_utils.tables import ResultRecord, ResultTable, build_table, render_table

FINETUNE_CONFIG_FILE = "finetune_config.json"  # prismatic.constants.FINETUNE_CONFIG_FILE (not imported: torch)
# The retention probe's W&B keys (prismatic.training.metrics.WANDB_KEYS; not imported: torch), in column order.
PROBE_METRICS = ("Probe/VQA Accuracy", "Probe/Caption NLL", "Probe/Linear Probe Accuracy", "Probe/CKA to θ0")


@dataclass
class Collected:
    table: ResultTable
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # expected gaps (e.g. no training history with W&B disabled)
    problems: list[str] = field(default_factory=list)  # things that should have worked and did not


def _write_atomic(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def result_records(runs: list[PlannedRun]) -> tuple[list[ResultRecord], list[str]]:
    """One record per run with a RESULT.json, and a problem per unreadable one."""
    records, problems = [], []
    for run in runs:
        try:
            result = read_json(run.run_dir / RESULT)
            if result is not None:
                records.append(ResultRecord(run.row.label, run.suite, run.seed, float(result["success_rate"]),
                                            str(run.run_dir / RESULT)))
        except (ValueError, KeyError, TypeError) as e:
            problems.append(f"{run.run_dir / RESULT}: unusable result ({e!r}); the table leaves it out")
    return records, problems


def _budget_from_checkpoint(run: PlannedRun) -> float | None:
    """ε from the last checkpoint's resolved trainer config (used when the history has no run config)."""
    latest = find_latest_checkpoint(run.train_root)
    if latest is None or not (latest[1] / FINETUNE_CONFIG_FILE).is_file():
        return None
    value = json.loads((latest[1] / FINETUNE_CONFIG_FILE).read_text()).get("craft_retention_budget")
    return float(value) if isinstance(value, (int, float)) else None


def collect_table(table: TableSpec, rows: tuple[Row, ...], runs: list[PlannedRun], suites: tuple[str, ...],
                  output_dir: Path, plots: bool = True) -> Collected:
    records, problems = result_records(runs)
    result = Collected(build_table(records, [r.label for r in rows], suites), problems=problems)
    for fmt in ("md", "tex", "csv"):
        text = render_table(result.table, fmt, title=table.title)
        result.files.append(_write_atomic(output_dir / "tables" / f"{table.name}.{fmt}", text))
    _probe_table(table, runs, records, output_dir, result)
    if plots:
        _plot(table, rows, runs, output_dir / "plots" / table.name, result)
    return result


def probe_values(runs: list[PlannedRun]) -> tuple[dict[str, dict[str, float]], list[str]]:
    """{run name: {Probe/ metric: last logged value}} of the runs that logged any, and a problem per unreadable
    history."""
    from craft_experiments.common_utils.wandb_logs import load_run_history

    values, problems = {}, []
    for run in runs:
        if not run.train_root.is_dir():
            continue
        try:
            history = load_run_history(run.train_root)
        except (OSError, ValueError) as e:
            problems.append(f"{run.name}: cannot read its training history for the probe table: {e}")
            continue
        if history is None:
            continue
        last = {key: history.last(key) for key in PROBE_METRICS if history.last(key) is not None}
        if last:
            values[run.name] = last
    return values, problems


def render_probe_table(runs: list[PlannedRun], records: list[ResultRecord], values: dict[str, dict[str, float]],
                       fmt: str) -> str:
    """One row per run that logged the probe: method, suite, seed, success rate (%), the last Probe/ values;
    columns only for the metrics some run logged."""
    import csv
    import io

    metrics = [m for m in PROBE_METRICS if any(m in v for v in values.values())]
    success = {(r.method, r.suite, r.seed): r.success_rate for r in records}
    rows = []
    for run in runs:
        if run.name not in values:
            continue
        rate = success.get((run.row.label, run.suite, run.seed))
        rows.append([run.row.label, run.suite, str(run.seed), "" if rate is None else f"{100 * rate:.1f}",
                     *("" if values[run.name].get(m) is None else f"{values[run.name][m]:.4f}" for m in metrics)])
    header = ["method", "suite", "seed", "success rate (%)", *metrics]
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        return out.getvalue()
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    lines += ["| " + " | ".join(c or "n/a" for c in row) + " |" for row in rows]
    return "\n".join(lines + ["", "Retention probe: the last value each run logged (docs/RETENTION_PROBE.md); "
                                  "success rate of that run's evaluation."]) + "\n"


def _probe_table(table: TableSpec, runs: list[PlannedRun], records: list[ResultRecord], output_dir: Path,
                 result: Collected) -> None:
    values, problems = probe_values(runs)
    result.problems.extend(problems)
    if not values:
        return
    for fmt in ("md", "csv"):
        text = render_probe_table(runs, records, values, fmt)
        result.files.append(_write_atomic(output_dir / "tables" / f"{table.name}.probe.{fmt}", text))


def _plot(table: TableSpec, rows: tuple[Row, ...], runs: list[PlannedRun], plot_dir: Path, result: Collected) -> None:
    from craft_experiments.common_utils import plots  # lazy: matplotlib
    from craft_experiments.common_utils.wandb_logs import load_run_history

    if any(result.table.cell(m, s).n for m in result.table.methods for s in result.table.suites):
        result.files.append(plots.plot_success_bars(result.table, plot_dir / "success_rates.png", table.title))
    histories: dict[tuple[str, int], dict] = {}
    for run in runs:
        try:
            history = load_run_history(run.train_root) if run.train_root.is_dir() else None
        except (OSError, ValueError) as e:
            result.problems.append(f"{run.name}: cannot read its training history: {e}")
            continue
        if history is None:
            if run.train_root.is_dir():
                result.notes.append(f"{run.name}: no W&B run and no metrics.jsonl, no training curves")
            continue
        try:
            budget = plots.retention_budget(history) or _budget_from_checkpoint(run)
            title = f"{run.row.label} | {run.suite} | seed {run.seed}"
            result.files.append(plots.plot_training_curves(history, plot_dir / "curves" / f"{run.name}.png", title,
                                                           budget))
        except (OSError, ValueError) as e:
            result.problems.append(f"{run.name}: training-curve plot failed: {e}")
            continue
        histories.setdefault((run.suite, run.seed), {})[run.row.label] = history
    for (suite, seed), by_row in histories.items():
        if len(by_row) < 2:
            continue
        out = plot_dir / f"action_loss--{suite}--seed{seed}.png"
        try:
            result.files.append(plots.plot_metric_comparison(by_row, plots.ACTION_LOSS, out,
                                                             f"{table.name}: action loss, {suite}, seed {seed}"))
        except ValueError as e:
            result.problems.append(f"{out.name}: {e}")
