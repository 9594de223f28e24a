"""LIBERO simulator worker processes (multiprocessing "spawn" context).

Why processes: TensorFlow (the policy's preprocessing runs the training pipeline's TF resize) and MuJoCo
rendering both bundle LLVM and crash when they share a process, and a fork after TF was imported crashes the
child. So each simulator lives in a freshly spawned interpreter that imports only this module's
dependencies (never tensorflow; checked at start-up).

Protocol (one request, one reply, over a Pipe; `SimWorker` is the main-process handle):

    start_episode(request)      build/reuse the task's env, hard reset, load initial state `episode_idx`,
                                `num_steps_wait` dummy steps -> {"obs", "instruction"}
    step(actions (n, 7))        execute env-convention actions open-loop until success or the episode's
                                `max_steps` cap -> {"obs", "done", "steps", "episode_over"}
    run_policy_episode(request, policy, seed)
                                a whole episode with a policy that runs INSIDE the worker (it may read
                                privileged simulator state): `policy` is "scripted" (= `prismatic.sim.libero.
                                scripted_expert:make_expert`) or "module:factory"; factory(env, seed) returns an
                                object with reset(env) and act(env, obs) -> (7,) env-convention action
                                -> {"success", "steps", "instruction", "final_state"}
    end_episode(video_path)     write the recorded frames (if a path is given) and drop them
    close()

`obs` is {"agentview": uint8 (H, W, 3), "wrist": uint8 (H, W, 3), "state": float32 (8,)}, images already
rotated by 180 degrees (`env.extract_images`). Steps count policy steps only (the wait steps are excluded).
An exception inside the worker comes back as `WorkerError` carrying the remote traceback; a crashed or hung
worker raises `WorkerDied` (the caller restarts it). A worker exits with the evaluator that started it, even
one killed mid-episode (`_exit_with_parent`).
"""

from __future__ import annotations

import ctypes
import importlib
import logging
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np

logger = logging.getLogger(__name__)

# Policies that run inside the worker, by name -> "module:factory".
IN_WORKER_POLICIES = {"scripted": "prismatic.sim.libero.scripted_expert:make_expert"}
DEFAULT_COMMAND_TIMEOUT_S = 900.0  # env build + reset under heavy CPU contention stays well below this
STARTUP_TIMEOUT_S = 300.0


class WorkerError(RuntimeError):
    """An exception raised inside a simulator worker; `remote_traceback` holds its formatted traceback."""

    def __init__(self, message: str, remote_traceback: str):
        super().__init__(message)
        self.remote_traceback = remote_traceback


class WorkerDied(RuntimeError):
    """The worker process exited, crashed or did not answer in time."""


@dataclass
class EpisodeRequest:
    """One evaluation episode, as the worker needs it."""

    suite_name: str  # e.g. "libero_spatial"
    task_id: int  # index into the suite (task order 0)
    episode_idx: int  # which of the suite's fixed initial states to load
    resolution: int = 256  # camera height = width, pixels
    num_steps_wait: int = 10  # dummy-action settle steps before the policy acts
    max_steps: int = 220  # cap on policy steps (wait steps excluded)
    record_video: bool = False  # keep side-by-side frames for `end_episode(video_path)`


def load_in_worker_policy_factory(policy: str) -> Callable[[Any, int], Any]:
    """Resolve "scripted" or "package.module:factory" to the factory callable, with a clear error when the
    module is missing (as opposed to failing on one of ITS imports, which is re-raised unchanged)."""
    spec = IN_WORKER_POLICIES.get(policy, policy)
    if spec.count(":") != 1:
        raise ValueError(f"in-worker policy must be one of {sorted(IN_WORKER_POLICIES)} or 'module:factory', "
                         f"got {policy!r}")
    module_name, attr = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise ModuleNotFoundError(
                f"in-worker policy {policy!r} needs the module {module_name} providing {attr}(env, seed) "
                f"(an object with reset(env) and act(env, obs) -> (7,) action); it is not available: {e}",
                name=module_name,
            ) from e
        raise
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise AttributeError(f"in-worker policy {policy!r}: {module_name} has no callable {attr!r}")
    return factory


