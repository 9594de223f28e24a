"""Mean ± sample std over seeds, the Avg. column, and the Markdown / LaTeX / CSV renderings."""

import csv
import io
import math

import pytest

from craft_experiments.common_utils.tables import (
    AVERAGE,
    ResultRecord,
    aggregate,
    build_table,
    format_stat,
    render_csv,
    render_latex,
    render_markdown,
    render_table,
)


def _records(method, suite, rates, seeds=(7, 8, 9)):
    return [ResultRecord(method, suite, seed, rate) for seed, rate in zip(seeds, rates)]


def test_mean_and_sample_std_by_hand():
    stat = aggregate([0.8, 0.9, 1.0])
    assert stat.n == 3 and math.isclose(stat.mean, 90.0) and math.isclose(stat.std, 10.0)  # ddof=1, not 8.16
    assert format_stat(stat, "md") == "90.0 ± 10.0"
    assert format_stat(stat, "tex") == r"90.0 $\pm$ 10.0"


def test_single_seed_has_no_std_and_empty_cell_is_na():
    assert format_stat(aggregate([0.85]), "md") == "85.0 ± –"
    assert format_stat(aggregate([0.85]), "tex") == r"85.0 $\pm$ --"
    assert format_stat(aggregate([]), "md") == "n/a"


def test_average_is_per_seed_over_suites_then_over_seeds():
    records = (_records("A", "libero_spatial", [0.8, 0.9, 1.0]) + _records("A", "libero_object", [1.0, 0.9, 0.8])
               + _records("B", "libero_spatial", [0.5, 0.6]))  # B lacks libero_object: no average
    table = build_table(records, suites=["libero_spatial", "libero_object"])
    assert table.suites == ("libero_spatial", "libero_object", AVERAGE)
    avg = table.cell("A", AVERAGE)
    assert avg.values == (90.0, 90.0, 90.0) and avg.std == 0.0
    assert table.cell("B", AVERAGE).n == 0
    # seeds present in only one suite do not enter the average
    records += [ResultRecord("C", "libero_spatial", 1, 1.0), ResultRecord("C", "libero_object", 1, 0.5),
                ResultRecord("C", "libero_spatial", 2, 0.0)]
    table = build_table(records, suites=["libero_spatial", "libero_object"])
    assert table.cell("C", AVERAGE).values == (75.0,)


def test_unseeded_records_average_without_std():
    records = [ResultRecord("A", "libero_spatial", None, 0.8), ResultRecord("A", "libero_object", None, 0.6)]
    table = build_table(records)
    avg = table.cell("A", AVERAGE)
    assert math.isclose(avg.mean, 70.0) and avg.std is None and format_stat(avg, "md") == "70.0"


def test_duplicate_seed_is_an_error():
    with pytest.raises(ValueError, match="two results for A / libero_spatial / seed 7"):
        build_table(_records("A", "libero_spatial", [0.8]) + _records("A", "libero_spatial", [0.9]))


def test_success_rate_out_of_range_is_an_error():
    with pytest.raises(ValueError, match="success_rate must be in"):
        ResultRecord("A", "libero_spatial", 1, 85.0)


def _two_method_table():
    records = (_records("baseline", "libero_spatial", [0.8, 0.9, 1.0]) + _records("baseline", "libero_10", [0.5, 0.6, 0.7])
               + _records("CRaFT_x", "libero_spatial", [0.9, 1.0, 0.95]) + _records("CRaFT_x", "libero_10", [0.7], seeds=(7,)))
    return build_table(records, methods=["baseline", "CRaFT_x"], suites=["libero_spatial", "libero_10"])


def test_markdown():
    md = render_markdown(_two_method_table(), title="Table 1")
    lines = md.splitlines()
    assert lines[0] == "**Table 1**"
    assert "| Method | Spatial | Long | Avg. |" in lines
    assert "| baseline | 90.0 ± 10.0 | 60.0 ± 10.0 | 75.0 ± 10.0 |" in lines
    # Avg. of CRaFT_x: only seed 7 has both suites -> (90 + 70) / 2; fewer seeds than the table's 3 -> (n=1)
    assert "| CRaFT_x | **95.0 ± 5.0** | **70.0 ± –** (n=1) | **80.0 ± –** (n=1) |" in lines
    assert "sample std over seeds (ddof=1)" in md


def test_latex_escapes_and_booktabs():
    tex = render_latex(_two_method_table(), title="Table 1: 50% & more")
    assert r"\begin{tabular}{lccc}" in tex and r"\toprule" in tex and r"\bottomrule" in tex
    assert r"CRaFT\_x & \textbf{95.0 $\pm$ 5.0}" in tex
    assert r"% Table 1: 50\% \& more" in tex


def test_csv_long_format():
    rows = list(csv.DictReader(io.StringIO(render_csv(_two_method_table()))))
    assert len(rows) == 6
    spatial = next(r for r in rows if r["method"] == "baseline" and r["suite"] == "libero_spatial")
    assert spatial == {"method": "baseline", "suite": "libero_spatial", "n": "3", "mean": "90.0000", "std": "10.0000",
                       "seeds": "7;8;9", "values": "80.0000;90.0000;100.0000"}
    single = next(r for r in rows if r["method"] == "CRaFT_x" and r["suite"] == "libero_10")
    assert single["std"] == "" and single["n"] == "1"


def test_ties_bold_all_unless_everyone_ties():
    records = [ResultRecord(m, "libero_spatial", 1, r) for m, r in (("a", 0.9), ("b", 0.9), ("c", 0.5))]
    md = render_markdown(build_table(records))
    assert "| a | **90.0 ± –** |" in md and "| b | **90.0 ± –** |" in md and "| c | 50.0 ± – |" in md
    md = render_markdown(build_table(records[:2]))
    assert "**90.0" not in md


def test_render_table_rejects_unknown_format():
    with pytest.raises(ValueError, match="unknown table format"):
        render_table(_two_method_table(), "html")
