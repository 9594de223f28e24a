"""Stream behaviour: exact resume, augmentation, statistics cache, mixtures."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from tests.data.common import DATASET, make_dataset, take


def _assert_same_frames(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_skip_samples_continues_the_uninterrupted_stream_exactly(data_root, model_config):
    kwargs = dict(train=True, image_aug=True, shuffle_buffer_size=50, seed=3)
    full = take(make_dataset(data_root, model_config, **kwargs), 40)
    resumed = take(make_dataset(data_root, model_config, skip_samples=15, **kwargs), 25)
    _assert_same_frames(full[15:], resumed)
    assert [int(f["sample_index"]) for f in resumed] == list(range(15, 40))


def test_augmentation_on_off(data_root, model_config):
    kwargs = dict(train=True, shuffle_buffer_size=50, seed=4)
    plain = take(make_dataset(data_root, model_config, image_aug=False, **kwargs), 20)
    augmented = take(make_dataset(data_root, model_config, image_aug=True, **kwargs), 20)
    # Same frames in the same order (augmentation draws no randomness from the stream seeds) ...
    for p, a in zip(plain, augmented):
        assert (p["episode_index"], p["timestep"]) == (a["episode_index"], a["timestep"])
        np.testing.assert_array_equal(p["actions"], a["actions"])
        assert a["images"].shape == p["images"].shape and a["images"].dtype == np.uint8
    # ... but different pixels, every image, and differently per camera and per frame.
    diffs = np.array([[np.abs(p["images"][c].astype(int) - a["images"][c]).mean() for c in range(2)]
                      for p, a in zip(plain, augmented)])
    assert np.all(diffs > 1.0)
    assert len({round(float(d), 6) for d in diffs.ravel()}) > 30
    # Deterministic: the same arguments give the same augmented pixels.
    _assert_same_frames(augmented, take(make_dataset(data_root, model_config, image_aug=True, **kwargs), 20))


def test_augment_image_is_a_pure_function_of_its_seed():
    from prismatic.vla.datasets._tf import get_tf
    from prismatic.vla.datasets.image_ops import augment_image_tf

    tf = get_tf()
    image = tf.constant(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    seed_a, seed_b = tf.constant([1, 2], tf.int64), tf.constant([1, 3], tf.int64)
    a1, a2, b = (augment_image_tf(image, s).numpy() for s in (seed_a, seed_a, seed_b))
    np.testing.assert_array_equal(a1, a2)
    assert not np.array_equal(a1, b)


def test_statistics_are_cached_and_not_recomputed(fresh_data_root, model_config, monkeypatch):
    from prismatic.vla.datasets import statistics

    version_dir = fresh_data_root / DATASET / "1.0.0"
    first = make_dataset(fresh_data_root, model_config)
    cached = sorted(p.name for p in [*version_dir.glob("dataset_statistics_*.json"),
                                     *version_dir.glob("episode_index_*.json")])
    assert len(cached) == 2 and cached[0][len("dataset_statistics_"):] == cached[1][len("episode_index_"):]

    def fail(*args, **kwargs):
        raise AssertionError("statistics were recomputed despite a cache hit")

    monkeypatch.setattr(statistics, "scan_dataset", fail)
    second = make_dataset(fresh_data_root, model_config)
    assert second.dataset_statistics == first.dataset_statistics
    assert second.selected_episodes == first.selected_episodes


def test_statistics_cache_key_tracks_spec_and_data(fresh_data_root):
    from prismatic.vla.datasets.registry import DatasetSpec
    from prismatic.vla.datasets.statistics import cache_key

    version_dir = fresh_data_root / DATASET / "1.0.0"
    base = cache_key(version_dir, DatasetSpec(DATASET))
    assert cache_key(version_dir, DatasetSpec(DATASET)) == base
    assert cache_key(version_dir, DatasetSpec(DATASET, gripper_transform="none")) != base
    info = version_dir / "dataset_info.json"
    info.write_text(info.read_text().replace('"train"', '"train" '))
    assert cache_key(version_dir, DatasetSpec(DATASET)) != base


def test_statistics_fall_back_to_the_user_cache_when_the_data_dir_is_not_writable(fresh_data_root, model_config,
                                                                                    tmp_path, monkeypatch):
    from prismatic.vla.datasets import statistics

    version_dir = fresh_data_root / DATASET / "1.0.0"
    real_write = statistics._atomic_write_json

    def write(path, payload):
        if path.parent == version_dir:  # as on a read-only data mount
            raise PermissionError(f"read-only: {path}")
        real_write(path, payload)

    monkeypatch.setattr(statistics, "_atomic_write_json", write)
    first = make_dataset(fresh_data_root, model_config)
    fallback = tmp_path / "stats_cache" / DATASET  # PRISMATIC_CACHE (conftest)
    assert len(list(fallback.glob("dataset_statistics_*.json"))) == 1
    assert not list(version_dir.glob("dataset_statistics_*.json"))
    monkeypatch.setattr(statistics, "scan_dataset", lambda *a, **k: pytest.fail("cache in fallback dir missed"))
    assert make_dataset(fresh_data_root, model_config).dataset_statistics == first.dataset_statistics


def test_mixture_samples_every_member_and_keeps_per_dataset_statistics(data_root, model_config, tmp_path, monkeypatch):
    from prismatic.vla.datasets import registry

    root = tmp_path / "mix"
    for name in ("libero_synthetic_a", "libero_synthetic_b"):
        shutil.copytree(data_root / DATASET, root / name)
    monkeypatch.setitem(registry.MIXTURE_REGISTRY, "synthetic_mix", (("libero_synthetic_a", 1.0),
                                                                      ("libero_synthetic_b", 3.0)))
    dataset = make_dataset(root, model_config, name="synthetic_mix", shuffle_buffer_size=10, seed=0)
    assert set(dataset.dataset_statistics) == {"libero_synthetic_a", "libero_synthetic_b"}
    frames = take(dataset, 200)
    names = [f["dataset_name"].decode() for f in frames]
    share_b = names.count("libero_synthetic_b") / len(names)
    assert 0.6 < share_b < 0.9  # weights 1 : 3 on equal transition counts -> 0.75
    again = take(make_dataset(root, model_config, name="synthetic_mix", shuffle_buffer_size=10, seed=0), 60)
    _assert_same_frames(frames[:60], again)  # seeded sampling: reproducible

    val = make_dataset(root, model_config, name="synthetic_mix", train=False, val_fraction=0.25)
    assert len(list(val)) == val.num_samples_per_epoch  # finite: each member once, in order