# --------------------------------------------------------------------------------------------------
# Worker side (runs in the spawned process)
# --------------------------------------------------------------------------------------------------
class _Simulator:
    """The worker's state: one env (rebuilt when the task changes or after an error) and one episode."""

    def __init__(self) -> None:
        self.env = None
        self.env_key: tuple | None = None
        self.instruction = ""
        self.init_states: np.ndarray | None = None
        self.request: EpisodeRequest | None = None
        self.raw_obs: dict | None = None
        self.steps = 0
        self.done = False
        self.frames: list[np.ndarray] = []

    # env management -------------------------------------------------------------------------------
    def _ensure_env(self, req: EpisodeRequest) -> None:
        from prismatic.sim.libero import env as libero_env

        key = (req.suite_name, req.task_id, req.resolution)
        if self.env is not None and self.env_key == key:
            return
        self.drop_env()
        self.init_states = libero_env.get_initial_states(req.suite_name, req.task_id)
        self.env, self.instruction = libero_env.make_libero_env(req.suite_name, req.task_id, req.resolution)
        self.env_key = key

    def drop_env(self) -> None:
        """Close the env (after an error its state is suspect, so the next episode rebuilds it)."""
        from prismatic.sim.libero import env as libero_env

        env, self.env, self.env_key = self.env, None, None
        if env is not None:
            try:
                libero_env.close_env(env)
            except Exception:  # closing a broken env may fail too; the env is discarded either way
                logger.warning("closing a LIBERO env failed:\n%s", traceback.format_exc())

    # episode ---------------------------------------------------------------------------------------
    def _payload(self) -> dict:
        from prismatic.sim.libero import env as libero_env

        agentview, wrist = libero_env.extract_images(self.raw_obs)
        return {"agentview": agentview, "wrist": wrist, "state": libero_env.extract_state(self.raw_obs)}

    def _record(self) -> None:
        if self.request is not None and self.request.record_video:
            from prismatic.eval.video import side_by_side
            from prismatic.sim.libero import env as libero_env

            self.frames.append(side_by_side(*libero_env.extract_images(self.raw_obs)))

    def start_episode(self, request: dict) -> dict:
        from prismatic.sim.libero import env as libero_env

        req = EpisodeRequest(**request)
        self.request, self.frames, self.steps, self.done = req, [], 0, False
        self._ensure_env(req)
        if not 0 <= req.episode_idx < len(self.init_states):
            raise ValueError(f"episode {req.episode_idx} out of range: {req.suite_name} task {req.task_id} has "
                             f"{len(self.init_states)} initial states")
        obs = libero_env.reset_to_init_state(self.env, self.init_states[req.episode_idx])
        self.raw_obs = libero_env.settle(self.env, req.num_steps_wait, obs)
        self._record()  # video: the first policy observation, then the one after every step
        return {"obs": self._payload(), "instruction": self.instruction}

    def _over(self) -> bool:
        return self.done or self.steps >= self.request.max_steps

    def step(self, actions: np.ndarray) -> dict:
        from prismatic.sim.libero import env as libero_env

        if self.request is None or self.raw_obs is None:
            raise RuntimeError("step() before start_episode()")
        actions = np.asarray(actions, dtype=np.float64)
        if actions.ndim != 2 or actions.shape[1] != 7 or len(actions) == 0:
            raise ValueError(f"step() expects actions of shape (n >= 1, 7), got {actions.shape}")
        for action in actions:
            if self._over():
                break
            self.raw_obs, _, self.done, _ = libero_env.step_env(self.env, action)
            self.steps += 1
            self._record()
        return {"obs": self._payload(), "done": self.done, "steps": self.steps, "episode_over": self._over()}

    def run_policy_episode(self, request: dict, policy: str, seed: int) -> dict:
        factory = load_in_worker_policy_factory(policy)
        reply = self.start_episode(request)
        expert = factory(self.env, seed)
        expert.reset(self.env)
        while not self._over():
            action = np.asarray(expert.act(self.env, self.raw_obs), dtype=np.float64)
            if action.shape != (7,):
                raise ValueError(f"in-worker policy {policy!r} returned an action of shape {action.shape}, "
                                 f"expected (7,)")
            self.step(action[None])
        return {"success": self.done, "steps": self.steps, "instruction": reply["instruction"],
                "final_state": self._payload()["state"]}

    def end_episode(self, video_path: str | None) -> dict:
        written = None
        if video_path is not None and self.frames:
            from prismatic.eval.video import write_video

            written = str(write_video(self.frames, video_path))
        self.frames, self.request, self.raw_obs = [], None, None
        return {"video_path": written}


