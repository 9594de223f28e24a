"""The one-node SLURM cluster of scripts/local_slurm.sh, for the tests marked `slurm`."""

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOCAL_SLURM = ROOT / "scripts" / "local_slurm.sh"


def _local_slurm(command: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(LOCAL_SLURM), command], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running cluster: the one .ci/run started, else started here (and stopped at the end of the session).
    Not root means the packages cannot be installed nor the daemons started: the only reason to skip."""
    if _local_slurm("status", 120).returncode == 0:
        yield
        return
    if os.geteuid() != 0:
        pytest.skip("the local SLURM cluster needs root (scripts/local_slurm.sh start)")
    started = _local_slurm("start", 900)
    if started.returncode != 0:
        pytest.fail(f"scripts/local_slurm.sh start failed:\n{started.stdout}{started.stderr}")
    if "already running" in started.stderr:  # someone else's cluster (a slow `status`): not ours to stop
        yield
        return
    try:
        yield
    finally:
        _local_slurm("stop", 120)
