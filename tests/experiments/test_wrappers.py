"""The .sh / .ps1 drivers stay thin: they only forward to `experiments <table>`, so both platforms agree."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DRIVERS = {
    "table1": ROOT / "craft_experiments" / "01_main_results" / "run_table1_experiments",
    "table2": ROOT / "craft_experiments" / "02_stability_efficiency" / "run_table2_fewshot",
    "table4": ROOT / "craft_experiments" / "03_ablations" / "run_table4_ablations",
}
MODULE = "craft_experiments.common_utils.experiments"


def _code_lines(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.strip().startswith("#")]


@pytest.mark.parametrize("table", sorted(DRIVERS))
def test_scripts_only_forward_to_the_module(table):
    sh, ps1 = DRIVERS[table].with_suffix(".sh"), DRIVERS[table].with_suffix(".ps1")
    assert os.access(sh, os.X_OK), f"{sh} is not executable"
    sh_lines, ps1_lines = _code_lines(sh), _code_lines(ps1)
    assert sh_lines[-1] == f'exec "${{CRAFT_PYTHON:-python}}" -m {MODULE} {table} "$@"'
    assert f"& $Python -m {MODULE} {table} @args" in ps1_lines and ps1_lines[-1] == "exit $LASTEXITCODE"
    assert len(sh_lines) <= 4 and len(ps1_lines) <= 6  # nothing but environment set-up and the call


@pytest.mark.parametrize("table", sorted(DRIVERS))
def test_bash_driver_dry_run(table, tmp_path):
    if shutil.which("bash") is None:
        pytest.skip("no bash on this machine")
    env = {**os.environ, "CRAFT_PYTHON": sys.executable, "CRAFT_SEEDS": "3"}
    proc = subprocess.run(["bash", str(DRIVERS[table].with_suffix(".sh")), "--dry-run", "--suites", "libero_goal",
                           "--output_dir", str(tmp_path)], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--seed 3" in proc.stdout and "finetune.py" in proc.stdout and "run_libero_eval.py" in proc.stdout


def test_powershell_driver_dry_run(tmp_path):
    pwsh = shutil.which("pwsh") or shutil.which("powershell")
    if pwsh is None:
        pytest.skip("no PowerShell on this machine (the .ps1 text is checked above)")
    env = {**os.environ, "CRAFT_PYTHON": sys.executable}
    proc = subprocess.run([pwsh, "-NoProfile", "-File", str(DRIVERS["table1"].with_suffix(".ps1")), "--dry-run",
                           "--output_dir", str(tmp_path)], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "finetune.py" in proc.stdout
