"""Bad input: every error names the problem and the path (or the known names)."""

from __future__ import annotations

import dataclasses

import pytest

from tests.data.common import DATASET, make_dataset


def test_missing_data_root(tmp_path, model_config):
    with pytest.raises(FileNotFoundError, match=f"data_root_dir does not exist.*{tmp_path / 'nope'}"):
        make_dataset(tmp_path / "nope", model_config)


def test_missing_dataset_directory_lists_what_is_there(data_root, model_config):
    with pytest.raises(FileNotFoundError, match=rf"{data_root / 'libero_synthetic_zzz'} does not exist.*libero_synthetic"):
        make_dataset(data_root, model_config, name="libero_synthetic_zzz")


def test_dataset_without_version_directory(tmp_path, model_config):
    (tmp_path / DATASET).mkdir()
    with pytest.raises(FileNotFoundError, match=rf"no version directory.*{tmp_path / DATASET}"):
        make_dataset(tmp_path, model_config)


def test_unknown_dataset_name_lists_known_names(data_root, model_config):
    with pytest.raises(ValueError, match=r"unknown dataset name 'bridge_orig'; known: .*libero_spatial_no_noops.*"
                                         r"libero_4_task_suites_no_noops.*libero_synthetic\*"):
        make_dataset(data_root, model_config, name="bridge_orig")


def test_dataset_lacking_a_required_key(data_root, model_config, tmp_path, monkeypatch):
    from prismatic.vla.datasets import registry

    spec = registry.DatasetSpec("needs_agentview", image_keys=("agentview_rgb", "wrist_image"))
    monkeypatch.setitem(registry.DATASET_REGISTRY, spec.name, spec)
    (tmp_path / spec.name).symlink_to(data_root / DATASET)
    with pytest.raises(ValueError, match=rf"{tmp_path / spec.name / '1.0.0'} lacks required key.*"
                                         r"steps/observation/agentview_rgb"):
        make_dataset(tmp_path, model_config, name=spec.name)


@pytest.mark.parametrize("field,value", [("action_dim", 6), ("proprio_dim", 9)])
def test_dims_that_do_not_match_the_model_config(data_root, model_config, field, value):
    config = dataclasses.replace(model_config, **{field: value})
    with pytest.raises(ValueError, match=rf"{data_root / DATASET / '1.0.0'} has {field}=.* model config has {field}={value}"):
        make_dataset(data_root, config)


def test_more_cameras_than_the_dataset_has(data_root, model_config):
    config = dataclasses.replace(model_config, num_images_in_input=3)
    with pytest.raises(ValueError, match="has 2 camera.*num_images_in_input=3"):
        make_dataset(data_root, config)


def test_empty_val_split(data_root, model_config):
    with pytest.raises(ValueError, match=rf"'val' split of dataset 'libero_synthetic' \({data_root / DATASET / '1.0.0'}\) "
                                         r"is empty.*val_fraction=0.0"):
        make_dataset(data_root, model_config, train=False)


@pytest.mark.parametrize("kwargs,match", [
    (dict(shuffle_buffer_size=0), "shuffle_buffer_size"),
    (dict(rank=2, world_size=2), "rank must be in"),
    (dict(rank=0, world_size=2, global_batch_size=3), "global_batch_size must be a positive multiple of world_size=2"),
    (dict(global_batch_size=0), "global_batch_size must be a positive multiple"),
    (dict(n_shot_per_task=0), "n_shot_per_task"),
    (dict(skip_samples=-1), "skip_samples"),
    (dict(val_fraction=1.0), "val_fraction"),
    (dict(train=False, image_aug=True, val_fraction=0.5), "image_aug=True requires train=True"),
])
def test_invalid_arguments(data_root, model_config, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_dataset(data_root, model_config, **kwargs)


def test_worker_processes_are_refused(data_root, model_config, monkeypatch):
    import torch

    # (A real worker would be forked after TF was imported, which crashes; simulate being inside one.)
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: object())
    with pytest.raises(RuntimeError, match="num_workers=0"):
        next(iter(make_dataset(data_root, model_config)))
