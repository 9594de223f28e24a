"""The tf.data frame stream: episodes -> normalised action-chunk frames -> mixture -> shuffle -> images.

    per dataset: read episodes (train: file order shuffled per epoch, seeded) -> keep this rank's selected
                 episodes (by tfds id) -> repeat (train) -> standardise, normalise (BOUNDS_Q99), chunk ->
                 unbatch to frames (images still JPEG bytes). Unselected episodes are read and dropped
                 before any parsing of images, so an N-shot epoch still reads the whole dataset once.
    mixture:     train: sample_from_datasets, weights = multiplier x selected transitions (seeded)
                 val:   datasets one after the other, finite, unshuffled
    shuffle:     train only, frame level, `shuffle_buffer_size` frames (seeded)
    enumerate:   k = the frame's position in this rank's stream
    skip:        skip_samples frames (before any image work, so resuming is cheap)
    images:      decode -> resize (lanczos3) -> augment (train + image_aug; stateless, seeded by (seed, rank, k))

Every random choice is seeded and the pipeline runs with `deterministic=True`, so the same arguments give
the same stream; augmentation depends only on k, so `skip_samples=n` continues exactly where a run that
consumed n frames stopped.

Memory: the shuffle buffer holds `shuffle_buffer_size` frames, each with `num_images` ENCODED images plus a
few hundred bytes of actions/proprio/instruction. Budget ~ shuffle_buffer_size x (encoded image bytes of a
frame + ~10 KB of tensor and allocator overhead): bench_data.py measured +215 MiB RSS for 10,000 frames of
two 256 px synthetic JPEGs (~12 KB per frame). LIBERO frames (two 256 px JPEGs of real scenes, roughly
20-30 KB together; an estimate) give ~3-4 GB at upstream's default of 100,000 frames, ~350 MB at 10,000.
On top come a few episodes in flight per dataset and the autotuned prefetch buffers (capped at
AUTOTUNE_RAM_BUDGET).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prismatic.vla.datasets import image_ops, traj_transforms
from prismatic.vla.datasets._tf import get_tf
from prismatic.vla.datasets.episode_selection import EpisodeSelection, _stable_int
from prismatic.vla.datasets.registry import DatasetSpec
from prismatic.vla.datasets.source import read_episodes

AUTOTUNE_RAM_BUDGET = 1 << 30  # bytes; upstream's `with_ram_budget(1)` (1 GiB)


@dataclass
class DatasetSource:
    """Everything the stream needs about one dataset of the mixture."""

    spec: DatasetSpec
    builder: object  # tfds builder
    builder_dir: Path
    statistics: dict  # upstream statistics entry: {"action": {...}, "proprio": {...}, ...}
    selection: EpisodeSelection
    weight: float  # mixture weight multiplier


@dataclass(frozen=True)
class StreamConfig:
    image_size: int  # square output size of every image
    num_images: int  # cameras per frame (third-person first, then wrist)
    chunk: int  # actions per chunk
    train: bool  # repeat + shuffle + (optionally) augment; False: one finite, ordered pass
    image_aug: bool  # training augmentation (only with train)
    shuffle_buffer_size: int  # frames in the shuffle buffer (train)
    seed: int
    rank: int
    skip_samples: int  # frames of this rank's stream to skip (exact resume)


def _seed(config: StreamConfig, *purpose: object) -> int:
    """A per-purpose tf seed in [0, 2^31) derived from (seed, rank, purpose)."""
    return _stable_int(config.seed, config.rank, *purpose) % (2**31 - 1)


def _episode_frames(source: DatasetSource, config: StreamConfig):
    """One dataset's frames (this rank's selected episodes) with images still encoded."""
    tf = get_tf()
    spec, stats = source.spec, source.statistics
    keep = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant([e.tfds_id for e in source.selection.rank_episodes]),
            tf.constant([e.index for e in source.selection.rank_episodes], tf.int64),
        ),
        default_value=tf.constant(-1, tf.int64),
    )
    episodes = read_episodes(source.builder,
                             shuffle_seed=_seed(config, "files", spec.name) if config.train else None)
    episodes = episodes.map(lambda ep: (keep.lookup(ep["tfds_id"]), ep["steps"])).filter(lambda i, _: i >= 0)
    if config.train:
        episodes = episodes.repeat()

    def to_frames(episode_index, steps):
        standard = traj_transforms.standardize_trajectory(steps, spec)
        action = traj_transforms.normalize_bounds_q99_tf(standard["action"], stats["action"])
        proprio = traj_transforms.normalize_bounds_q99_tf(standard["proprio"], stats["proprio"])
        chunks = traj_transforms.chunk_actions(action, config.chunk)  # (n, chunk, A), n = T - chunk + 1
        n = tf.shape(chunks)[0]
        images = tf.stack([steps["observation"][key][:n] for key in spec.image_keys[: config.num_images]], axis=1)
        return {
            "images": images,  # (n, num_images) encoded bytes
            "proprio": proprio[:n],  # (n, P)
            "actions": chunks,  # (n, chunk, A)
            "instruction": standard["instruction"][:n],  # (n,)
            "dataset_name": tf.fill([n], spec.name),
            "episode_index": tf.fill([n], episode_index),
            "timestep": tf.range(n, dtype=tf.int32),
        }

    return episodes.map(to_frames, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).unbatch()


def make_frame_stream(sources: list[DatasetSource], config: StreamConfig):
    """The full tf.data stream of frames (see module docstring). Each element:
    {"images": uint8 (num_images, S, S, 3), "proprio": f32 (P,), "actions": f32 (chunk, A),
     "instruction": str, "dataset_name": str, "episode_index": int64, "timestep": int32, "sample_index": int64}
    """
    tf = get_tf()
    streams = [_episode_frames(source, config) for source in sources]
    if len(streams) == 1:
        frames = streams[0]
    elif config.train:
        weights = np.array([s.weight * s.selection.num_transitions for s in sources], np.float64)
        frames = tf.data.Dataset.sample_from_datasets(streams, weights=(weights / weights.sum()).tolist(),
                                                      seed=_seed(config, "mixture"))
    else:
        frames = streams[0]
        for stream in streams[1:]:
            frames = frames.concatenate(stream)
    if config.train:
        frames = frames.shuffle(config.shuffle_buffer_size, seed=_seed(config, "frames"))
    frames = frames.enumerate().map(lambda k, frame: {**frame, "sample_index": k})
    if config.skip_samples:
        frames = frames.skip(config.skip_samples)

    augment = config.train and config.image_aug
    base_seed = tf.constant([config.seed, config.rank], tf.int64)

    def load_images(frame):
        images = []
        for cam in range(config.num_images):
            image = image_ops.resize_image_tf(image_ops.decode_image_tf(frame["images"][cam]), config.image_size)
            if augment:
                seed = tf.random.experimental.stateless_fold_in(base_seed, frame["sample_index"])
                image = image_ops.augment_image_tf(image, tf.random.experimental.stateless_fold_in(seed, cam))
            images.append(image)
        return {**frame, "images": tf.stack(images)}

    frames = frames.map(load_images, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    options = tf.data.Options()
    options.deterministic = True
    options.autotune.ram_budget = AUTOTUNE_RAM_BUDGET  # caps autotuned prefetch buffers (not the shuffle buffer)
    return frames.prefetch(tf.data.AUTOTUNE).with_options(options)
