"""Write episodes as an RLDS dataset in the published LIBERO layout (openvla/modified_libero_rlds).

    out_root/<name>/<version>/{dataset_info.json, features.json, <name>-train.tfrecord-XXXXX-of-YYYYY}

    steps: observation{image, wrist_image: JPEG (S, S, 3) uint8; state (8,) f32; joint_state (7,) f32},
           action (7,) f32, reward, discount, is_first, is_last, is_terminal, language_instruction
    episode_metadata: {file_path}

Raw actions use LIBERO's env convention (gripper -1 open / +1 close); the dataset spec's gripper transform
maps them when reading. Episodes keep their input order (index i in the input = episode id i when read).
The directory appears atomically: tfds writes into a temporary data_dir next to it, then one rename.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from prismatic.vla.datasets._tf import get_tfds

logger = logging.getLogger(__name__)

STATE_DIM, JOINT_DIM, ACTION_DIM = 8, 7, 7


def _features(tfds, image_size: int):
    image = lambda: tfds.features.Image(shape=(image_size, image_size, 3), dtype=np.uint8, encoding_format="jpeg")
    return tfds.features.FeaturesDict({
        "steps": tfds.features.Dataset({
            "observation": tfds.features.FeaturesDict({
                "image": image(),
                "wrist_image": image(),
                "state": tfds.features.Tensor(shape=(STATE_DIM,), dtype=np.float32),
                "joint_state": tfds.features.Tensor(shape=(JOINT_DIM,), dtype=np.float32),
            }),
            "action": tfds.features.Tensor(shape=(ACTION_DIM,), dtype=np.float32),
            "discount": tfds.features.Scalar(dtype=np.float32),
            "reward": tfds.features.Scalar(dtype=np.float32),
            "is_first": tfds.features.Scalar(dtype=np.bool_),
            "is_last": tfds.features.Scalar(dtype=np.bool_),
            "is_terminal": tfds.features.Scalar(dtype=np.bool_),
            "language_instruction": tfds.features.Text(),
        }),
        "episode_metadata": tfds.features.FeaturesDict({"file_path": tfds.features.Text()}),
    })


def _check_episode(i: int, episode: dict, image_size: int) -> int:
    """Validate one input episode; return its length T."""
    missing = [k for k in ("steps", "language_instruction", "file_path") if k not in episode]
    if missing:
        raise ValueError(f"episode {i}: missing key(s) {missing}")
    steps = episode["steps"]
    expected = {
        "image": ((image_size, image_size, 3), np.uint8),
        "wrist_image": ((image_size, image_size, 3), np.uint8),
        "state": ((STATE_DIM,), np.float32),
        "joint_state": ((JOINT_DIM,), np.float32),
        "action": ((ACTION_DIM,), np.float32),
    }
    missing = [k for k in expected if k not in steps]
    if missing:
        raise ValueError(f"episode {i}: steps lack key(s) {missing}")
    length = len(steps["action"])
    if length < 1:
        raise ValueError(f"episode {i}: has no steps")
    for key, (shape, dtype) in expected.items():
        value = np.asarray(steps[key])
        if value.shape != (length, *shape) or value.dtype != dtype:
            raise ValueError(f"episode {i}: steps[{key!r}] must be {np.dtype(dtype).name} {(length, *shape)}, "
                             f"got {value.dtype} {value.shape}")
    if not isinstance(episode["language_instruction"], str) or not episode["language_instruction"].strip():
        raise ValueError(f"episode {i}: language_instruction must be a non-empty string")
    return length


def _to_example(i: int, episode: dict, image_size: int) -> dict:
    length = _check_episode(i, episode, image_size)
    s = episode["steps"]
    steps = [{
        "observation": {"image": s["image"][t], "wrist_image": s["wrist_image"][t], "state": s["state"][t],
                        "joint_state": s["joint_state"][t]},
        "action": s["action"][t],
        "discount": 1.0,
        "reward": float(t == length - 1),
        "is_first": t == 0,
        "is_last": t == length - 1,
        "is_terminal": t == length - 1,
        "language_instruction": episode["language_instruction"],
    } for t in range(length)]
    return {"steps": steps, "episode_metadata": {"file_path": str(episode["file_path"])}}


def write_rlds_dataset(out_root: str | Path, name: str, episodes: Iterable[dict], image_size: int,
                       version: str = "1.0.0", *, extra_files: dict[str, str] | None = None,
                       num_shards: int | None = None) -> Path:
    """Write `episodes` (see module docstring; each {"steps": {...}, "language_instruction", "file_path"}) to
    out_root/<name>/<version>/ and return that path. An existing target directory is an error (never
    overwritten).

    extra_files: {file name: text} placed in the version directory before it appears.
    num_shards: number of tfrecord files (None: tfds decides by size, i.e. one file for small data).
    """
    tfds = get_tfds()
    from tensorflow_datasets.core import registered

    out_root = Path(out_root)
    target = out_root / name / version
    if target.exists():
        raise FileExistsError(f"RLDS dataset already exists: {target}")
    if image_size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    out_root.mkdir(parents=True, exist_ok=True)
    features = _features(tfds, image_size)
    episodes = iter(episodes)
    first = next(episodes, None)
    if first is None:
        raise ValueError(f"no episodes given for RLDS dataset {name!r}")
    counter = {"episodes": 0}

    def generate():
        for i, episode in enumerate(itertools.chain([first], episodes)):
            counter["episodes"] += 1
            yield f"episode_{i:07d}", _to_example(i, episode, image_size)

    with registered.skip_registration():  # a throw-away builder class, not a catalogue entry

        class _Builder(tfds.core.GeneratorBasedBuilder):
            VERSION = tfds.core.Version(version)
            disable_shuffling = True  # keep the input order: episode i stays episode i
            url_infos = None  # nothing to download (also skips tfds's checksum-file lookup by module path)

            def _info(self):
                return tfds.core.DatasetInfo(builder=self, features=features,
                                             description=f"{name}: LIBERO-layout RLDS written by prismatic")

            def _split_generators(self, dl_manager):
                return {"train": self._generate_examples()}

            def _generate_examples(self):
                return generate()

        _Builder.name = name

    tmp_root = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=out_root))
    try:
        # tfds prints "Downloading and preparing ..." to stdout; we log our own summary instead.
        with contextlib.redirect_stdout(io.StringIO()):
            _Builder(data_dir=str(tmp_root)).download_and_prepare(
                download_config=tfds.download.DownloadConfig(try_download_gcs=False, num_shards=num_shards))
        written = tmp_root / name / version
        for file_name, text in (extra_files or {}).items():
            (written / file_name).write_text(text)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            written.rename(target)
        except OSError as e:
            raise FileExistsError(f"RLDS dataset appeared while writing, not overwritten: {target} ({e})") from e
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    logger.info("wrote %d episodes to %s", counter["episodes"], target)
    return target
