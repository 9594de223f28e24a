"""Scripted LIBERO demonstrations: simulate without rendering, keep successes, then render them.

Two passes, both in spawned simulator worker processes (`demo_runner.py` runs them over many demos; this module
never imports tensorflow; the RLDS writer runs in the main process, which never renders):

1. **Simulate** (`simulate_demo`, no cameras): for each demo slot, roll out the scripted expert
   (`scripted_expert.py`) from an initial state, recording the executed actions, the simulator state and the
   proprio before every action. Rejection sampling: a failed attempt is retried with a new expert seed, and
   after `attempts_per_init` failures on one initial state a new one is drawn (random inits), up to
   `max_attempts_per_demo`. Only successes are kept; every attempt's outcome goes into the summary.
2. **Render** (`render_demo`): rebuild the env with both cameras, restore the same initial state (same numpy
   seed before the hard reset, so model-level randomisation such as fixture placement is identical), run the
   same settle steps and re-execute the recorded actions. MuJoCo is deterministic, so this re-execution IS the
   live rollout: the simulator state before every step is compared with the recorded one (bit-exact on this
   stack; any difference above `replay_tolerance` aborts with `ReplayMismatchError`), and the episode must
   end in success at its last step. Re-executing actions rather than writing recorded states back matters:
   after a control step robosuite renders with body poses one physics sub-step old (mj_step integrates
   positions after computing kinematics), while `set_state` + forward would give current ones, i.e. frames
   slightly different from the live ones.

Conventions of the written data (the published LIBERO RLDS, `openvla/modified_libero_rlds`): images rotated by
180 degrees (`env.extract_images`), 8-d state (eef pos, axis-angle, 2 gripper qpos), 7-d joint_state, raw
env actions (OSC_POSE deltas, gripper -1 open / +1 close), steps start after the 10 settle steps. No-op
actions (|a[:6]| < 1e-4 with the gripper unchanged) are neither executed nor recorded, as in the published
regeneration; the expert only emits them once its script is over.

Initial states: `init_source="random"` (default) samples fresh layouts with LIBERO's own placement sampler
(env.reset under a derived numpy seed), so demos never reuse the evaluation's fixed initial states;
`"benchmark"` uses the suite's fixed states (demo k of a task uses state k mod 50). The layout is named in each
episode's file_path (`parse_episode_file_path`, `initial_state_from_label`), so every demo can be re-created.

Throughput (libero_object, ~135 policy steps per demo; 2026-11-22, 2-core CPU shared with other jobs, osmesa
software rendering; per worker, env building included):

| pass                          | 1 worker          | 2 workers (each) |
|-------------------------------|-------------------|------------------|
| simulate (no rendering)       | 9.5 demos/min     | 7-9 demos/min    |
| render 128 px, both cameras   | 3.0 demos/min     | 1.5 demos/min    |
| render 256 px, both cameras   | 2.5 demos/min     | -                |

Rendering dominates (about 6-7 steps/s for one process); on two shared cores a second worker barely adds
throughput. 100 demos at 128 px: about 35 min of rendering.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from prismatic.constants import LIBERO_MAX_STEPS

logger = logging.getLogger(__name__)

INIT_SOURCES = ("random", "benchmark")
NOOP_THRESHOLD = 1e-4  # the published regeneration's no-op test on |a[:6]|
MAX_CONSECUTIVE_NOOPS = 50  # an expert that only emits no-ops is stuck


class ReplayMismatchError(RuntimeError):
    """Re-executing a recorded demo did not reproduce the recorded rollout."""


@dataclass(frozen=True)
class DemoJob:
    """One demo slot for the simulate pass (picklable: sent to a worker)."""

    suite_name: str
    task_id: int
    slot: int  # demo index within the task
    seed: int  # generation seed; every expert / reset seed is derived from (seed, task, slot, attempt)
    init_source: str = "random"
    max_attempts: int = 6
    attempts_per_init: int = 2
    diversity: float = 1.0
    max_replans: int = 1
    num_steps_wait: int = 10
    max_steps: int | None = None  # None: the suite's evaluation horizon


@dataclass
class AttemptInfo:
    attempt: int
    init: str  # "benchmark:<k>" or "random:<reset seed>"
    expert_seed: int
    success: bool
    steps: int
    failure_reason: str | None
    replans: int
    noops_dropped: int
    seconds: float


@dataclass
class DemoRecord:
    """A simulated rollout: everything needed to re-execute and render it."""

    suite_name: str
    task_id: int
    slot: int
    instruction: str
    reset_seed: int  # numpy seed set right before the hard reset
    init_state: np.ndarray  # (S,) float64 flattened MuJoCo state loaded after the reset
    init_label: str
    expert_seed: int
    num_steps_wait: int
    actions: np.ndarray  # (T, 7) float64, executed env actions
    sim_states: np.ndarray  # (T, S) float64, simulator state before each action
    state: np.ndarray  # (T, 8) float32 proprio before each action
    joint_state: np.ndarray  # (T, 7) float32
    success: bool = True  # the env reported success after the last action
    phase_log: list = field(default_factory=list)
    # (T, H, W, 3) uint8 live camera frames (rotated 180 degrees), only when rolled out with cameras on.
    images: np.ndarray | None = None
    wrist_images: np.ndarray | None = None


@dataclass
class SlotResult:
    job: DemoJob
    record: DemoRecord | None  # the kept success, None when every attempt failed
    attempts: list[AttemptInfo]
    seconds: float = 0.0  # worker wall time for the whole slot (env building included when it happened)


@dataclass
class RenderedDemo:
    episode: dict  # the RLDS writer's episode dict
    max_state_diff: float  # max |replayed - recorded| simulator state over the episode
    seconds: float
    steps: int


def derive_seed(*parts: int) -> int:
    """A 31-bit seed from integer parts (independent streams per task / slot / attempt)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


