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


def _drive(out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CRAFT_PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", str(DRIVER), "--smoke", "--output_dir", str(out), "--quiet", *extra],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=840)


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


@pytest.mark.slurm
def test_table1_smoke_chain_on_slurm(tmp_path, slurm_cluster):
    """The same chain as cluster jobs: `--launcher slurm --wait` submits a train job and an afterok eval job per
    run, waits, and collects; a second invocation finds everything done and submits nothing."""
    from craft_experiments.common_utils.slurm import Cluster

    out = tmp_path / "smoke"
    proc = _drive(out, "--launcher", "slurm", "--wait", "--slurm_poll_seconds", "2")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    job_ids = []
    for name in RUNS:
        run = out / "runs" / name
        jobs = json.loads((run / "slurm" / "jobs.json").read_text())["submissions"]
        assert [j["key"] for j in jobs] == ["train", "eval"] and jobs[1]["dependency"] == f"afterok:{jobs[0]['job_id']}"
        assert "#SBATCH --time=00:20:00" in (run / "slurm" / "train.sbatch").read_text()  # the --smoke time limit
        job_ids += [j["job_id"] for j in jobs]
        result = json.loads((run / "RESULT.json").read_text())
        assert result["episodes"] == 1 and Path(result["checkpoint"]).name == f"{name}--2_chkpt"
        assert (out / "plots" / "table1" / "curves" / f"{name}.png").stat().st_size > 5000
    assert {Cluster().final_state(j) for j in job_ids} == {"COMPLETED"}
    md = (out / "tables" / "table1.md").read_text()
    assert "| VLA-Adapter |" in md and "| VLA-Adapter + CRaFT |" in md and "n/a" not in md.split("Success rate")[0]
    assert (out / "plots" / "table1" / "success_rates.png").is_file()

    again = _drive(out, "--launcher", "slurm")
    assert again.returncode == 0, again.stdout[-4000:]
    status = json.loads((out / "tables" / "table1_status.json").read_text())
    assert {r["status"] for r in status["runs"]} == {"DONE"} and "submitted job" not in again.stdout
    for name in RUNS:
        assert len(json.loads((out / "runs" / name / "slurm" / "jobs.json").read_text())["submissions"]) == 2
