"""The tf.data frame stream: episodes -> normalised action-chunk frames -> mixture -> shuffle -> shard -> images.

    per dataset: read episodes (train: file order shuffled per epoch, seeded) -> keep the selected episodes
                 (by tfds id) -> repeat (train) -> standardise, normalise (BOUNDS_Q99), chunk -> unbatch to
                 frames (images still JPEG bytes). Unselected episodes are read and dropped before any
                 parsing of images, so an N-shot epoch still reads the whole dataset once.
    mixture:     train: sample_from_datasets, weights = multiplier x selected transitions (seeded)
                 val:   datasets one after the other, finite, unshuffled
    shuffle:     train only, frame level, `shuffle_buffer_size` frames (seeded)
    enumerate:   k = the frame's position in the GLOBAL stream (the same on every rank)
    skip:        skip_samples frames of the global stream (before any image work, so resuming is cheap)
    shard:       keep the frames of this rank: (k // rank_batch_size) % world_size == rank
    images:      decode -> resize (lanczos3) -> augment (train + image_aug; stateless, seeded by (seed, k))

World-size invariance. Every seed above derives from (seed, purpose) only, never from the rank, so all
ranks build the same global stream of ENCODED frames, and the global batch t is the frames
k in [t B, (t + 1) B) (B = rank_batch_size x world_size) whatever the number of ranks. Rank r keeps the
contiguous slice [t B + r b, t B + (r + 1) b) (b = rank_batch_size) of every global batch; consecutive
micro-batches of a rank are consecutive pieces of that slice. The shard filter runs before decoding, so a
rank decodes, resizes and augments only its own frames; what every rank repeats is reading and parsing
the (encoded) records and the shuffle buffer's bookkeeping, which is cheap next to the image work
(benchmarks/bench_data.py measures it). Augmentation depends only on (seed, k), so a frame gets the same
pixels on any rank of any world size, and `skip_samples=n` continues exactly where a run that consumed n
global frames stopped.

Memory: the shuffle buffer holds `shuffle_buffer_size` frames, each with `num_images` ENCODED images plus a
few hundred bytes of actions/proprio/instruction. Budget ~ shuffle_buffer_size x (encoded image bytes of a
frame + ~10 KB of tensor and allocator overhead): bench_data.py measured +215 MiB RSS for 10,000 frames of
two 256 px synthetic JPEGs (~12 KB per frame). LIBERO frames (two 256 px JPEGs of real scenes, roughly
20-30 KB together; an estimate) give ~3-4 GB at upstream's default of 100,000 frames, ~350 MB at 10,000.
On top come a few episodes in flight per dataset and the autotuned prefetch buffers (capped at
AUTOTUNE_RAM_BUDGET). Every rank holds one such buffer (of the global stream), as before it held one of its
own shard: the memory per rank does not grow with the world size.
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
# Seeds used to include the rank; they now use 0 in its place for every rank, so single-process streams
# (and checkpoints written by them) are exactly what they were before the stream became global.
_SHARED_STREAM = 0


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
    rank: int  # this process's data-parallel rank
    world_size: int  # data-parallel processes
    rank_batch_size: int  # consecutive global frames each rank takes per global batch (module docstring)
    skip_samples: int  # frames of the GLOBAL stream to skip (exact resume: all ranks' consumed frames)

    @property
    def global_batch_size(self) -> int:
        return self.rank_batch_size * self.world_size


def _seed(config: StreamConfig, *purpose: object) -> int:
    """A per-purpose tf seed in [0, 2^31) derived from (seed, purpose): identical on every rank."""
    return _stable_int(config.seed, _SHARED_STREAM, *purpose) % (2**31 - 1)


def _episode_frames(source: DatasetSource, config: StreamConfig):
    """One dataset's frames (all selected episodes) with images still encoded."""
    tf = get_tf()
    spec, stats = source.spec, source.statistics
    keep = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant([e.tfds_id for e in source.selection.episodes]),
            tf.constant([e.index for e in source.selection.episodes], tf.int64),
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


def load_frame_images(frame: dict, config: StreamConfig) -> dict:
    """Decode, resize and (train + image_aug) augment one frame's encoded images (the per-rank image work)."""
    tf = get_tf()
    # Augmentation seed: (seed, k) only (no rank), so a frame's pixels do not depend on who decodes it.
    base_seed = tf.constant([config.seed, _SHARED_STREAM], tf.int64)
    images = []
    for cam in range(config.num_images):
        image = image_ops.resize_image_tf(image_ops.decode_image_tf(frame["images"][cam]), config.image_size)
        if config.train and config.image_aug:
            seed = tf.random.experimental.stateless_fold_in(base_seed, frame["sample_index"])
            image = image_ops.augment_image_tf(image, tf.random.experimental.stateless_fold_in(seed, cam))
        images.append(image)
    return {**frame, "images": tf.stack(images)}


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
    if config.world_size > 1:
        # Shard BEFORE decoding: the other ranks' frames are dropped while their images are still bytes.
        rank_batch, world, rank = (tf.constant(v, tf.int64) for v in
                                   (config.rank_batch_size, config.world_size, config.rank))
        frames = frames.filter(lambda frame: (frame["sample_index"] // rank_batch) % world == rank)

    frames = frames.map(lambda frame: load_frame_images(frame, config), num_parallel_calls=tf.data.AUTOTUNE,
                        deterministic=True)
    options = tf.data.Options()
    options.deterministic = True
    options.autotune.ram_budget = AUTOTUNE_RAM_BUDGET  # caps autotuned prefetch buffers (not the shuffle buffer)
    return frames.prefetch(tf.data.AUTOTUNE).with_options(options)
