"""Per-task N-shot and the train/val split (both independent of the world size)."""

from __future__ import annotations

import pytest

from tests.data.common import DATASET, EPISODES_PER_TASK, NUM_TASKS, make_dataset, take


def _episodes_in_stream(dataset, n=120) -> set[int]:
    return {int(f["episode_index"]) for f in take(dataset, n)}


def test_n_shot_picks_exactly_n_per_task_and_the_stream_reads_only_them(data_root, model_config):
    dataset = make_dataset(data_root, model_config, train=True, n_shot_per_task=2, seed=3, shuffle_buffer_size=64)
    chosen = dataset.selected_episodes[DATASET]
    assert len(chosen) == NUM_TASKS and all(len(ids) == 2 for ids in chosen.values())
    all_ids = {i for ids in chosen.values() for i in ids}
    assert len(all_ids) == 2 * NUM_TASKS
    assert _episodes_in_stream(dataset) == all_ids  # 120 frames cover all 6 episodes (~20 frames each)


def test_n_shot_is_deterministic_and_depends_on_the_seed(data_root, model_config):
    first = make_dataset(data_root, model_config, n_shot_per_task=2, seed=0).selected_episodes
    again = make_dataset(data_root, model_config, n_shot_per_task=2, seed=0).selected_episodes
    other = make_dataset(data_root, model_config, n_shot_per_task=2, seed=1).selected_episodes
    assert first == again
    assert first != other
    assert first[DATASET].keys() == other[DATASET].keys()


def test_n_shot_with_too_few_episodes_names_the_task(data_root, model_config):
    with pytest.raises(ValueError, match=r"n_shot_per_task=5.*'pick up the red cube': 4"):
        make_dataset(data_root, model_config, n_shot_per_task=EPISODES_PER_TASK + 1)


def test_selection_does_not_depend_on_the_world_size(data_root, model_config):
    """N-shot choice, the train selection and the val split are global: every rank of any world size holds
    the single-process selection (the stream is sharded per frame later, see test_world_size.py)."""
    for kwargs in (dict(n_shot_per_task=2, seed=5), dict(seed=5, val_fraction=0.25),
                   dict(train=False, val_fraction=0.25)):
        single = make_dataset(data_root, model_config, **kwargs)
        for world_size in (2, 3):
            for rank in range(world_size):
                sharded = make_dataset(data_root, model_config, rank=rank, world_size=world_size, **kwargs)
                assert sharded.selected_episodes == single.selected_episodes, (kwargs, world_size, rank)
                assert sharded.num_samples_per_epoch == single.num_samples_per_epoch
def test_val_split_is_per_task_disjoint_and_seed_independent(data_root, model_config):
    val = make_dataset(data_root, model_config, train=False, val_fraction=0.25, seed=0)
    val_other_seed = make_dataset(data_root, model_config, train=False, val_fraction=0.25, seed=9)
    train = make_dataset(data_root, model_config, train=True, val_fraction=0.25, seed=0)
    val_ids = {i for ids in val.selected_episodes[DATASET].values() for i in ids}
    train_ids = {i for ids in train.selected_episodes[DATASET].values() for i in ids}
    assert all(len(ids) == 1 for ids in val.selected_episodes[DATASET].values())  # round(0.25 * 4) per task
    assert not val_ids & train_ids and len(val_ids | train_ids) == NUM_TASKS * EPISODES_PER_TASK
    assert val.selected_episodes == val_other_seed.selected_episodes
    frames = list(val)  # val is one finite, ordered pass
    assert len(frames) == val.num_samples_per_epoch
    assert {int(f["episode_index"]) for f in frames} == val_ids
