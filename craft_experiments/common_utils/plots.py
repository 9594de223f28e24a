"""Figures for the paper: training curves per run and success-rate bar charts (matplotlib, Agg, PNG).

    python -m craft_experiments.common_utils.plots --runs outputs/craft_experiments/runs --out plots/
      one PNG of training curves per run directory (searched recursively for W&B files, else metrics.jsonl)

Metric keys are the W&B keys of CRAFT_SPEC.md. Panels whose metric a run never logged (a baseline has no
λ) are left out; a run that logged none of them is an error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless, and identical on every platform
import matplotlib.pyplot as plt  # noqa: E402

from craft_experiments.common_utils.tables import AVERAGE, SUITE_TITLES, ResultTable  # noqa: E402
from craft_experiments.common_utils.wandb_logs import MetricHistory, load_run_history  # noqa: E402

ACTION_LOSS = "VLA Train/Loss"
RETENTION_LOSS = "CRaFT/Retention Loss"
LAMBDA = "CRaFT/Lambda"
CONFLICT_RATIO = "CRaFT/Conflict Ratio"
GRADIENT_COSINE = "CRaFT/Gradient Cosine"
# The run-config key of ε (the FinetuneConfig flag), drawn as the budget line on the L_ret panel.
BUDGET_CONFIG_KEY = "craft_retention_budget"


@dataclass(frozen=True)
class Panel:
    key: str
    ylabel: str
    log_y: bool = False


TRAINING_PANELS = (
    Panel(ACTION_LOSS, "action loss L_act (L1)", log_y=True),
    Panel(RETENTION_LOSS, "retention loss L_ret"),
    Panel(LAMBDA, "λ"),
    Panel(CONFLICT_RATIO, "conflict ratio"),
    Panel(GRADIENT_COSINE, "cos(g_act, g_ret)"),
)


def retention_budget(history: MetricHistory) -> float | None:
    """ε from the run config (W&B config or finetune_config), None if the run did not record it."""
    value = history.config.get(BUDGET_CONFIG_KEY)
    if isinstance(value, dict):  # W&B's {"value": ...} wrapping in some exports
        value = value.get("value")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def plot_training_curves(history: MetricHistory, out_path: str | Path, title: str,
                         budget: float | None = None) -> Path:
    """One PNG with a panel per logged metric of TRAINING_PANELS; ε (argument, else the run config) is a
    dashed line on the L_ret panel."""
    panels = [p for p in TRAINING_PANELS if history.series.get(p.key)]
    if not panels:
        raise ValueError(f"{history.source}: none of the metrics {[p.key for p in TRAINING_PANELS]} was logged")
    budget = budget if budget is not None else retention_budget(history)
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, panel in zip(axes.flat, panels):
        steps, values = history.steps_values(panel.key)
        ax.plot(steps, values, marker="." if len(steps) < 30 else None, linewidth=1.2)
        if panel.key == RETENTION_LOSS:
            if budget is not None:
                ax.axhline(budget, color="tab:red", linestyle="--", linewidth=1.0, label=f"budget ε = {budget:g}")
            else:
                ax.plot([], [], " ", label="ε not recorded")
            ax.legend(loc="best", fontsize=8)
        if panel.log_y and _spans_decades(values):
            ax.set_yscale("log")
        ax.set_title(panel.key, fontsize=9)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(panel.ylabel)
        ax.grid(True, alpha=0.3)
    fig.suptitle(title, fontsize=10)
    return _save(fig, out_path)


def plot_metric_comparison(histories: dict[str, MetricHistory], key: str, out_path: str | Path, title: str) -> Path:
    """One metric of several runs on shared axes (e.g. the action loss of baseline vs CRaFT)."""
    present = {label: h for label, h in histories.items() if h.series.get(key)}
    if not present:
        raise ValueError(f"no run logged {key!r}")
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for label, history in present.items():
        steps, values = history.steps_values(key)
        ax.plot(steps, values, label=label, linewidth=1.2)
    if key == ACTION_LOSS and _spans_decades([v for h in present.values() for v in h.steps_values(key)[1]]):
        ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(key)
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out_path)


def plot_success_bars(table: ResultTable, out_path: str | Path, title: str) -> Path:
    """Grouped bars: one group per suite (and Avg.), one bar per method, error bars = sample std over seeds."""
    methods = [m for m in table.methods if any(table.cell(m, s).n for s in table.suites)]
    if not methods:
        raise ValueError("the table has no result to plot")
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(1.2 + 1.3 * len(table.suites) * max(1, len(methods) / 2), 3.8))
    for i, method in enumerate(methods):
        xs, means, errs = [], [], []
        for j, suite in enumerate(table.suites):
            stat = table.cell(method, suite)
            if stat.n:
                xs.append(j + (i - (len(methods) - 1) / 2) * width)
                means.append(stat.mean)
                errs.append(stat.std or 0.0)
        bars = ax.bar(xs, means, width * 0.95, yerr=errs, capsize=3, label=method)
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
    ax.set_xticks(range(len(table.suites)), [SUITE_TITLES.get(s, s) if s != AVERAGE else "Avg." for s in table.suites])
    ax.set_ylabel("success rate (%)")
    ax.set_ylim(0, 105)
    ax.set_title(title, fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, out_path)


def _spans_decades(values: list[float]) -> bool:
    """Log scale only helps when a positive curve spans more than a decade (a loss falling from 1 to 0.01)."""
    return min(values) > 0 and max(values) / min(values) > 10


def _save(fig, out_path: str | Path) -> Path:
    """Write the PNG atomically (temp file, then rename) and close the figure."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    fig.tight_layout()
    fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    tmp.replace(out_path)
    return out_path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m craft_experiments.common_utils.plots",
                                     description="Training-curve PNGs (action loss, L_ret vs ε, λ, conflict ratio, "
                                                 "gradient cosine) for every run directory under --runs.")
    parser.add_argument("--runs", type=Path, help="a directory whose subdirectories are runs (e.g. <output_dir>/runs)")
    parser.add_argument("--run", type=Path, action="append", default=[], help="one run directory (repeatable)")
    parser.add_argument("--out", type=Path, required=True, help="output directory for the PNG files")
    parser.add_argument("--budget", type=float, help="ε to draw (default: the one in each run's config)")
    args = parser.parse_args(argv)
    candidates = list(args.run)
    if args.runs is not None:
        if not args.runs.is_dir():
            parser.error(f"--runs {args.runs} is not a directory")
        candidates += sorted(d for d in args.runs.iterdir() if d.is_dir())
    if not candidates:
        parser.error("give --runs DIR and/or --run DIR")
    written = 0
    for run_dir in candidates:
        history = load_run_history(run_dir)
        if history is None:
            print(f"skipped {run_dir}: no W&B files and no metrics.jsonl", file=sys.stderr)
            continue
        path = plot_training_curves(history, args.out / f"{run_dir.name}.png", run_dir.name, args.budget)
        print(path)
        written += 1
    return 0 if written else 1


if __name__ == "__main__":
    sys.exit(main())
