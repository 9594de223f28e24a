"""A generated, learnable LIBERO-format dataset for tests and the CPU demo (`libero_synthetic`).

Task k is "pick up the <colour> <shape>" (8 colours x {cube, ball}: up to 16 tasks). Each episode draws the
task's object and up to 3 other objects at random table positions; a scripted controller moves the
gripper (EEF) to the named object, closes the gripper, and lifts it:

    approach:  a_xyz = clip((object_xy, GRASP_Z) - eef) / SPEED, -1, 1) + small noise, gripper -1 (open)
    grasp:     2 steps holding position, gripper +1 (close)  -> finger qpos 0.04 -> 0
    lift:      a_xyz toward (object_xy, LIFT_Z), the object moves with the gripper; ends at LIFT_Z
    rotation:  a_rot = clip(-axis_angle / ROT_SPEED, -1, 1) (returns the wrist to neutral)

So the action depends on what the images show (where the named object is), on the instruction (which
object), and on the state (EEF pose, gripper): a model must ground the instruction in the image to beat a
constant predictor on the xy dims, and reads phase/height from state and images for the rest.

Images (top-down "agentview" of the whole table, and a wrist view centred on the gripper that widens with
height) are drawn with numpy. Episodes are 20-40 steps at the default speed. Actions use LIBERO's env
convention (gripper -1 open / +1 close); state = EEF pos (3) + axis-angle (3) + finger qpos (2).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from prismatic.vla.datasets.registry import get_dataset_spec, libero_spec
from prismatic.vla.datasets.rlds_writer import write_rlds_dataset

logger = logging.getLogger(__name__)

PALETTE = (("red", (220, 45, 45)), ("green", (40, 170, 65)), ("blue", (50, 90, 230)), ("yellow", (235, 210, 45)),
           ("purple", (150, 65, 195)), ("orange", (245, 140, 30)), ("cyan", (40, 205, 215)), ("pink", (245, 130, 185)))
SHAPES = ("cube", "ball")
MAX_TASKS = len(PALETTE) * len(SHAPES)
MAX_DISTRACTORS = 3

SPEED = 0.07  # workspace units per step at |action| = 1
ROT_SPEED = 0.05  # radians per step at |action| = 1
GRASP_Z, LIFT_Z = 0.05, 0.8
OBJECT_SIZE = 0.15  # cube half-side / ball radius (workspace units; the table spans [-1, 1]^2)
FINGER_OPEN = 0.04  # finger qpos when open (LIBERO-like)
ACTION_NOISE = 0.05
MAX_STEPS = 60
TABLE_RGB = np.array((150, 120, 90), np.float32)
GRIPPER_RGB = np.array((55, 55, 60), np.float32)

SYNTHETIC_PARAMS_FILE = "synthetic_params.json"  # written into the version dir: what generated it


def task_instruction(task: int) -> str:
    colour, _ = PALETTE[task % len(PALETTE)]
    return f"pick up the {colour} {SHAPES[task // len(PALETTE)]}"


def _render(objects: list[dict], eef: np.ndarray, finger: float, center: np.ndarray, half_extent: float,
            size: int, wrist: bool) -> np.ndarray:
    """Top-down view of the table window [center +- half_extent] -> uint8 (size, size, 3)."""
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 * half_extent - half_extent
    xs = center[0] + coords[None, :]  # (1, S): x grows to the right
    ys = center[1] - coords[:, None]  # (S, 1): y grows upwards
    shade = 1.0 - 0.08 * (xs**2 + ys**2)  # a soft vignette so the table is not a flat colour
    image = np.broadcast_to(TABLE_RGB * shade[..., None], (size, size, 3)).copy()
    # The gripper's shadow on the table marks its xy independently of its height.
    shadow = (xs - eef[0]) ** 2 + (ys - eef[1]) ** 2 < 0.06**2
    image[shadow] *= 0.6
    for obj in sorted(objects, key=lambda o: o["z"]):  # lifted objects are drawn last (on top)
        grow = 1.0 + 0.6 * obj["z"]  # closer to the camera = larger
        dx, dy = xs - obj["xy"][0], ys - obj["xy"][1]
        if obj["shape"] == "cube":
            inside = (np.abs(dx) < OBJECT_SIZE * grow) & (np.abs(dy) < OBJECT_SIZE * grow)
            light = np.ones_like(dx * dy)
        else:
            d2 = (dx**2 + dy**2) / (OBJECT_SIZE * grow) ** 2
            inside, light = d2 < 1.0, 1.0 - 0.35 * d2
        image[inside] = (obj["rgb"] * light[..., None])[inside]
    if wrist:
        gap = int(size * (0.1 + 2.5 * finger))  # fingers part as the gripper opens
        bar = max(size // 12, 1)
        rows = slice(size // 2, size)
        image[rows, max(size // 2 - gap - bar, 0): size // 2 - gap] = GRIPPER_RGB
        image[rows, size // 2 + gap: size // 2 + gap + bar] = GRIPPER_RGB
    else:
        radius = 0.08 * (1.0 + eef[2])
        d = np.sqrt((xs - eef[0]) ** 2 + (ys - eef[1]) ** 2)
        image[np.abs(d - radius) < 0.025] = GRIPPER_RGB
        if finger < FINGER_OPEN / 2:  # closed: filled centre
            image[d < radius * 0.5] = GRIPPER_RGB
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def _place_objects(rng: np.random.Generator, count: int) -> np.ndarray:
    """`count` xy positions in [-0.75, 0.75]^2, pairwise >= 0.45 apart (rejection sampling)."""
    for _ in range(1000):
        xy = rng.uniform(-0.75, 0.75, size=(count, 2))
        dist = np.linalg.norm(xy[:, None] - xy[None], axis=-1) + np.eye(count) * 10
        if dist.min() >= 0.45:
            return xy
    raise RuntimeError(f"could not place {count} objects without overlap")


def generate_episode(task: int, num_tasks: int, rng: np.random.Generator, image_size: int) -> dict:
    """One scripted episode of `task` (see module docstring), in the rlds_writer episode format."""
    others = [k for k in range(num_tasks) if k != task]
    distractors = list(rng.choice(others, size=min(MAX_DISTRACTORS, len(others)), replace=False)) if others else []
    ids = [task, *distractors]
    positions = _place_objects(rng, len(ids))
    objects = [{"xy": positions[i].astype(np.float32), "z": 0.0, "rgb": np.array(PALETTE[k % len(PALETTE)][1], np.float32),
                "shape": SHAPES[k // len(PALETTE)]} for i, k in enumerate(ids)]
    target = objects[0]
    eef = np.array([*rng.uniform(-0.9, 0.9, 2), rng.uniform(0.7, 1.0)], np.float32)
    axis_angle = rng.uniform(-0.3, 0.3, 3).astype(np.float32)
    finger, phase, grasp_steps = FINGER_OPEN, "approach", 0
    record: dict[str, list] = {k: [] for k in ("image", "wrist_image", "state", "joint_state", "action")}
    for _ in range(MAX_STEPS):
        record["image"].append(_render(objects, eef, finger, np.zeros(2, np.float32), 1.0, image_size, wrist=False))
        record["wrist_image"].append(_render(objects, eef, finger, eef[:2], 0.3 + 0.4 * eef[2], image_size, wrist=True))
        record["state"].append(np.array([*eef, *axis_angle, finger, -finger], np.float32))
        record["joint_state"].append(np.array([*(0.5 * eef), *(0.5 * axis_angle), 10 * finger], np.float32))
        goal_z = GRASP_Z if phase == "approach" else LIFT_Z
        goal = np.array([*target["xy"], goal_z], np.float32)
        move = np.zeros(3, np.float32) if phase == "grasp" else np.clip((goal - eef) / SPEED, -1, 1)
        move = np.clip(move + rng.normal(0, ACTION_NOISE, 3), -1, 1).astype(np.float32)
        rotate = np.clip(-axis_angle / ROT_SPEED, -1, 1).astype(np.float32)
        gripper = -1.0 if phase == "approach" else 1.0
        record["action"].append(np.array([*move, *rotate, gripper], np.float32))
        # Apply the action.
        eef = (eef + move * SPEED).astype(np.float32)
        axis_angle = (axis_angle + rotate * ROT_SPEED).astype(np.float32)
        finger = max(finger - FINGER_OPEN / 2, 0.0) if gripper > 0 else finger
        if phase == "approach" and np.abs(goal - eef).max() < 0.02:
            phase = "grasp"
        elif phase == "grasp":
            grasp_steps += 1
            phase = "lift" if grasp_steps >= 2 else "grasp"
        elif phase == "lift":
            target["xy"], target["z"] = eef[:2].copy(), float(eef[2])
            if eef[2] >= LIFT_Z - 0.01:
                break
    steps = {k: np.stack(v) for k, v in record.items()}
    return {"steps": steps, "language_instruction": task_instruction(task),
            "file_path": f"synthetic/{task_instruction(task).replace(' ', '_')}_demo.hdf5"}


def generate_episodes(num_tasks: int, episodes_per_task: int, image_size: int, seed: int) -> Iterator[dict]:
    """Episodes task-interleaved (episode e of every task, then e + 1); each seeded by (seed, task, e)."""
    if not 1 <= num_tasks <= MAX_TASKS:
        raise ValueError(f"num_tasks must be in [1, {MAX_TASKS}], got {num_tasks}")
    if episodes_per_task < 1:
        raise ValueError(f"episodes_per_task must be >= 1, got {episodes_per_task}")
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    for e in range(episodes_per_task):
        for task in range(num_tasks):
            yield generate_episode(task, num_tasks, np.random.default_rng([seed, task, e]), image_size)


def ensure_synthetic_dataset(root: str | Path, name: str = "libero_synthetic", num_tasks: int = 4,
                             episodes_per_task: int = 10, image_size: int = 128, seed: int = 0) -> Path:
    """Create root/<name>/1.0.0/ unless it exists with the same parameters (idempotent); return its path.

    An existing dataset generated with different parameters is an error (never silently reused or replaced).
    `name` must resolve to a LIBERO-layout spec (e.g. "libero_synthetic" or any "libero_synthetic*").
    """
    spec = get_dataset_spec(name)
    if spec != libero_spec(name):
        raise ValueError(f"dataset name {name!r} is registered with a non-LIBERO spec {spec}; pick another name")
    params = {"generator": "prismatic.vla.datasets.synthetic", "format_version": 1, "num_tasks": num_tasks,
              "episodes_per_task": episodes_per_task, "image_size": image_size, "seed": seed}
    target = Path(root) / name / "1.0.0"

    def matches() -> bool:
        marker = target / SYNTHETIC_PARAMS_FILE
        if not marker.is_file():
            raise ValueError(f"{target} exists but was not written by ensure_synthetic_dataset (no "
                             f"{SYNTHETIC_PARAMS_FILE}); use another root or name")
        existing = json.loads(marker.read_text())
        if existing != params:
            raise ValueError(f"{target} was generated with {existing}, not {params}; delete it or use another root")
        return True

    if target.exists() and matches():
        return target
    try:
        write_rlds_dataset(root, name, generate_episodes(num_tasks, episodes_per_task, image_size, seed), image_size,
                           extra_files={SYNTHETIC_PARAMS_FILE: json.dumps(params, indent=2, sort_keys=True)})
    except FileExistsError:
        matches()  # another process (e.g. a DDP rank) wrote it first: fine if it has our parameters
    return target