PARENT_POLL_S = 1.0  # how often a worker checks that the evaluator that started it is still alive
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _exit_with_parent(parent_pid: int) -> None:
    """Make this worker die with the evaluator: a killed evaluator (kill -9, SIGTERM, a crash) runs no clean-up,
    and a worker in the middle of an episode would only notice the closed pipe when it next replies. Linux:
    the kernel sends SIGKILL when the parent dies (PR_SET_PDEATHSIG; the parent is the thread that started the
    worker, so start workers from the main thread). Everywhere: a watchdog thread exits when the parent is
    gone (the worker was re-parented)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # no prctl: the watchdog below still works
            pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _worker_main(conn, worker_index: int, parent_pid: int | None = None) -> None:
    """Entry point of a spawned worker: set up LIBERO, announce readiness, serve requests until close."""
    if parent_pid is not None:
        _exit_with_parent(parent_pid)
    # Our own warnings, prefixed with the worker; not a root handler (that would repeat every robosuite line).
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(f"[sim worker {worker_index}] %(levelname)s %(name)s: %(message)s"))
    package_logger = logging.getLogger("prismatic")
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.WARNING)
    package_logger.propagate = False
    try:
        if "tensorflow" in sys.modules:
            raise RuntimeError(
                "tensorflow is loaded in the simulator worker (imported at the top level of the main script or "
                "of a module the worker imports); TF and MuJoCo rendering crash in one process"
            )
        from prismatic.sim.libero import env as libero_env

        libero_env.prepare_libero()
        conn.send(("ready", {"pid": os.getpid(), "gl": os.environ.get("MUJOCO_GL")}))
    except Exception as e:
        conn.send(("error", f"{type(e).__name__}: {e}", traceback.format_exc()))
        return
    sim = _Simulator()
    handlers = {
        "start_episode": sim.start_episode,
        "step": sim.step,
        "run_policy_episode": sim.run_policy_episode,
        "end_episode": sim.end_episode,
    }
    while True:
        try:
            command, kwargs = conn.recv()
        except (EOFError, OSError):  # the main process went away
            break
        if command == "close":
            sim.drop_env()
            conn.send(("ok", None))
            break
        try:
            if command not in handlers:
                raise ValueError(f"unknown worker command {command!r}")
            conn.send(("ok", handlers[command](**kwargs)))
        except Exception as e:
            sim.drop_env()
            sim.frames, sim.request, sim.raw_obs = [], None, None
            conn.send(("error", f"{type(e).__name__}: {e}", traceback.format_exc()))


# --------------------------------------------------------------------------------------------------
# Main-process handle
# --------------------------------------------------------------------------------------------------
class SimWorker:
    """Handle to one spawned simulator process. `send` + `recv` let several workers run concurrently;
    `call` is the blocking shortcut. Use as a context manager or call `close()`."""

    def __init__(self, index: int = 0, command_timeout_s: float = DEFAULT_COMMAND_TIMEOUT_S):
        self.index = index
        self.command_timeout_s = command_timeout_s
        self._proc = None
        self._conn = None
        self._pending: str | None = None
        self.info: dict = {}
        self.start()

    def start(self) -> None:
        from prismatic.sim.libero.env import prepare_libero

        # Set-up and the GL probe run once here; the choice reaches the worker through os.environ, so set-up
        # errors surface before any process is spawned and each worker skips the probe.
        prepare_libero()
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        self._proc = ctx.Process(target=_worker_main, args=(child, self.index, os.getpid()), daemon=True,
                                 name=f"libero-sim-{self.index}")
        self._proc.start()
        child.close()
        self._conn = parent
        self._pending = "startup"
        self.info = self._receive(STARTUP_TIMEOUT_S)

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    def send(self, command: str, **kwargs: Any) -> None:
        if self._pending is not None:
            raise RuntimeError(f"worker {self.index}: {command!r} sent while {self._pending!r} is unanswered")
        if not self.alive:
            raise WorkerDied(f"simulator worker {self.index} is not running (exit code {self._proc.exitcode})")
        self._conn.send((command, kwargs))
        self._pending = command

    def recv(self, timeout_s: float | None = None) -> Any:
        if self._pending is None:
            raise RuntimeError(f"worker {self.index}: recv() without a request")
        return self._receive(self.command_timeout_s if timeout_s is None else timeout_s)

    def _receive(self, timeout_s: float) -> Any:
        command, self._pending = self._pending, None
        deadline = time.monotonic() + timeout_s
        while not self._conn.poll(0.5):
            if not self._proc.is_alive():
                raise self._died(command)
            if time.monotonic() > deadline:
                self._kill()
                raise WorkerDied(f"simulator worker {self.index} did not answer {command!r} within {timeout_s:.0f} s")
        try:
            reply = self._conn.recv()
        except (EOFError, OSError) as e:  # the pipe closed: the process is exiting
            self._proc.join(10)
            raise self._died(command) from e
        if reply[0] == "error":
            if command == "startup":
                self._kill()
            raise WorkerError(f"simulator worker {self.index} failed in {command!r}: {reply[1]}", reply[2])
        return reply[1]

    def _died(self, command: str) -> WorkerDied:
        code = self._proc.exitcode
        self._kill()
        how = f"exit code {code}" if code is None or code >= 0 else f"killed by signal {-code}, e.g. a crash"
        return WorkerDied(f"simulator worker {self.index} died during {command!r} ({how})")

    def call(self, command: str, timeout_s: float | None = None, **kwargs: Any) -> Any:
        self.send(command, **kwargs)
        return self.recv(timeout_s)

    # typed conveniences ----------------------------------------------------------------------------
    def start_episode(self, request: EpisodeRequest) -> dict:
        return self.call("start_episode", request=asdict(request))

    def step(self, actions: np.ndarray) -> dict:
        return self.call("step", actions=np.asarray(actions, dtype=np.float64))

    def run_policy_episode(self, request: EpisodeRequest, policy: str, seed: int,
                           timeout_s: float | None = None) -> dict:
        return self.call("run_policy_episode", timeout_s=timeout_s, request=asdict(request), policy=policy, seed=seed)

    def end_episode(self, video_path: str | None = None) -> dict:
        return self.call("end_episode", video_path=video_path)

    def restart(self) -> None:
        self._kill()
        self.start()

    def _kill(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(10)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(5)
        if self._conn is not None:
            self._conn.close()
        self._pending = None

    def close(self) -> None:
        """Ask the worker to release its env and exit; kill it if it does not."""
        if self._proc is None:
            return
        if self.alive and self._pending is None:
            try:
                self.call("close", timeout_s=30)
            except (WorkerDied, WorkerError, OSError):
                pass  # shutting down anyway; _kill below makes sure the process is gone
            self._proc.join(10)
        self._kill()
        self._proc = None

    def __enter__(self) -> SimWorker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
