"""A driver stopped by a signal leaves nothing behind: SIGTERM / SIGINT reach the trainer's whole process group
(torchrun and its workers), the driver waits for it and releases the run's lock, and the rerun continues; a
driver killed with SIGKILL leaves its lock, which the rerun recognises as stale (dead pid, this host) and takes
over. Real processes and real signals; the trainer is the fake of fakes.py, sleeping after its first checkpoint."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from craft_experiments.common_utils.run_state import RunLock, RunLocked

ROOT = Path(__file__).resolve().parents[2]
RUN = "craft--libero_spatial--seed7"


@pytest.fixture
def fake_scripts(tmp_path):
    paths = []
    for kind in ("train", "eval"):
        path = tmp_path / f"fake_{kind}.py"
        path.write_text(f"import sys\nfrom tests.experiments.fakes import fake_{kind}\nsys.exit(fake_{kind}(sys.argv[1:]))\n")
        paths.append(str(path))
    return ["--finetune_script", paths[0], "--eval_script", paths[1]]


def _start(out: Path, scripts: list[str], launcher: str, env: dict) -> subprocess.Popen:
    argv = [sys.executable, "-m", "craft_experiments.common_utils.experiments", "table1", "--output_dir", str(out),
            "--variants", "craft", "--suites", "libero_spatial", "--seeds", "7", "--max_steps", "2",
            "--num_trials_per_task", "1", "--model_preset", "tiny", "--device", "cpu", "--launcher", launcher,
            "--quiet", *scripts]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": "", **env})


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "\nState:\tZ" in status.read_text())


def _wait_for(path: Path, timeout: float = 90) -> int:
    deadline = time.time() + timeout
    while not (path.is_file() and path.read_text().strip()):
        if time.time() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.1)
    return int(path.read_text())


@pytest.mark.parametrize(("sig", "launcher"), [(signal.SIGTERM, "torchrun"), (signal.SIGINT, "python")])
def test_stop_signal_reaches_the_child_and_the_rerun_continues(tmp_path, fake_scripts, sig, launcher):
    out, pid_file, argv_log = tmp_path / "out", tmp_path / "trainer.pid", tmp_path / "argv.jsonl"
    env = {"FAKE_TRAIN_SLEEP": "300", "FAKE_PID_FILE": str(pid_file), "FAKE_ARGV_LOG": str(argv_log)}
    driver = _start(out, fake_scripts, launcher, env)
    trainer = _wait_for(pid_file)
    lock = out / "runs" / RUN / ".lock"
    assert lock.is_file() and json.loads(lock.read_text())["pid"] == driver.pid
    time.sleep(0.5)
    driver.send_signal(sig)
    stdout, _ = driver.communicate(timeout=60)
    assert driver.returncode == 128 + sig, stdout
    assert f"stopped by {sig.name}" in stdout and "Run the same command again" in stdout
    assert not _alive(trainer), "the trainer outlived the driver"
    assert not lock.exists()
    assert f"stopped by {sig.name}: forwarded to the process group" in (out / "runs" / RUN / "logs" / "train.log").read_text()

    pid_file.unlink()
    rerun = _start(out, fake_scripts, launcher, {"FAKE_ARGV_LOG": str(argv_log)})
    stdout, _ = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, stdout
    assert "LOCKED" not in stdout and f"===== [1/1] {RUN}: OK" in stdout
    calls = [json.loads(line) for line in argv_log.read_text().splitlines()]
    assert calls[-1][-2:] == ["--resume", "True"]  # continued from the step-1 checkpoint


def test_lock_of_a_sigkilled_driver_is_taken_over(tmp_path, fake_scripts):
    out, pid_file = tmp_path / "out", tmp_path / "trainer.pid"
    driver = _start(out, fake_scripts, "python", {"FAKE_TRAIN_SLEEP": "300", "FAKE_PID_FILE": str(pid_file)})
    trainer = _wait_for(pid_file)
    driver.kill()
    driver.communicate(timeout=30)
    os.kill(trainer, signal.SIGKILL)  # SIGKILL cannot be forwarded: the orphan is the test's to clean up
    lock = out / "runs" / RUN / ".lock"
    assert json.loads(lock.read_text())["pid"] == driver.pid  # left behind

    rerun = _start(out, fake_scripts, "python", {})
    stdout, _ = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, stdout
    assert f"took over the stale lock {lock}" in stdout and f"pid {driver.pid} on this host" in stdout
    assert f"===== [1/1] {RUN}: OK" in stdout and not lock.exists()


def test_lock_of_a_live_process_or_another_host_is_respected(tmp_path):
    lock = tmp_path / ".lock"
    for holder in ({"pid": os.getpid(), "host": socket.gethostname()}, {"pid": 999999999, "host": "another-node"}):
        lock.write_text(json.dumps(holder))
        with pytest.raises(RunLocked, match="another driver or job is running this run"):
            with RunLock(tmp_path):
                pass
        assert json.loads(lock.read_text()) == holder
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    with RunLock(tmp_path) as taken:
        assert taken.took_over and f"pid {dead.pid}" in taken.took_over
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()
