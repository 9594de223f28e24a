"""The real chain, end to end on CPU: `run_table1_experiments.sh --smoke` trains the tiny preset on the
generated dataset (baseline and CRaFT), evaluates each in the LIBERO simulator (one episode of one task,
short horizon), and writes the table and the plots; a second invocation skips everything."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DRIVER = ROOT / "craft_experiments" / "01_main_results" / "run_table1_experiments.sh"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.sim,
]

RUNS = ("baseline--libero_spatial--seed7", "craft--libero_spatial--seed7")


def _drive(out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "CRAFT_PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", str(DRIVER), "--smoke", "--output_dir", str(out), "--quiet"], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=840)


def test_table1_smoke_chain(tmp_path):
    out = tmp_path / "smoke"
    proc = _drive(out)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    for name in RUNS:
        run = out / "runs" / name
        result = json.loads((run / "RESULT.json").read_text())
        assert result["episodes"] == 1 and result["suite"] == "libero_spatial", result
        assert Path(result["checkpoint"]).name == f"{name}--2_chkpt"
        assert (out / "plots" / "table1" / "curves" / f"{name}.png").stat().st_size > 5000
    md = (out / "tables" / "table1.md").read_text()
    assert "| VLA-Adapter |" in md and "| VLA-Adapter + CRaFT |" in md and "n/a" not in md.split("Success rate")[0]
    status = json.loads((out / "tables" / "table1_status.json").read_text())
    assert {r["status"] for r in status["runs"]} == {"OK"}

    again = _drive(out)  # idempotent: nothing is trained or evaluated twice
    assert again.returncode == 0, again.stdout[-4000:]
    status = json.loads((out / "tables" / "table1_status.json").read_text())
    assert {r["status"] for r in status["runs"]} == {"DONE"}