def is_noop(action: np.ndarray, prev_gripper: float) -> bool:
    return bool(np.linalg.norm(action[:6]) < NOOP_THRESHOLD and action[6] == prev_gripper)


# --------------------------------------------------------------------------------------------------
# Worker side
# --------------------------------------------------------------------------------------------------
_ENV_CACHE: dict = {}


def init_worker() -> None:
    """Process initialiser of the spawned simulator workers."""
    if "tensorflow" in sys.modules:
        raise RuntimeError("tensorflow is loaded in a simulator worker; TF and MuJoCo rendering crash in one process")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    logging.basicConfig(level=logging.WARNING, format=f"[demo worker {os.getpid()}] %(levelname)s %(message)s")
    from prismatic.sim.libero import env as libero_env

    libero_env.prepare_libero()


def get_worker_env(suite_name: str, task_id: int, img_size: int | None):
    """The worker's env for (suite, task, cameras); the previous one is closed when the key changes."""
    from prismatic.sim.libero import env as libero_env

    key = (suite_name, task_id, img_size)
    if _ENV_CACHE.get("key") != key:
        if _ENV_CACHE.get("env") is not None:
            libero_env.close_env(_ENV_CACHE["env"])
        _ENV_CACHE.clear()
        if img_size is None:
            env, instruction = libero_env.make_libero_env(suite_name, task_id, resolution=64, use_camera_obs=False)
        else:
            env, instruction = libero_env.make_libero_env(suite_name, task_id, resolution=img_size)
        _ENV_CACHE.update(key=key, env=env, instruction=instruction)
    return _ENV_CACHE["env"], _ENV_CACHE["instruction"]


def _restore(env, reset_seed: int, init_state: np.ndarray, num_steps_wait: int) -> dict:
    from prismatic.sim.libero import env as libero_env

    obs = libero_env.reset_to_init_state(env, init_state, env_seed=reset_seed)
    return libero_env.settle(env, num_steps_wait, obs)


def rollout(env, instruction: str, job: DemoJob, attempt: int, reset_seed: int, init_state: np.ndarray,
            init_label: str, capture_images: bool = False) -> tuple[DemoRecord, AttemptInfo]:
    """One expert rollout (successful or not). With `capture_images` (an env with cameras), the live frames
    before every action are kept too."""
    from prismatic.sim.libero import env as libero_env
    from prismatic.sim.libero.scripted_expert import ExpertConfig, Phase, make_expert

    start = time.perf_counter()
    max_steps = job.max_steps or LIBERO_MAX_STEPS[job.suite_name]
    expert_seed = derive_seed(job.seed, job.task_id, job.slot, attempt, 0)
    obs = _restore(env, reset_seed, init_state, job.num_steps_wait)
    expert = make_expert(env, expert_seed, ExpertConfig(diversity=job.diversity, max_replans=job.max_replans))
    expert.reset(env)
    actions, sim_states, states, joints, frames = [], [], [], [], []
    prev_gripper = libero_env.dummy_action()[6]  # the settle steps' gripper command
    success, reason, noops, consecutive = False, None, 0, 0
    while True:
        if len(actions) >= max_steps:
            reason = "horizon"
            break
        action = np.asarray(expert.act(env, obs), dtype=np.float64)
        if expert.phase == Phase.FAILED:
            reason = expert.failure_reason
            break
        if is_noop(action, prev_gripper):
            noops, consecutive = noops + 1, consecutive + 1
            if expert.finished:
                reason = "script_finished_without_success"
                break
            if consecutive > MAX_CONSECUTIVE_NOOPS:
                reason = "stuck_emitting_noops"
                break
            continue
        consecutive = 0
        sim_states.append(env.get_sim_state().copy())
        states.append(libero_env.extract_state(obs))
        joints.append(libero_env.extract_joint_state(obs))
        if capture_images:
            frames.append(libero_env.extract_images(obs))
        actions.append(action)
        prev_gripper = action[6]
        obs, _, done, _ = libero_env.step_env(env, action)
        if done:
            success = True
            break
    info = AttemptInfo(attempt=attempt, init=init_label, expert_seed=expert_seed, success=success,
                       steps=len(actions), failure_reason=reason, replans=expert.replans, noops_dropped=noops,
                       seconds=time.perf_counter() - start)
    record = DemoRecord(
        suite_name=job.suite_name, task_id=job.task_id, slot=job.slot, instruction=instruction,
        reset_seed=reset_seed, init_state=np.asarray(init_state, dtype=np.float64).copy(), init_label=init_label,
        expert_seed=expert_seed, num_steps_wait=job.num_steps_wait, actions=np.stack(actions),
        sim_states=np.stack(sim_states), state=np.stack(states), joint_state=np.stack(joints), success=success,
        phase_log=list(expert.phase_log),
        images=np.stack([f[0] for f in frames]) if frames else None,
        wrist_images=np.stack([f[1] for f in frames]) if frames else None,
    )
    return record, info





