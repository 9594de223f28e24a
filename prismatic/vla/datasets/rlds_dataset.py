"""`RLDSDataset`: the torch-facing iterable over the tf.data frame stream.

    dataset = RLDSDataset(data_root_dir, "libero_spatial_no_noops", RLDSBatchTransform(processor), model_config,
                          train=True, image_aug=True, shuffle_buffer_size=100_000, seed=7,
                          rank=rank, world_size=world_size, global_batch_size=B * G * world_size,
                          n_shot_per_task=None, skip_samples=step * B * G * world_size)
    loader = DataLoader(dataset, batch_size=B, collate_fn=PaddedCollator(processor), num_workers=0)

Every rank builds the same global frame stream and keeps its contiguous slice of each global batch
(pipeline.py), so global batch t holds the same frames, with the same augmentation, on any world size.

Construction does all the checking and bookkeeping up front (paths, keys, dims, statistics, episode
selection); iteration builds a fresh tf.data stream (pipeline.py), so every `iter(dataset)` starts at
`skip_samples`. tf.data does the parallel work, hence `num_workers=0` (the dataset refuses worker processes:
each would read the same stream).

Exposed for the trainer:
    dataset_statistics      {name: upstream statistics entry} -> save as dataset_statistics.json
    selected_episodes       {name: {instruction: [episode ids]}} of this split (the same on every rank)
    num_samples_per_epoch   frames (chunk starts) in the selected episodes: one epoch of the global stream
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from prismatic.models.config import VLAConfig
from prismatic.vla.datasets import pipeline, source, statistics
from prismatic.vla.datasets.episode_selection import select_episodes
from prismatic.vla.datasets.registry import resolve_dataset_mixture
from prismatic.vla.datasets.traj_transforms import num_chunk_starts

logger = logging.getLogger(__name__)

DEFAULT_SHUFFLE_BUFFER_SIZE = 100_000  # upstream default (frames); see pipeline.py for the memory it costs


class RLDSDataset(torch.utils.data.IterableDataset):
    def __init__(
        self,
        data_root_dir: str | Path,
        dataset_name: str,
        batch_transform: Callable[[dict], Any] | None,
        model_config: VLAConfig,
        *,
        train: bool = True,
        image_aug: bool = False,
        shuffle_buffer_size: int = DEFAULT_SHUFFLE_BUFFER_SIZE,
        seed: int = 7,
        rank: int = 0,
        world_size: int = 1,
        global_batch_size: int | None = None,
        n_shot_per_task: int | None = None,
        skip_samples: int = 0,
        val_fraction: float = 0.0,
    ) -> None:
        """
        Args:
            data_root_dir: directory holding <dataset_name>/<version>/ (tfds layout).
            dataset_name: a registered dataset or mixture (registry.py).
            batch_transform: frame dict -> sample (RLDSBatchTransform); None yields the raw numpy frames.
            model_config: gives image size, number of images, action chunk, action and proprio dims.
            train: True: infinite, shuffled stream of the train split; False: one ordered pass over "val".
            image_aug: training image augmentation (requires train=True).
            shuffle_buffer_size: frame-level shuffle buffer (train); memory cost in pipeline.py.
            seed: seeds file order, mixture sampling, shuffle, augmentation and N-shot choice.
            rank, world_size: data-parallel position; each rank yields its slice of every global batch.
            global_batch_size: frames per global batch (batch size x accumulation steps x world size); rank r
                yields frames [r b, (r + 1) b) of each, b = global_batch_size / world_size. None: world_size
                (the ranks take the global stream's frames in turn, e.g. for validation).
            n_shot_per_task: if set, train on exactly this many episodes of every task.
            skip_samples: frames of the GLOBAL stream already consumed by all ranks together (exact resume:
                step x global_batch_size).
            val_fraction: fraction of each task's episodes held out as the "val" split.
        """
        super().__init__()
        if not isinstance(model_config, VLAConfig):
            raise TypeError(f"model_config must be a VLAConfig, got {type(model_config).__name__}")
        if shuffle_buffer_size < 1:
            raise ValueError(f"shuffle_buffer_size must be >= 1, got {shuffle_buffer_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if global_batch_size is None:
            global_batch_size = world_size
        if global_batch_size < 1 or global_batch_size % world_size:
            raise ValueError(f"global_batch_size must be a positive multiple of world_size={world_size} (every "
                             f"rank takes an equal slice of each global batch), got {global_batch_size}")
        if n_shot_per_task is not None and n_shot_per_task < 1:
            raise ValueError(f"n_shot_per_task must be >= 1 (or None for all episodes), got {n_shot_per_task}")
        if skip_samples < 0:
            raise ValueError(f"skip_samples must be >= 0, got {skip_samples}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if image_aug and not train:
            raise ValueError("image_aug=True requires train=True (evaluation/validation data is never augmented)")

        self.dataset_name = dataset_name
        self.batch_transform = batch_transform
        self.model_config = model_config
        self.stream_config = pipeline.StreamConfig(
            image_size=model_config.vision.image_size, num_images=model_config.num_images_in_input,
            chunk=model_config.num_actions_chunk, train=train, image_aug=image_aug,
            shuffle_buffer_size=shuffle_buffer_size, seed=seed, rank=rank, world_size=world_size,
            rank_batch_size=global_batch_size // world_size, skip_samples=skip_samples,
        )
        self.sources: list[pipeline.DatasetSource] = []
        for spec, weight in resolve_dataset_mixture(dataset_name):
            builder_dir = source.resolve_builder_dir(data_root_dir, spec.name)
            builder = source.open_builder(builder_dir)
            dims = source.check_features(builder, spec, builder_dir, model_config.num_images_in_input)
            for key, expected in (("action_dim", model_config.action_dim), ("proprio_dim", model_config.proprio_dim)):
                if dims[key] != expected:
                    raise ValueError(f"dataset {spec.name!r} at {builder_dir} has {key}={dims[key]} but the model "
                                     f"config has {key}={expected}")
            try:
                index = statistics.load_or_compute_index(builder, builder_dir, spec)
            except Exception as e:
                if source.is_data_loss(e):  # TF does not say which file: find and name it
                    raise source.data_loss_error([builder_dir], e) from None
                raise
            selection = select_episodes(
                index, source=builder_dir, train=train, val_fraction=val_fraction, n_shot_per_task=n_shot_per_task,
                seed=seed, min_length=model_config.num_actions_chunk,
            )
            self.sources.append(pipeline.DatasetSource(spec, builder, builder_dir, index.statistics, selection, weight))
            logger.info("dataset %s (%s split): %d episodes selected", spec.name, selection.split,
                        len(selection.episodes))

        self.dataset_statistics: dict[str, dict] = {s.spec.name: s.statistics for s in self.sources}
        self.selected_episodes: dict[str, dict[str, list[int]]] = {
            s.spec.name: s.selection.by_task() for s in self.sources
        }
        self.num_samples_per_epoch = sum(
            num_chunk_starts(e.length, model_config.num_actions_chunk)
            for s in self.sources for e in s.selection.episodes
        )

    def make_tf_dataset(self):
        """A fresh tf.data stream of frames (pipeline.make_frame_stream), starting after `skip_samples`."""
        return pipeline.make_frame_stream(self.sources, self.stream_config)

    def __iter__(self) -> Iterator[Any]:
        if torch.utils.data.get_worker_info() is not None:
            raise RuntimeError("RLDSDataset parallelises inside tf.data; use DataLoader(num_workers=0)")
        frames = self.make_tf_dataset().as_numpy_iterator()
        while True:
            try:
                frame = next(frames)
            except StopIteration:
                return
            except Exception as e:
                if source.is_data_loss(e):  # TF does not say which file: find and name it
                    raise source.data_loss_error([s.builder_dir for s in self.sources], e) from None
                raise
            yield frame if self.batch_transform is None else self.batch_transform(frame)
