"""BOUNDS_Q99 normalisation of actions and proprio, and the `dataset_statistics.json` format.

    normalise:    x' = clip(2 (x - q01) / (q99 - q01 + eps) - 1, -1, 1)     where mask is True
    un-normalise: x  = 0.5 (x' + 1) (q99 - q01 + eps) + q01                where mask is True

Dimensions with q01 == q99 (constant in the data) normalise to 0 (our training convention). For LIBERO actions
the mask is [True] * 6 + [False]: the gripper is already in [0, 1] and is left untouched (facts §2.9).

Upstream differs in two places (both only matter for (near-)constant dimensions):
  training    zeroes dims where min == max (action and proprio, masked or not) -- a dim with q01 == q99 but
              min < max is NOT zeroed there: it normalises to clip(2 (x - q01) / eps - 1) = +-1.
  evaluation  normalises proprio with the plain clipped formula, no zeroing at all.
Released checkpoints are evaluated with `zero_constant=False` (upstream's evaluation arithmetic, what their
weights see there; `VLAConfig.zero_constant_proprio`); checkpoints trained here keep our convention at both ends.

`dataset_statistics.json` (upstream-compatible, so upstream checkpoints and ours are interchangeable):

    {"<dataset_name>": {"action":  {"mean", "std", "max", "min", "q01", "q99": [A], "mask": [A bools]},
                        "proprio": {"mean", "std", "max", "min", "q01", "q99": [P]},
                        "num_transitions": int, "num_trajectories": int}}

Works on numpy arrays and torch tensors alike (the statistics are converted to the input's type).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prismatic.constants import NORMALIZATION_EPS

STAT_KEYS = ("mean", "std", "max", "min", "q01", "q99")


def _like(value: Any, ref: np.ndarray | torch.Tensor):
    if isinstance(ref, torch.Tensor):
        return torch.as_tensor(np.asarray(value), dtype=ref.dtype, device=ref.device)
    return np.asarray(value, dtype=ref.dtype if np.issubdtype(ref.dtype, np.floating) else np.float32)


def _mask(stats: dict, dim: int, ref):
    mask = stats.get("mask")
    if mask is None:
        mask = [True] * dim
    if len(mask) != dim:
        raise ValueError(f"normalisation mask has {len(mask)} entries but data has {dim} dims")
    if isinstance(ref, torch.Tensor):
        return torch.as_tensor(np.asarray(mask, dtype=bool), device=ref.device)
    return np.asarray(mask, dtype=bool)


def _check_dim(stats: dict, x) -> int:
    dim = x.shape[-1]
    for key in ("q01", "q99"):
        if key not in stats:
            raise KeyError(f"normalisation statistics lack {key!r}")
        if len(stats[key]) != dim:
            raise ValueError(f"statistics {key!r} have {len(stats[key])} dims but data has {dim}")
    return dim


def normalize_bounds_q99(x, stats: dict, zero_constant: bool = True):
    """Normalise the last axis of `x` with BOUNDS_Q99 statistics (see module docstring).

    zero_constant: map masked dims with q01 == q99 to 0 (ours); False = upstream's evaluation (no zeroing)."""
    dim = _check_dim(stats, x)
    q01, q99 = _like(stats["q01"], x), _like(stats["q99"], x)
    mask = _mask(stats, dim, x)
    scaled = 2 * (x - q01) / (q99 - q01 + NORMALIZATION_EPS) - 1
    if isinstance(x, torch.Tensor):
        scaled = torch.clamp(scaled, -1, 1)
        if zero_constant:
            scaled = torch.where(q01 == q99, torch.zeros_like(scaled), scaled)
        return torch.where(mask, scaled, x)
    scaled = np.clip(scaled, -1, 1)
    if zero_constant:
        scaled = np.where(q01 == q99, 0.0, scaled)
    return np.where(mask, scaled, x).astype(x.dtype if np.issubdtype(x.dtype, np.floating) else np.float32)


def unnormalize_bounds_q99(x, stats: dict):
    """Inverse of `normalize_bounds_q99` on the masked dimensions (the others pass through)."""
    dim = _check_dim(stats, x)
    q01, q99 = _like(stats["q01"], x), _like(stats["q99"], x)
    mask = _mask(stats, dim, x)
    raw = 0.5 * (x + 1) * (q99 - q01 + NORMALIZATION_EPS) + q01
    if isinstance(x, torch.Tensor):
        return torch.where(mask, raw, x)
    return np.where(mask, raw, x).astype(x.dtype if np.issubdtype(x.dtype, np.floating) else np.float32)


def load_dataset_statistics(path: str | Path) -> dict[str, dict]:
    """Read `dataset_statistics.json` (a file, or a directory containing it) and validate its layout."""
    path = Path(path)
    if path.is_dir():
        path = path / "dataset_statistics.json"
    if not path.is_file():
        raise FileNotFoundError(f"dataset statistics not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"corrupt dataset statistics file {path}: {e}") from e
    if not isinstance(data, dict) or not data:
        raise ValueError(f"dataset statistics file {path} holds no datasets")
    for name, entry in data.items():
        for part in ("action", "proprio"):
            if part not in entry:
                raise ValueError(f"dataset statistics {path}: entry {name!r} lacks {part!r}")
            missing = [k for k in ("q01", "q99") if k not in entry[part]]
            if missing:
                raise ValueError(f"dataset statistics {path}: {name}.{part} lacks {missing}")
    return data


def save_dataset_statistics(stats: dict[str, dict], path: str | Path) -> None:
    """Write statistics atomically (temp file, then rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_to_builtin(stats), indent=2))
    tmp.replace(path)


def select_unnorm_key(stats: dict[str, dict], unnorm_key: str | None) -> str:
    """Pick the statistics entry for un-normalisation: the given key, its `_no_noops` variant, or the only
    entry. Ambiguity or absence is an error naming the available keys."""
    if unnorm_key:
        for key in (unnorm_key, f"{unnorm_key}_no_noops"):
            if key in stats:
                return key
        raise KeyError(f"unnorm_key {unnorm_key!r} not in dataset statistics; available: {sorted(stats)}")
    if len(stats) == 1:
        return next(iter(stats))
    raise KeyError(f"dataset statistics hold several datasets {sorted(stats)}; pass unnorm_key")


def _to_builtin(obj):
    if isinstance(obj, dict):
        return {k: _to_builtin(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_builtin(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return obj.item()
    return obj
