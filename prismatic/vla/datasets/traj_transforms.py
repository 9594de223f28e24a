"""Per-trajectory TensorFlow transforms: standardise, normalise, chunk.

A trajectory here is one RLDS episode with its steps batched along a leading time axis T.

Action chunking (facts §6.2, upstream `chunk_act_obs` with window 1 and future window chunk - 1):

    chunk start t        actions used
    0                    a[0], a[1], ..., a[chunk-1]
    ...
    T - chunk            a[T-chunk], ..., a[T-1]          <- the last chunk start
    T - chunk + 1 .. T-1 (not chunk starts: dropped)

Only the first T - (chunk - 1) timesteps become training samples; the action indices t + i are clipped to
T - 1, which with those starts never triggers, so every chunk holds real actions. Episodes shorter than
`chunk` yield no samples (as upstream).
"""

from __future__ import annotations

import numpy as np

from prismatic.constants import NORMALIZATION_EPS
from prismatic.vla.datasets._tf import get_tf
from prismatic.vla.datasets.registry import DatasetSpec


def transform_gripper(action, kind: str):
    """Map the last action dim (the gripper). "clip_invert": env -1 open / +1 close -> 1 open / 0 close."""
    tf = get_tf()
    if kind == "none":
        return action
    if kind == "clip_invert":
        gripper = 1.0 - tf.clip_by_value(action[..., -1:], 0.0, 1.0)
        return tf.concat([action[..., :-1], gripper], axis=-1)
    raise ValueError(f"unknown gripper transform {kind!r}")


def standardize_trajectory(steps: dict, spec: DatasetSpec) -> dict:
    """RLDS steps (batched over T) -> {"proprio": (T, P) f32, "action": (T, A) f32, "instruction": (T,) str}.

    The statistics pass and the training stream both call this, and its source is part of the statistics
    cache key, so cached statistics always describe what training sees.
    """
    tf = get_tf()
    state = tf.cast(steps["observation"][spec.state_key], tf.float32)
    proprio = tf.concat([state[:, start:stop] for start, stop in spec.proprio_slices], axis=-1)
    action = transform_gripper(tf.cast(steps[spec.action_key], tf.float32), spec.gripper_transform)
    return {"proprio": proprio, "action": action, "instruction": steps[spec.language_key]}


def normalize_bounds_q99_tf(x, stats: dict):
    """BOUNDS_Q99 on the last axis of a float32 tensor; the same arithmetic, in the same float32 order, as
    `prismatic.vla.normalization.normalize_bounds_q99` (tested to agree)."""
    tf = get_tf()
    q01 = tf.constant(np.asarray(stats["q01"], np.float32))
    q99 = tf.constant(np.asarray(stats["q99"], np.float32))
    mask = stats.get("mask")
    mask = tf.constant(np.asarray([True] * len(stats["q01"]) if mask is None else mask, bool))
    scaled = 2.0 * (x - q01) / (q99 - q01 + NORMALIZATION_EPS) - 1.0
    scaled = tf.clip_by_value(scaled, -1.0, 1.0)
    scaled = tf.where(q01 == q99, tf.zeros_like(scaled), scaled)  # constant dims carry no information
    return tf.where(mask, scaled, x)


def num_chunk_starts(length: int, chunk: int) -> int:
    """How many samples an episode of `length` steps yields (see module docstring)."""
    return max(length - (chunk - 1), 0)


def chunk_actions(action, chunk: int):
    """(T, A) -> (T - chunk + 1, chunk, A): chunk i holds actions i .. i + chunk - 1 (indices clipped to T - 1)."""
    tf = get_tf()
    length = tf.shape(action)[0]
    starts = tf.range(tf.maximum(length - (chunk - 1), 0))
    index = tf.minimum(starts[:, None] + tf.range(chunk)[None, :], length - 1)  # (T - chunk + 1, chunk)
    return tf.gather(action, index)
