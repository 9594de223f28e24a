"""Success-rate tables: mean ± std over seeds, rendered as Markdown, LaTeX or CSV.

Conventions (stated in every rendered table):
* values are success rates in percent, one decimal;
* std is the SAMPLE standard deviation over seeds (ddof=1): 0.8, 0.9, 1.0 -> 90.0 ± 10.0;
* with a single seed the std is undefined and shown as "–" (Markdown), "--" (LaTeX) or left empty (CSV);
* a cell with no result is "n/a" (empty in CSV); a cell over fewer seeds than the table's largest
  count is marked "(n=k)";
* "Avg." is computed per seed over all suites, then mean ± std over the seeds that have every suite.
  Records without a seed cannot be paired across suites: their Avg. is the mean of the suite means,
  without a std;
* the best mean of each column is bold (ties: all of them) unless every method there has the same mean.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

AVERAGE = "average"
# Column headers of the paper tables (facts §8.1 names libero_10 "Long").
SUITE_TITLES = {"libero_spatial": "Spatial", "libero_object": "Object", "libero_goal": "Goal", "libero_10": "Long",
                "libero_90": "LIBERO-90", AVERAGE: "Avg."}
STD_CONVENTION = "sample std over seeds (ddof=1)"


@dataclass(frozen=True)
class ResultRecord:
    """One evaluated run: method (table row), suite, seed and its success rate (a fraction in [0, 1])."""

    method: str
    suite: str
    seed: int | None
    success_rate: float
    source: str = ""

    def __post_init__(self) -> None:
        if not 0.0 <= self.success_rate <= 1.0:
            raise ValueError(f"success_rate must be in [0, 1], got {self.success_rate} ({self.source or self.method})")


@dataclass(frozen=True)
class Stat:
    """Values in percent (one per seed) and their summary."""

    values: tuple[float, ...]
    seeds: tuple[int | None, ...] = ()
    paired: bool = True  # False: an Avg. built from suite means (no per-seed pairing, hence no std)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if self.n >= 2 and self.paired else None


@dataclass(frozen=True)
class ResultTable:
    methods: tuple[str, ...]
    suites: tuple[str, ...]  # columns; AVERAGE last when there are several suites
    cells: dict[tuple[str, str], Stat]

    def cell(self, method: str, suite: str) -> Stat:
        return self.cells.get((method, suite), Stat(()))


def aggregate(rates: Iterable[float]) -> Stat:
    """Fractions in [0, 1] -> Stat in percent."""
    return Stat(tuple(100.0 * r for r in rates))


def build_table(records: Sequence[ResultRecord], methods: Sequence[str] | None = None,
                suites: Sequence[str] | None = None) -> ResultTable:
    """Group records by (method, suite). `methods`/`suites` fix order and membership (default: order of
    first appearance). Two records for the same (method, suite, seed) are an error."""
    methods = tuple(methods) if methods is not None else tuple(dict.fromkeys(r.method for r in records))
    suites = tuple(suites) if suites is not None else tuple(dict.fromkeys(r.suite for r in records))
    by_cell: dict[tuple[str, str], dict] = {}
    unseeded: dict[tuple[str, str], list[float]] = {}
    for r in records:
        if r.method not in methods or r.suite not in suites:
            continue
        if r.seed is None:
            unseeded.setdefault((r.method, r.suite), []).append(r.success_rate)
            continue
        seeds = by_cell.setdefault((r.method, r.suite), {})
        if r.seed in seeds:
            raise ValueError(f"two results for {r.method} / {r.suite} / seed {r.seed}: {seeds[r.seed][1]} and {r.source}")
        seeds[r.seed] = (r.success_rate, r.source)
    cells: dict[tuple[str, str], Stat] = {}
    for key in {*by_cell, *unseeded}:
        seeded = sorted(by_cell.get(key, {}).items())
        free = unseeded.get(key, [])
        cells[key] = Stat(tuple(100.0 * v for _, (v, _) in seeded) + tuple(100.0 * v for v in free),
                          tuple(s for s, _ in seeded) + (None,) * len(free))
    columns = suites
    if len(suites) > 1:
        columns = suites + (AVERAGE,)
        for method in methods:
            if (avg := _average(method, suites, by_cell, unseeded, cells)) is not None:
                cells[(method, AVERAGE)] = avg
    return ResultTable(methods, columns, cells)


def _average(method, suites, by_cell, unseeded, cells) -> Stat | None:
    if not all((method, s) in cells for s in suites):
        return None
    if not any((method, s) in unseeded for s in suites):
        common = set.intersection(*(set(by_cell[(method, s)]) for s in suites))
        if common:
            seeds = sorted(common)
            values = tuple(statistics.fmean(100.0 * by_cell[(method, s)][seed][0] for s in suites) for seed in seeds)
            return Stat(values, tuple(seeds))
    # Unpaired: the mean of the suite means, without a std.
    return Stat((statistics.fmean(cells[(method, s)].mean for s in suites),), (None,), paired=False)


# ---- rendering ----

def _title(suite: str) -> str:
    return SUITE_TITLES.get(suite, suite)


def _best(table: ResultTable, suite: str) -> float | None:
    """The best mean of a column; None when fewer than two methods have a result or all of them tie."""
    means = [table.cell(m, suite).mean for m in table.methods if table.cell(m, suite).n]
    if len(means) < 2 or all(math.isclose(m, means[0], abs_tol=1e-9) for m in means):
        return None
    return max(means)


def _max_n(table: ResultTable) -> int:
    return max((c.n for (_, s), c in table.cells.items() if s != AVERAGE), default=0)


def format_stat(stat: Stat, fmt: str, bold: bool = False, max_n: int | None = None) -> str:
    """One cell: "90.0 ± 10.0" (md), "90.0 $\\pm$ 10.0" (tex); see the module docstring for the rest."""
    if stat.n == 0:
        return "n/a"
    pm, dash = (" ± ", "–") if fmt == "md" else (r" $\pm$ ", "--")
    text = f"{stat.mean:.1f}" + (pm + (f"{stat.std:.1f}" if stat.std is not None else dash) if stat.paired else "")
    if bold:
        text = f"**{text}**" if fmt == "md" else rf"\textbf{{{text}}}"
    if max_n is not None and stat.paired and stat.n < max_n:
        text += f" (n={stat.n})"
    return text


def _is_best(table: ResultTable, method: str, suite: str) -> bool:
    best = _best(table, suite)
    mean = table.cell(method, suite).mean
    return best is not None and mean is not None and math.isclose(mean, best, abs_tol=1e-9)


def render_markdown(table: ResultTable, title: str | None = None) -> str:
    max_n = _max_n(table)
    lines = [f"**{title}**", ""] if title else []
    lines.append("| Method | " + " | ".join(_title(s) for s in table.suites) + " |")
    lines.append("|---|" + "---|" * len(table.suites))
    for m in table.methods:
        cells = [format_stat(table.cell(m, s), "md", _is_best(table, m, s), max_n) for s in table.suites]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", f"Success rate (%), mean ± {STD_CONVENTION}; max n = {max_n}; \"–\": one seed, no std; "
                  "\"n/a\": no result."]
    return "\n".join(lines) + "\n"


_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
                "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def tex_escape(text: str) -> str:
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in text)


def render_latex(table: ResultTable, title: str | None = None) -> str:
    max_n = _max_n(table)
    lines = [f"% {tex_escape(title)}" if title else "% success rates",
             f"% success rate (%), mean $\\pm$ {STD_CONVENTION}; max n = {max_n}; -- : one seed; n/a: no result",
             r"% needs \usepackage{booktabs}",
             r"\begin{tabular}{l" + "c" * len(table.suites) + "}", r"\toprule",
             "Method & " + " & ".join(tex_escape(_title(s)) for s in table.suites) + r" \\", r"\midrule"]
    for m in table.methods:
        cells = [format_stat(table.cell(m, s), "tex", _is_best(table, m, s), max_n) for s in table.suites]
        lines.append(tex_escape(m) + " & " + " & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def render_csv(table: ResultTable) -> str:
    """Long format, one row per cell: method, suite, n, mean, std, seeds, values (percent, ';'-separated)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["method", "suite", "n", "mean", "std", "seeds", "values"])
    for m in table.methods:
        for s in table.suites:
            c = table.cell(m, s)
            writer.writerow([
                m, s, c.n, "" if c.mean is None else f"{c.mean:.4f}", "" if c.std is None else f"{c.std:.4f}",
                ";".join("" if seed is None else str(seed) for seed in c.seeds), ";".join(f"{v:.4f}" for v in c.values),
            ])
    return out.getvalue()


def render_table(table: ResultTable, fmt: str, title: str | None = None) -> str:
    if fmt == "md":
        return render_markdown(table, title)
    if fmt == "tex":
        return render_latex(table, title)
    if fmt == "csv":
        return render_csv(table)
    raise ValueError(f"unknown table format {fmt!r}; choose md, tex or csv")
