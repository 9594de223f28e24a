"""Evaluation preprocessing must give the model the pixels it saw in training."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from prismatic.eval.preprocessing import center_crop, preprocess_image

RAW = 256  # simulator render size


def _scene_like_images(n: int, seed: int) -> np.ndarray:
    """Structured 256x256 frames (gradients, hard-edged boxes, fine texture) that JPEG and lanczos both alter."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:RAW, 0:RAW].astype(np.float64)
    frames = []
    for _ in range(n):
        base = np.stack([xx / RAW * 200, yy / RAW * 180, (xx + yy) / (2 * RAW) * 120], axis=-1)
        for _ in range(6):
            y0, x0 = rng.integers(0, RAW - 40, 2)
            h, w = rng.integers(10, 60, 2)
            base[y0:y0 + h, x0:x0 + w] = rng.integers(0, 256, 3)
        base += rng.normal(0, 12, base.shape)
        frames.append(np.clip(base, 0, 255).astype(np.uint8))
    return np.stack(frames)


def test_eval_pixels_equal_the_training_pipeline(tmp_path):
    """Write raw frames with the project's RLDS writer, read them through the training data pipeline
    (JPEG decode + lanczos3 resize, no augmentation) and compare with the evaluation preprocessing."""
    from prismatic.models.config import get_preset
    from prismatic.vla.datasets import RLDSDataset
    from prismatic.vla.datasets.rlds_writer import write_rlds_dataset

    config = get_preset("tiny")
    config = dataclasses.replace(config, vision=dataclasses.replace(config.vision, image_size=224))
    T = config.num_actions_chunk + 3
    images, wrist = _scene_like_images(T, 0), _scene_like_images(T, 1)
    rng = np.random.default_rng(2)
    episode = {"steps": {"image": images, "wrist_image": wrist,
                         "state": rng.normal(size=(T, 8)).astype(np.float32),
                         "joint_state": rng.normal(size=(T, 7)).astype(np.float32),
                         "action": np.concatenate([rng.uniform(-1, 1, (T, 6)), np.sign(rng.normal(size=(T, 1)))],
                                                  axis=1).astype(np.float32)},
               "language_instruction": "pick up the bowl", "file_path": "parity.hdf5"}
    name = "libero_synthetic_parity"
    write_rlds_dataset(tmp_path, name, [episode], image_size=RAW)
    dataset = RLDSDataset(tmp_path, name, None, config, train=True, image_aug=False, shuffle_buffer_size=1)
    n = T - config.num_actions_chunk + 1
    seen = set()
    for frame, _ in zip(dataset, range(n)):
        t = int(frame["timestep"])
        seen.add(t)
        for cam, raw in enumerate((images[t], wrist[t])):
            ours = preprocess_image(raw, 224, use_center_crop=False)
            np.testing.assert_array_equal(ours, frame["images"][cam], err_msg=f"timestep {t} camera {cam}")
    assert seen == set(range(n))


def test_jpeg_round_trip_is_part_of_the_path():
    from prismatic.vla.datasets.image_ops import resize_image

    raw = _scene_like_images(1, 3)[0]
    assert not np.array_equal(preprocess_image(raw, 224, False), resize_image(raw, 224))
    np.testing.assert_array_equal(preprocess_image(raw, 224, False), resize_image(raw, 224, jpeg_roundtrip=True))


def _reference_center_crop(image: np.ndarray, scale: float) -> np.ndarray:
    """tf.image.crop_and_resize's bilinear sampling + convert_image_dtype (trunc(x * 255.5)), in float64 numpy."""
    x = image.astype(np.float64) / 255.0
    size = image.shape[0]
    side = np.sqrt(scale)
    lo, hi = (1 - side) / 2, (1 - side) / 2 + side
    coords = lo * (size - 1) + np.arange(size) * (hi - lo) * (size - 1) / (size - 1)
    c0 = np.floor(coords).astype(int)
    c1 = np.minimum(c0 + 1, size - 1)
    f = coords - c0
    rows = x[c0] * (1 - f)[:, None, None] + x[c1] * f[:, None, None]
    out = rows[:, c0] * (1 - f)[None, :, None] + rows[:, c1] * f[None, :, None]
    return np.clip(out * 255.5, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("size", [56, 224])
def test_center_crop_matches_upstream_math(size):
    from prismatic.vla.datasets.image_ops import resize_image

    image = resize_image(_scene_like_images(1, 4)[0], size)
    ours = center_crop(image)
    ref = _reference_center_crop(image, 0.9)
    assert ours.shape == image.shape and ours.dtype == np.uint8
    diff = np.abs(ours.astype(int) - ref.astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.98  # float32 (TF) vs float64 (reference) rounding only
    assert not np.array_equal(ours, image)  # it really crops
    np.testing.assert_array_equal(preprocess_image(_scene_like_images(1, 4)[0], size, True),
                                  center_crop(preprocess_image(_scene_like_images(1, 4)[0], size, False)))


def test_bad_images_are_rejected():
    with pytest.raises(ValueError, match="uint8"):
        preprocess_image(np.zeros((8, 8, 3), np.float32), 4, False)
    with pytest.raises(ValueError, match="uint8"):
        center_crop(np.zeros((8, 8), np.uint8))
