"""Locating, validating and reading an RLDS dataset on disk (tfds, no network).

Layout: data_root_dir/<name>/<version>/{dataset_info.json, features.json, <name>-train.tfrecord-*}.
The builder is opened with `tfds.builder_from_directory`, so no builder class (and no download) is needed.
Episodes are read with images left encoded (`SkipDecoding`): decoding happens per frame after the shuffle
buffer, so the buffer holds compressed bytes only.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from prismatic.vla.datasets._tf import get_tf, get_tfds
from prismatic.vla.datasets.registry import DatasetSpec

logger = logging.getLogger(__name__)

TRAIN_SPLIT = "train"  # LIBERO RLDS has only this split; train/val are carved out of it by episode
_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")


def resolve_builder_dir(data_root_dir: str | Path, name: str) -> Path:
    """data_root_dir/<name>/<version> (the highest version present). Missing pieces are errors naming paths."""
    root = Path(data_root_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"data_root_dir does not exist or is not a directory: {root}")
    dataset_dir = root / name
    if not dataset_dir.is_dir():
        present = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        raise FileNotFoundError(f"dataset {name!r} not found: {dataset_dir} does not exist (data_root_dir holds: "
                                f"{present or 'nothing'})")
    versions = [p for p in dataset_dir.iterdir() if p.is_dir() and _VERSION_RE.match(p.name)]
    if not versions:
        raise FileNotFoundError(f"dataset {name!r}: no version directory (e.g. 1.0.0/) in {dataset_dir}")
    best = max(versions, key=lambda p: tuple(int(x) for x in p.name.split(".")))
    if len(versions) > 1:
        logger.info("dataset %s: using version %s of %s", name, best.name, sorted(p.name for p in versions))
    if not (best / "dataset_info.json").is_file():
        raise FileNotFoundError(f"dataset {name!r}: {best} is not a tfds dataset (no dataset_info.json)")
    return best


def open_builder(builder_dir: Path):
    """The tfds builder of a prepared dataset directory, with a "train" split."""
    tfds = get_tfds()
    try:
        builder = tfds.builder_from_directory(str(builder_dir))
    except Exception as e:  # tfds raises assorted types for corrupt metadata; re-raise with the path
        raise ValueError(f"cannot open RLDS dataset at {builder_dir}: {e}") from e
    if TRAIN_SPLIT not in builder.info.splits:
        raise ValueError(f"RLDS dataset at {builder_dir} has no {TRAIN_SPLIT!r} split "
                         f"(splits: {list(builder.info.splits)})")
    return builder


def check_features(builder, spec: DatasetSpec, builder_dir: Path, num_images: int) -> dict[str, int]:
    """Check the keys the spec needs exist; return {"action_dim", "proprio_dim"} read from the features."""
    features = builder.info.features
    steps = features["steps"] if "steps" in features else None
    if steps is None:
        raise ValueError(f"RLDS dataset at {builder_dir} lacks the 'steps' feature (not an RLDS dataset)")
    if num_images > len(spec.image_keys):
        raise ValueError(f"dataset {spec.name!r} has {len(spec.image_keys)} camera(s) {spec.image_keys} but the "
                         f"model expects num_images_in_input={num_images}")
    observation = steps["observation"] if "observation" in steps else {}
    required = [("steps", spec.action_key), ("steps", spec.language_key)]
    required += [("steps/observation", key) for key in (*spec.image_keys[:num_images], spec.state_key)]
    missing = [f"{parent}/{key}" for parent, key in required
               if key not in (observation if parent.endswith("observation") else steps)]
    if missing:
        raise ValueError(f"RLDS dataset at {builder_dir} lacks required key(s) {missing} for spec {spec.name!r}")
    action_shape = tuple(steps[spec.action_key].shape)
    state_shape = tuple(observation[spec.state_key].shape)
    if len(action_shape) != 1 or len(state_shape) != 1:
        raise ValueError(f"RLDS dataset at {builder_dir}: expected 1-D action and state, got {action_shape} and "
                         f"{state_shape}")
    if action_shape[0] != spec.action_dim:
        raise ValueError(f"RLDS dataset at {builder_dir}: action has {action_shape[0]} dims but spec "
                         f"{spec.name!r} expects {spec.action_dim} (length of action_normalization_mask)")
    return {"action_dim": action_shape[0], "proprio_dim": spec.proprio_dim(state_shape[0])}


def read_episodes(builder, *, shuffle_seed: int | None):
    """tf.data of episodes {"steps": batched step dict (images as encoded bytes), "episode_metadata", "tfds_id"}.

    shuffle_seed None: files in their stored order (the order that defines episode indices). An int: file
    order shuffled with that seed, anew for each repetition (deterministically).
    """
    tf, tfds = get_tf(), get_tfds()
    read_config = tfds.ReadConfig(
        add_tfds_id=True,  # stable per-episode id, independent of read order
        try_autocache=False,  # never cache a whole dataset in RAM behind the caller's back
        shuffle_seed=shuffle_seed,
        shuffle_reshuffle_each_iteration=True if shuffle_seed is not None else None,
    )
    return builder.as_dataset(
        split=TRAIN_SPLIT,
        shuffle_files=shuffle_seed is not None,
        decoders={"steps": tfds.decode.SkipDecoding()},  # steps as batched tensors; images stay encoded
        read_config=read_config,
    ).prefetch(tf.data.AUTOTUNE)


def is_data_loss(e: BaseException) -> bool:
    """A damaged record file: TF's DataLossError ("corrupted record at ...", "truncated record at ...")."""
    return isinstance(e, get_tf().errors.DataLossError)


def damaged_shards(builder_dir: Path) -> list[str]:
    """Read every record file of a dataset once (records only, nothing decoded) and list the damaged ones as
    "<file>: <TF's message>". Used after a DataLossError, whose message does not say which file it was."""
    tf = get_tf()
    damaged = []
    for path in sorted(Path(builder_dir).glob("*.tfrecord*")):
        try:
            for _ in tf.data.TFRecordDataset(str(path)):
                pass
        except tf.errors.DataLossError as e:
            damaged.append(f"{path}: {e.message.splitlines()[0] if e.message else type(e).__name__}")
    return damaged


def data_loss_error(builder_dirs: list[Path], e: BaseException) -> ValueError:
    """The error for a DataLossError met while reading `builder_dirs`: which file, and what to do."""
    damaged = [d for builder_dir in builder_dirs for d in damaged_shards(builder_dir)]
    where = "; ".join(damaged) if damaged else f"a record file under {', '.join(map(str, builder_dirs))} ({e})"
    return ValueError(f"damaged dataset file: {where}. The file is truncated or corrupted: re-download the "
                      f"dataset, or regenerate it (vla-scripts/make_synthetic_libero_rlds.py, "
                      f"vla-scripts/generate_libero_demos.py) if it was generated")
