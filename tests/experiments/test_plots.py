"""Training-curve and success-rate figures are written as real, non-trivial PNG files."""

import json

import pytest

from craft_experiments.common_utils import plots
from craft_experiments.common_utils.tables import ResultRecord, build_table
from craft_experiments.common_utils.wandb_logs import MetricHistory

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _history(craft=True, budget=0.05):
    h = MetricHistory("test", config={"craft_retention_budget": budget} if budget is not None else {})
    for step in range(1, 51):
        h.add(step, plots.ACTION_LOSS, 1.0 / step)
        if craft:
            h.add(step, plots.RETENTION_LOSS, 0.02 * step ** 0.5)
            h.add(step, plots.LAMBDA, 0.01 * step)
            h.add(step, plots.CONFLICT_RATIO, 0.3)
            h.add(step, plots.GRADIENT_COSINE, -0.1)
    return h.finalize()


def _assert_png(path, min_bytes=5_000):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > min_bytes, (path, len(data))


def test_training_curves_all_panels(tmp_path):
    path = plots.plot_training_curves(_history(), tmp_path / "curves" / "craft.png", "CRaFT | spatial | seed 7")
    _assert_png(path, 20_000)
    assert not list(tmp_path.rglob(".*.tmp"))  # written atomically


def test_budget_line_comes_from_the_config_or_the_argument(tmp_path):
    assert plots.retention_budget(_history(budget=0.05)) == 0.05
    assert plots.retention_budget(_history(budget=None)) is None
    assert plots.retention_budget(MetricHistory("x", config={"craft_retention_budget": {"value": 0.3}})) == 0.3
    # a figure with the budget differs from one without it
    with_budget = plots.plot_training_curves(_history(budget=None), tmp_path / "a.png", "t", budget=0.2).read_bytes()
    without = plots.plot_training_curves(_history(budget=None), tmp_path / "b.png", "t").read_bytes()
    assert with_budget != without


def test_baseline_has_only_the_loss_panel_and_empty_history_is_an_error(tmp_path):
    _assert_png(plots.plot_training_curves(_history(craft=False), tmp_path / "baseline.png", "baseline"))
    with pytest.raises(ValueError, match="none of the metrics"):
        plots.plot_training_curves(MetricHistory("empty"), tmp_path / "empty.png", "empty")


def test_metric_comparison(tmp_path):
    path = plots.plot_metric_comparison({"baseline": _history(craft=False), "CRaFT": _history()}, plots.ACTION_LOSS,
                                        tmp_path / "cmp.png", "action loss")
    _assert_png(path)
    with pytest.raises(ValueError, match="no run logged"):
        plots.plot_metric_comparison({"baseline": _history(craft=False)}, plots.LAMBDA, tmp_path / "x.png", "λ")


def test_success_bars(tmp_path):
    records = [ResultRecord(m, s, seed, r) for m, base in (("baseline", 0.7), ("CRaFT", 0.8))
               for s in ("libero_spatial", "libero_object") for seed, r in ((7, base), (8, base + 0.1))]
    path = plots.plot_success_bars(build_table(records), tmp_path / "bars.png", "Table 1")
    _assert_png(path)
    with pytest.raises(ValueError, match="no result"):
        plots.plot_success_bars(build_table([], methods=["a"], suites=["libero_spatial"]), tmp_path / "n.png", "t")


def test_cli(tmp_path, capsys):
    runs = tmp_path / "runs"
    for name in ("craft--libero_spatial--seed7", "empty-run"):
        (runs / name).mkdir(parents=True)
    (runs / "craft--libero_spatial--seed7" / "metrics.jsonl").write_text(
        "\n".join(json.dumps({"step": s, "loss": 1.0 / s, "retention_loss": 0.01 * s, "lambda": 0.1}) for s in range(1, 20)))
    assert plots.main(["--runs", str(runs), "--out", str(tmp_path / "png"), "--budget", "0.1"]) == 0
    _assert_png(tmp_path / "png" / "craft--libero_spatial--seed7.png")
    assert "empty-run" in capsys.readouterr().err
