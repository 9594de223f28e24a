"""Rollout videos: agentview and wrist camera side by side, mp4 via imageio (ffmpeg).

Imported by the simulator workers, so it must never import tensorflow (only numpy and imageio).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np

VIDEO_FPS = 30  # upstream's rollout videos use 30 fps
VIDEO_MODES = ("all", "failures", "none")


def side_by_side(agentview: np.ndarray, wrist: np.ndarray) -> np.ndarray:
    """Two uint8 (H, W, 3) frames -> one (H, W_a + W_w, 3) frame."""
    if agentview.shape[0] != wrist.shape[0]:
        raise ValueError(f"camera heights differ: {agentview.shape} vs {wrist.shape}")
    return np.concatenate([agentview, wrist], axis=1)


def should_save_video(mode: str, success: bool) -> bool:
    """Whether an episode's video is kept under `mode` ("all" | "failures" | "none"; errors are failures)."""
    if mode not in VIDEO_MODES:
        raise ValueError(f"save_videos must be one of {VIDEO_MODES}, got {mode!r}")
    return mode == "all" or (mode == "failures" and not success)


def video_filename(task_id: int, episode: int, success: bool, task: str, error: bool = False) -> str:
    """Deterministic name: task03--episode=07--success=False--task=<first 50 chars, no spaces>.mp4."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", task.strip())[:50]
    outcome = "error" if error else f"success={success}"
    return f"task{task_id:02d}--episode={episode:02d}--{outcome}--task={slug}.mp4"


def write_video(frames: Sequence[np.ndarray], path: str | Path, fps: int = VIDEO_FPS) -> Path:
    """Write uint8 (H, W, 3) frames to an mp4 atomically (temp file, then rename). Returns the path."""
    import imageio

    if len(frames) == 0:
        raise ValueError(f"no frames to write to {path}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.mp4")
    # macro_block_size=1: keep odd sizes as they are instead of resizing with a warning.
    with imageio.get_writer(tmp, fps=fps, codec="libx264", macro_block_size=1, quality=7) as writer:
        for frame in frames:
            writer.append_data(np.asarray(frame, dtype=np.uint8))
    tmp.replace(path)
    return path
