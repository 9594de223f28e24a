"""Which episodes a stream reads: train/val split and per-task N-shot.

Both are decided from the episode index (statistics.py) BEFORE any tf.data stream exists, so they are
exact, reproducible and can be logged/saved by the trainer. Neither depends on the rank or the world size:
every rank reads the same selection and the stream is sharded per frame afterwards (pipeline.py), so the
selection, the mixture weights computed from it and the val split are the same on 1 or N processes.

1. Usable episodes: a language instruction and at least `chunk` steps (shorter ones yield no sample).
2. Train/val split, per task (task = language instruction): each task's episodes are ordered by a hash of
   (dataset, tfds id) and the first round(val_fraction * n) go to "val". The split depends on neither the
   seed nor the world size, so validation data stays fixed across runs.
3. Per-task N-shot (train split only): exactly N episodes of every task, drawn without replacement with a
   generator seeded by (seed, dataset, task). A task with fewer than N usable train episodes is an error.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prismatic.vla.datasets.statistics import DatasetIndex, EpisodeRecord

logger = logging.getLogger(__name__)

SPLITS = ("train", "val")


def _stable_int(*parts: object) -> int:
    """A 64-bit integer from the parts, identical in every process and Python run (unlike hash())."""
    return int.from_bytes(hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()[:8], "little")


@dataclass(frozen=True)
class EpisodeSelection:
    dataset_name: str
    split: str  # "train" or "val"
    episodes: tuple[EpisodeRecord, ...]  # the split's selected episodes (read by every rank), sorted by index

    def by_task(self) -> dict[str, list[int]]:
        """{instruction: sorted episode ids} (what the trainer logs/saves)."""
        out: dict[str, list[int]] = defaultdict(list)
        for e in self.episodes:
            out[e.instruction].append(e.index)
        return {task: sorted(ids) for task, ids in sorted(out.items())}

    @property
    def num_transitions(self) -> int:
        return sum(e.length for e in self.episodes)


def split_episodes(episodes: list[EpisodeRecord], dataset_name: str, val_fraction: float
                   ) -> dict[str, list[EpisodeRecord]]:
    """{"train": [...], "val": [...]} per the per-task rule in the module docstring."""
    by_task: dict[str, list[EpisodeRecord]] = defaultdict(list)
    for e in episodes:
        by_task[e.instruction].append(e)
    out: dict[str, list[EpisodeRecord]] = {"train": [], "val": []}
    for task_episodes in by_task.values():
        ordered = sorted(task_episodes, key=lambda e: _stable_int("val-split", dataset_name, e.tfds_id))
        num_val = int(val_fraction * len(ordered) + 0.5)
        out["val"] += ordered[:num_val]
        out["train"] += ordered[num_val:]
    return {split: sorted(eps, key=lambda e: e.index) for split, eps in out.items()}


def select_n_shot(episodes: list[EpisodeRecord], n: int, seed: int, dataset_name: str, source: Path
                  ) -> list[EpisodeRecord]:
    """Exactly `n` episodes of every task (see module docstring)."""
    by_task: dict[str, list[EpisodeRecord]] = defaultdict(list)
    for e in sorted(episodes, key=lambda e: e.index):
        by_task[e.instruction].append(e)
    too_few = {task: len(eps) for task, eps in by_task.items() if len(eps) < n}
    if too_few:
        details = "; ".join(f"{task!r}: {count}" for task, count in sorted(too_few.items()))
        raise ValueError(f"n_shot_per_task={n} but dataset {dataset_name!r} ({source}) has fewer usable training "
                         f"episodes for task(s): {details}")
    chosen: list[EpisodeRecord] = []
    for task, eps in sorted(by_task.items()):
        rng = np.random.default_rng(_stable_int("n-shot", seed, dataset_name, task))
        chosen += [eps[i] for i in rng.choice(len(eps), size=n, replace=False)]
    return sorted(chosen, key=lambda e: e.index)


def select_episodes(index: DatasetIndex, *, source: Path, train: bool, val_fraction: float,
                    n_shot_per_task: int | None, seed: int, min_length: int) -> EpisodeSelection:
    """Steps 1-3 of the module docstring for one dataset. Empty results are errors naming the dataset/path."""
    usable = [e for e in index.episodes if e.instruction and e.length >= min_length]
    dropped = len(index.episodes) - len(usable)
    if dropped:
        logger.warning("dataset %s: %d of %d episodes skipped (no language instruction, or fewer than %d steps)",
                       index.name, dropped, len(index.episodes), min_length)
    split = "train" if train else "val"
    episodes = split_episodes(usable, index.name, val_fraction)[split]
    if not episodes:
        raise ValueError(f"the {split!r} split of dataset {index.name!r} ({source}) is empty "
                         f"({len(usable)} usable episodes, val_fraction={val_fraction})")
    if train and n_shot_per_task is not None:
        episodes = select_n_shot(episodes, n_shot_per_task, seed, index.name, source)
    return EpisodeSelection(index.name, split, tuple(episodes))