def _initial_state(env, job: DemoJob, init_round: int) -> tuple[int, np.ndarray, str]:
    """(reset seed, initial state, label) for the `init_round`-th initial state of a slot."""
    if job.init_source == "benchmark":
        n = len(_benchmark_states(job.suite_name, job.task_id))
        label = f"benchmark:{(job.slot + init_round * 7919) % n}"  # later rounds: another, far-away fixed state
    else:
        label = f"random:{derive_seed(job.seed, job.task_id, job.slot, init_round, 1)}"
    return (*initial_state_from_label(env, job.suite_name, job.task_id, label), label)


def _benchmark_states(suite_name: str, task_id: int) -> np.ndarray:
    from prismatic.sim.libero import env as libero_env

    return libero_env.get_initial_states(suite_name, task_id)


def initial_state_from_label(env, suite_name: str, task_id: int, label: str) -> tuple[int, np.ndarray]:
    """(reset seed, initial MuJoCo state) named by an episode's init label: "benchmark:<k>" (the suite's k-th
    fixed state) or "random:<seed>" (the layout LIBERO's placement sampler draws under numpy seed <seed>).
    The label is part of every generated episode's file_path, so any demo can be re-created."""
    from prismatic.sim.libero import env as libero_env

    kind, _, value = label.partition(":")
    if kind not in ("benchmark", "random") or not value.isdigit():
        raise ValueError(f"init label must be 'benchmark:<index>' or 'random:<seed>', got {label!r}")
    if kind == "benchmark":
        states = _benchmark_states(suite_name, task_id)
        if int(value) >= len(states):
            raise ValueError(f"init label {label!r}: {suite_name} task {task_id} has {len(states)} initial states")
        return libero_env.LIBERO_ENV_SEED, np.asarray(states[int(value)])
    np.random.seed(int(value))
    env.reset()  # LIBERO's placement sampler draws the layout from numpy's global RNG
    return int(value), env.get_sim_state().copy()


