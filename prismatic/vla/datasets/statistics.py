"""Dataset statistics and the episode index, computed in ONE pass and cached next to the data.

The pass reads every episode of the "train" split in stored order (images not decoded) and produces:
  * the upstream statistics entry (facts §6.2, `dataset_statistics.json` format):
        {"action":  {"mean", "std", "max", "min", "q01", "q99": [A], "mask": [A bools]},
         "proprio": {"mean", "std", "max", "min", "q01", "q99": [P]},
         "num_transitions": int, "num_trajectories": int}
    over all steps of all episodes, of the STANDARDISED actions/proprio (gripper already mapped);
  * the episode index: per episode its position in stored order (the episode id used everywhere), tfds id,
    language instruction (= task), length and source file path. N-shot selection, the train/val split and
    rank sharding are decided from this index before any stream is built.

Cache: `dataset_statistics_<hash>.json` and `episode_index_<hash>.json` in the dataset's version directory
(or, if that is not writable, in $PRISMATIC_CACHE or ~/.cache/prismatic/<name>/, with a warning). The
hash covers the builder metadata (dataset_info.json + features.json), the dataset spec and the source of
the transform code, so any change to the data or to what the statistics describe recomputes them.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from prismatic.vla.datasets import traj_transforms
from prismatic.vla.datasets._tf import get_tf
from prismatic.vla.datasets.registry import DatasetSpec
from prismatic.vla.datasets.source import read_episodes

logger = logging.getLogger(__name__)

INDEX_FORMAT_VERSION = 1


@dataclass(frozen=True)
class EpisodeRecord:
    index: int  # position in the stored (unshuffled) order of the "train" split: THE episode id
    tfds_id: str  # tfds's id "<file>__<record>", used to find the episode in a shuffled read
    instruction: str  # language instruction = task
    length: int  # number of steps T
    file_path: str  # episode_metadata/file_path (source demo file), "" if the dataset has none


@dataclass
class DatasetIndex:
    name: str
    statistics: dict  # the upstream per-dataset statistics entry (see module docstring)
    episodes: list[EpisodeRecord]
    cache_key: str  # content hash the cache files are named after


def summarize(values: np.ndarray) -> dict[str, list[float]]:
    """Per-dimension statistics of an (N, D) array, as upstream `get_dataset_statistics`."""
    values = values.astype(np.float64)
    return {
        "mean": values.mean(0).tolist(),
        "std": values.std(0).tolist(),
        "max": values.max(0).tolist(),
        "min": values.min(0).tolist(),
        "q01": np.quantile(values, 0.01, axis=0).tolist(),
        "q99": np.quantile(values, 0.99, axis=0).tolist(),
    }


def cache_key(builder_dir: Path, spec: DatasetSpec) -> str:
    """Content hash: builder metadata + spec + the code that defines what the statistics describe."""
    h = hashlib.sha256()
    for name in ("dataset_info.json", "features.json"):
        path = builder_dir / name
        h.update(path.read_bytes() if path.is_file() else b"<missing>")
    h.update(json.dumps(spec.to_dict(), sort_keys=True).encode())
    h.update(_CODE_FINGERPRINT)
    return h.hexdigest()[:16]


def _code_fingerprint() -> bytes:
    """Hash of the code that defines what the cached files contain. Taken once at import (bottom of this
    module), so the key reflects the code as written, whatever is patched later."""
    h = hashlib.sha256(str(INDEX_FORMAT_VERSION).encode())
    for fn in (traj_transforms.standardize_trajectory, traj_transforms.transform_gripper, summarize, scan_dataset):
        h.update(inspect.getsource(fn).encode())
    return h.digest()


def _cache_dirs(builder_dir: Path, name: str) -> list[Path]:
    fallback = Path(os.environ.get("PRISMATIC_CACHE", Path.home() / ".cache" / "prismatic")) / name
    return [builder_dir, fallback]


def scan_dataset(builder, spec: DatasetSpec) -> tuple[dict, list[EpisodeRecord]]:
    """The one full pass: (statistics entry, episode index). See module docstring."""
    tf = get_tf()

    def per_episode(episode):
        standard = traj_transforms.standardize_trajectory(episode["steps"], spec)
        length = tf.shape(standard["action"])[0]
        instruction = tf.cond(length > 0, lambda: standard["instruction"][0], lambda: tf.constant(""))
        metadata = episode.get("episode_metadata", {})
        file_path = metadata["file_path"] if "file_path" in metadata else tf.constant("")
        return {"tfds_id": episode["tfds_id"], "file_path": file_path, "instruction": instruction,
                "length": length, "action": standard["action"], "proprio": standard["proprio"]}

    episodes = read_episodes(builder, shuffle_seed=None).map(
        per_episode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    records, actions, proprios = [], [], []
    for i, ep in enumerate(episodes.as_numpy_iterator()):
        records.append(EpisodeRecord(index=i, tfds_id=ep["tfds_id"].decode(), instruction=ep["instruction"].decode(),
                                     length=int(ep["length"]), file_path=ep["file_path"].decode()))
        actions.append(ep["action"])
        proprios.append(ep["proprio"])
    num_transitions = sum(r.length for r in records)
    if num_transitions == 0:
        raise ValueError(f"dataset {spec.name!r} has no steps (episodes: {len(records)})")
    statistics = {
        "action": {**summarize(np.concatenate(actions)), "mask": list(spec.action_normalization_mask)},
        "proprio": summarize(np.concatenate(proprios)),
        "num_transitions": num_transitions,
        "num_trajectories": len(records),
    }
    return statistics, records


def _atomic_write_json(path: Path, payload) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(path)


def _read_cache(builder_dir: Path, spec: DatasetSpec, key: str) -> DatasetIndex | None:
    for directory in _cache_dirs(builder_dir, spec.name):
        stats_path = directory / f"dataset_statistics_{key}.json"
        index_path = directory / f"episode_index_{key}.json"
        if not (stats_path.is_file() and index_path.is_file()):
            continue
        try:
            statistics = json.loads(stats_path.read_text())
            index = json.loads(index_path.read_text())
            episodes = [EpisodeRecord(**e) for e in index["episodes"]]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"corrupt dataset statistics cache in {directory} (delete {stats_path.name} and "
                             f"{index_path.name} to recompute): {e}") from e
        logger.info("dataset %s: statistics loaded from cache %s", spec.name, stats_path)
        return DatasetIndex(spec.name, statistics, episodes, key)
    return None


def load_or_compute_index(builder, builder_dir: Path, spec: DatasetSpec) -> DatasetIndex:
    """Cached statistics + episode index of one dataset; computed (one pass) and cached on a miss."""
    key = cache_key(builder_dir, spec)
    cached = _read_cache(builder_dir, spec, key)
    if cached is not None:
        return cached
    logger.info("dataset %s: computing statistics (one pass over %s)", spec.name, builder_dir)
    statistics, episodes = scan_dataset(builder, spec)
    index_payload = {"format_version": INDEX_FORMAT_VERSION, "dataset_name": spec.name, "cache_key": key,
                     "episodes": [asdict(e) for e in episodes]}
    for attempt, directory in enumerate(_cache_dirs(builder_dir, spec.name)):
        try:
            _atomic_write_json(directory / f"episode_index_{key}.json", index_payload)
            _atomic_write_json(directory / f"dataset_statistics_{key}.json", statistics)
            break
        except OSError as e:
            if attempt == 0:
                logger.warning("dataset %s: cannot write statistics next to the data (%s); using %s", spec.name, e,
                               _cache_dirs(builder_dir, spec.name)[1])
            else:
                raise OSError(f"cannot write dataset statistics cache for {spec.name!r} to {directory}: {e}") from e
    return DatasetIndex(spec.name, statistics, episodes, key)


_CODE_FINGERPRINT = _code_fingerprint()
