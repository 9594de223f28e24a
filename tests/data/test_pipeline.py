"""Round trip of the generated dataset through the pipeline: shapes, values, chunks, normalisation, images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prismatic.vla.normalization import normalize_bounds_q99, unnormalize_bounds_q99
from tests.data.common import CHUNK, DATASET, EPISODES_PER_TASK, NUM_TASKS, make_dataset, take


def _standardised(raw):
    """Raw episode -> (actions with LIBERO's gripper transform, proprio = state[:6] ++ state[-2:])."""
    action = np.stack(raw["action"]).astype(np.float32)
    action[:, -1] = 1.0 - np.clip(action[:, -1], 0.0, 1.0)
    state = np.stack(raw["state"])
    return action, np.concatenate([state[:, :6], state[:, -2:]], axis=1)


@pytest.fixture(scope="module")
def one_epoch(data_root, model_config):
    """Exactly one epoch of the unshuffled, unaugmented training stream (buffer 1 = stored order)."""
    dataset = make_dataset(data_root, model_config, train=True, image_aug=False, seed=0)
    return dataset, take(dataset, dataset.num_samples_per_epoch)


def test_one_epoch_covers_every_chunk_start_once(one_epoch, raw_episodes):
    dataset, frames = one_epoch
    seen = [(int(f["episode_index"]), int(f["timestep"])) for f in frames]
    expected = [(i, t) for i, raw in raw_episodes.items() for t in range(len(raw["action"]) - (CHUNK - 1))]
    assert sorted(seen) == sorted(expected)  # only the first T - 7 steps start a chunk, each exactly once
    assert len(raw_episodes) == NUM_TASKS * EPISODES_PER_TASK
    assert [int(f["sample_index"]) for f in frames] == list(range(len(frames)))


def test_frame_shapes_dtypes_and_ranges(one_epoch):
    _, frames = one_epoch
    for f in frames[:50]:
        assert f["images"].shape == (2, 56, 56, 3) and f["images"].dtype == np.uint8
        assert f["actions"].shape == (CHUNK, 7) and f["actions"].dtype == np.float32
        assert f["proprio"].shape == (8,) and f["proprio"].dtype == np.float32
        assert np.all(np.abs(f["actions"][:, :6]) <= 1.0) and np.all(np.abs(f["proprio"]) <= 1.0)
        assert set(np.unique(f["actions"][:, 6])) <= {0.0, 1.0}  # gripper: 1 open / 0 closed, not normalised
        assert f["dataset_name"] == DATASET.encode() and f["instruction"].startswith(b"pick up the ")


def test_chunks_align_with_stored_actions_including_episode_end(one_epoch, raw_episodes):
    dataset, frames = one_epoch
    stats = dataset.dataset_statistics[DATASET]
    last_starts = 0
    for f in frames:
        raw = raw_episodes[int(f["episode_index"])]
        action, proprio = _standardised(raw)
        t, length = int(f["timestep"]), len(action)
        np.testing.assert_allclose(f["actions"], normalize_bounds_q99(action[t: t + CHUNK], stats["action"]),
                                   atol=1e-6)
        np.testing.assert_allclose(f["proprio"], normalize_bounds_q99(proprio[t], stats["proprio"]), atol=1e-6)
        if t == length - CHUNK:  # the last chunk start: its chunk ends exactly at the last stored action
            last_starts += 1
            np.testing.assert_allclose(unnormalize_bounds_q99(f["actions"], stats["action"])[-1, 6], action[-1, 6])
        # The inverse recovers the stored actions wherever they lie inside [q01, q99] (outside, they clip).
        inside = (action[t: t + CHUNK] >= stats["action"]["q01"]) & (action[t: t + CHUNK] <= stats["action"]["q99"])
        restored = unnormalize_bounds_q99(f["actions"], stats["action"])
        np.testing.assert_allclose(restored[inside], action[t: t + CHUNK][inside], atol=1e-5)
    assert last_starts == len(raw_episodes)


def test_images_are_the_shared_resize_of_the_stored_frames(one_epoch, raw_episodes):
    from prismatic.vla.datasets.image_ops import resize_image

    _, frames = one_epoch
    for f in frames[::25]:
        raw = raw_episodes[int(f["episode_index"])]
        t = int(f["timestep"])
        np.testing.assert_array_equal(f["images"][0], resize_image(raw["image"][t], 56))
        np.testing.assert_array_equal(f["images"][1], resize_image(raw["wrist_image"][t], 56))


def test_statistics_match_the_data_and_the_upstream_format(one_epoch, raw_episodes, tmp_path):
    from prismatic.vla.normalization import load_dataset_statistics, save_dataset_statistics

    dataset, _ = one_epoch
    stats = dataset.dataset_statistics[DATASET]
    actions = np.concatenate([_standardised(r)[0] for r in raw_episodes.values()])
    proprio = np.concatenate([_standardised(r)[1] for r in raw_episodes.values()])
    assert stats["num_transitions"] == len(actions) and stats["num_trajectories"] == len(raw_episodes)
    assert stats["action"]["mask"] == [True] * 6 + [False]
    assert "mask" not in stats["proprio"]
    for key, values in (("action", actions), ("proprio", proprio)):
        assert set(stats[key]) >= {"mean", "std", "max", "min", "q01", "q99"}
        np.testing.assert_allclose(stats[key]["q01"], np.quantile(values.astype(np.float64), 0.01, axis=0), atol=1e-6)
        np.testing.assert_allclose(stats[key]["q99"], np.quantile(values.astype(np.float64), 0.99, axis=0), atol=1e-6)
        np.testing.assert_allclose(stats[key]["mean"], values.mean(0), atol=1e-5)
    save_dataset_statistics(dataset.dataset_statistics, tmp_path / "dataset_statistics.json")
    assert load_dataset_statistics(tmp_path)[DATASET]["action"]["q99"] == stats["action"]["q99"]


@pytest.mark.parametrize("masked", [True, False])
def test_tf_normalisation_agrees_with_the_reference(masked):
    from prismatic.vla.datasets._tf import get_tf
    from prismatic.vla.datasets.traj_transforms import normalize_bounds_q99_tf

    tf = get_tf()
    rng = np.random.default_rng(0)
    x = rng.normal(0, 2, size=(500, 7)).astype(np.float32)
    x[:, 3] = 0.25  # a constant dimension (q01 == q99 -> 0)
    stats = {"q01": np.quantile(x, 0.01, axis=0).tolist(), "q99": np.quantile(x, 0.99, axis=0).tolist()}
    if masked:
        stats["mask"] = [True] * 6 + [False]
    ours = normalize_bounds_q99_tf(tf.constant(x), stats).numpy()
    np.testing.assert_allclose(ours, normalize_bounds_q99(x, stats), atol=1e-6)
    np.testing.assert_allclose(ours, normalize_bounds_q99(torch.from_numpy(x), stats).numpy(), atol=1e-6)
    assert np.all(ours[:, 3] == 0.0)
    if masked:
        np.testing.assert_array_equal(ours[:, 6], x[:, 6])


def test_chunk_actions_clips_indices_and_drops_late_starts():
    from prismatic.vla.datasets._tf import get_tf
    from prismatic.vla.datasets.traj_transforms import chunk_actions

    tf = get_tf()
    action = np.arange(10, dtype=np.float32)[:, None].repeat(2, 1)  # a[t] = t
    chunks = chunk_actions(tf.constant(action), 4).numpy()
    assert chunks.shape == (7, 4, 2)  # T - (chunk - 1) starts
    np.testing.assert_array_equal(chunks[:, :, 0], np.arange(7)[:, None] + np.arange(4)[None])
    assert chunk_actions(tf.constant(action[:3]), 4).numpy().shape == (0, 4, 2)  # shorter than a chunk: nothing


def test_training_file_order_is_seeded(data_root, model_config):
    from tests.data.common import NUM_SHARDS

    assert len(list((data_root / DATASET / "1.0.0").glob("*.tfrecord-*"))) == NUM_SHARDS

    def episode_order(seed):
        frames = take(make_dataset(data_root, model_config, train=True, seed=seed), 150)
        return [int(f["episode_index"]) for f in frames]

    assert episode_order(0) == episode_order(0)
    assert len({tuple(episode_order(seed)) for seed in range(4)}) > 1