def simulate_demo(job: DemoJob) -> SlotResult:
    """Rejection-sample one demo slot (worker entry point of the simulate pass)."""
    from prismatic.sim.libero.scripted_expert import check_task_supported

    check_task_supported(job.suite_name, job.task_id)
    start = time.perf_counter()
    env, instruction = get_worker_env(job.suite_name, job.task_id, None)
    attempts: list[AttemptInfo] = []
    init = None
    for attempt in range(job.max_attempts):
        if attempt % job.attempts_per_init == 0:
            init = _initial_state(env, job, attempt // job.attempts_per_init)
        record, info = rollout(env, instruction, job, attempt, *init)
        attempts.append(info)
        if record.success:
            return SlotResult(job=job, record=record, attempts=attempts, seconds=time.perf_counter() - start)
    return SlotResult(job=job, record=None, attempts=attempts, seconds=time.perf_counter() - start)


def render_demo(record: DemoRecord, img_size: int, replay_tolerance: float = 0.0,
                num_steps: int | None = None) -> RenderedDemo:
    """Re-execute a recorded demo with both cameras on and return its RLDS episode (worker entry point).
    `num_steps` renders only a prefix (no final success check; for tests)."""
    from prismatic.sim.libero import env as libero_env

    start = time.perf_counter()
    env, _ = get_worker_env(record.suite_name, record.task_id, img_size)
    obs = _restore(env, record.reset_seed, record.init_state, record.num_steps_wait)
    full = num_steps is None or num_steps >= len(record.actions)
    length = len(record.actions) if full else num_steps
    images = np.empty((length, img_size, img_size, 3), np.uint8)
    wrist = np.empty_like(images)
    states = np.empty((length, 8), np.float32)
    joints = np.empty((length, 7), np.float32)
    max_diff, done = 0.0, False
    for t, action in enumerate(record.actions[:length]):
        diff = float(np.abs(env.get_sim_state() - record.sim_states[t]).max())
        max_diff = max(max_diff, diff)
        if diff > replay_tolerance:
            raise ReplayMismatchError(
                f"{record.suite_name} task {record.task_id} demo {record.slot}: simulator state differs from the "
                f"recorded one by {diff:.3e} at step {t} (tolerance {replay_tolerance:g}); the simulation is not "
                f"deterministic across the two passes"
            )
        images[t], wrist[t] = libero_env.extract_images(obs)
        states[t], joints[t] = libero_env.extract_state(obs), libero_env.extract_joint_state(obs)
        if done:
            raise ReplayMismatchError(f"{record.suite_name} task {record.task_id} demo {record.slot}: replay "
                                      f"succeeded at step {t}, before the recorded end ({length} steps)")
        obs, _, done, _ = libero_env.step_env(env, action)
    if full and not done:
        raise ReplayMismatchError(f"{record.suite_name} task {record.task_id} demo {record.slot}: replay of "
                                  f"{length} steps did not end in success")
    for name, replayed, recorded in (("state", states, record.state[:length]),
                                     ("joint_state", joints, record.joint_state[:length])):
        if np.abs(replayed - recorded).max() > replay_tolerance:
            raise ReplayMismatchError(f"{record.suite_name} task {record.task_id} demo {record.slot}: replayed "
                                      f"{name} differs from the recorded one")
    episode = {
        "steps": {"image": images, "wrist_image": wrist, "state": states, "joint_state": joints,
                  "action": record.actions[:length].astype(np.float32)},
        "language_instruction": record.instruction,
        "file_path": episode_file_path(record),
    }
    return RenderedDemo(episode=episode, max_state_diff=max_diff, seconds=time.perf_counter() - start,
                        steps=length)


def episode_file_path(record: DemoRecord) -> str:
    """The `episode_metadata/file_path` of a generated episode: where it came from (parse_episode_file_path)."""
    return (f"scripted_expert/{record.suite_name}/task_{record.task_id:02d}/demo_{record.slot:04d}"
            f"/{record.init_label}/expert_seed_{record.expert_seed}")


def parse_episode_file_path(file_path: str) -> dict:
    """Inverse of `episode_file_path`: {"suite_name", "task_id", "slot", "init_label", "expert_seed"}."""
    parts = file_path.split("/")
    try:
        if len(parts) != 6 or parts[0] != "scripted_expert":
            raise ValueError
        return {"suite_name": parts[1], "task_id": int(parts[2].removeprefix("task_")),
                "slot": int(parts[3].removeprefix("demo_")), "init_label": parts[4],
                "expert_seed": int(parts[5].removeprefix("expert_seed_"))}
    except ValueError:
        raise ValueError(f"not a scripted-demo file_path: {file_path!r} (expected scripted_expert/<suite>/"
                         f"task_<id>/demo_<k>/<init label>/expert_seed_<seed>)") from None


def replay_actions(suite_name: str, task_id: int, init_label: str, actions: np.ndarray, num_steps_wait: int = 10,
                   img_size: int | None = None) -> dict:
    """Execute `actions` (T, 7) open-loop from the initial state named by `init_label` (worker entry point).

    Returns {"success": bool, "steps": steps executed (stops at the first success), "first_raw_frames": the
    (agentview, wrist) images of the first recorded step exactly as MuJoCo renders them (not rotated), or None
    without cameras}.
    """
    from prismatic.sim.libero import env as libero_env

    env, _ = get_worker_env(suite_name, task_id, img_size)
    reset_seed, init_state = initial_state_from_label(env, suite_name, task_id, init_label)
    obs = _restore(env, reset_seed, init_state, num_steps_wait)
    first = None
    if img_size is not None:
        first = tuple(np.array(obs[f"{cam}_image"]) for cam in (libero_env.AGENTVIEW_CAMERA, libero_env.WRIST_CAMERA))
    done, steps = False, 0
    for action in np.asarray(actions, dtype=np.float64):
        _, _, done, _ = libero_env.step_env(env, action)
        steps += 1
        if done:
            break
    return {"success": done, "steps": steps, "first_raw_frames": first}
