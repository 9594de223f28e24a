"""The log parser's command line as the paper's README writes it:

    python craft_experiments/common_utils/log_parser.py --wandb_project "vla-craft-training" --output_dir "results/" \
        --generate_latex_table

A W&B project (public API) becomes tables (md, csv and LaTeX) in --output_dir; without network or login the
command fails with one W&B message, no traceback, and writes nothing."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from craft_experiments.common_utils import log_parser
from tests.experiments.fakes import write_eval_run

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "craft_experiments" / "common_utils" / "log_parser.py"
VERBATIM = ["--wandb_project", "vla-craft-training", "--output_dir", "results/", "--generate_latex_table"]


class _Run:
    def __init__(self, run_id, name, losses):
        self.id, self.name, self.path, self.config = run_id, name, ["team", "vla-craft-training", run_id], {}
        self._losses = losses

    def scan_history(self):
        return [{"_step": step, "VLA Train/Loss": loss, "CRaFT/Lambda": 0.1 * step} for step, loss in self._losses]


class _ProjectApi:
    def __init__(self):
        self.runs_asked = []
        self._runs = {"a1": _Run("a1", "craft-spatial-seed7", [(0, 1.0), (10, 0.125)]),
                      "b2": _Run("b2", "baseline-spatial-seed7", [(0, 1.5), (10, 0.5)])}

    def runs(self, path):
        self.runs_asked.append(path)
        return list(self._runs.values())

    def run(self, path):
        return self._runs[path.split("/")[-1]]


def test_project_tables_are_written_to_the_output_dir(tmp_path, monkeypatch, capsys):
    import wandb

    api = _ProjectApi()
    monkeypatch.setattr(wandb, "Api", lambda **kwargs: api)
    monkeypatch.chdir(tmp_path)
    assert log_parser.main(VERBATIM + ["--metrics", "VLA Train/Loss,CRaFT/Lambda"]) == 0
    assert api.runs_asked == ["vla-craft-training"]
    results = tmp_path / "results"
    assert sorted(p.name for p in results.iterdir()) == ["wandb_vla-craft-training.csv", "wandb_vla-craft-training.md",
                                                          "wandb_vla-craft-training.tex"]
    md = (results / "wandb_vla-craft-training.md").read_text()
    assert "| craft-spatial-seed7 | 0.125 | 1 |" in md and "| baseline-spatial-seed7 | 0.5 | 1 |" in md
    tex = (results / "wandb_vla-craft-training.tex").read_text()
    assert r"\begin{tabular}{lcc}" in tex and r"craft-spatial-seed7 & 0.125 & 1 \\" in tex
    assert capsys.readouterr().out.count("wrote ") == 3


def test_logs_tables_to_the_output_dir_with_latex(tmp_path):
    run = tmp_path / "runs" / "craft--libero_spatial--seed7" / "eval"
    write_eval_run(run, "EVAL-libero_spatial-vla--craft--seed7", {"t": [True, False]}, "libero_spatial")
    (run.parent / "run.json").write_text('{"variant": "craft", "seed": 7}')
    assert log_parser.main(["--logs", str(tmp_path / "runs"), "--output_dir", str(tmp_path / "out"),
                            "--generate_latex_table"]) == 0
    assert "| craft | 50.0 ± – |" in (tmp_path / "out" / "success_rates.md").read_text()
    tex = (tmp_path / "out" / "success_rates.tex").read_text()
    assert r"\begin{tabular}" in tex and "50.0" in tex
    assert (tmp_path / "out" / "success_rates.csv").is_file()


def _verbatim(tmp_path: Path, extra_env: dict) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update({"HOME": str(tmp_path), "WANDB_MODE": "offline", "PYTHONPATH": "", **extra_env})
    return subprocess.run([sys.executable, str(SCRIPT), *VERBATIM], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=300)


@pytest.mark.parametrize("login", [
    pytest.param({}, id="no-login"),
    # a key but no network: the W&B client gives up after its own timeout (~15 s here)
    pytest.param({"WANDB_API_KEY": "0" * 40}, id="no-network", marks=pytest.mark.slow),
])
def test_without_wandb_access_one_clear_message(tmp_path, login):
    proc = _verbatim(tmp_path, login)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: cannot read W&B project 'vla-craft-training' through "
                                                     "the W&B API"), proc.stderr
    assert "wandb login" in errors[0] and not (tmp_path / "results").exists()
