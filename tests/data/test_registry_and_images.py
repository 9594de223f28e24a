"""Dataset registry rules, the shared resize, and lazy TensorFlow."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest


def test_registry_resolution():
    from prismatic.vla.datasets.registry import (
        DATASET_REGISTRY,
        get_dataset_spec,
        libero_spec,
        resolve_dataset_mixture,
    )

    for name in ("libero_spatial_no_noops", "libero_object_no_noops", "libero_goal_no_noops", "libero_10_no_noops",
                 "libero_synthetic"):
        assert DATASET_REGISTRY[name] == libero_spec(name)
    mixture = resolve_dataset_mixture("libero_4_task_suites_no_noops")
    assert [s.name for s, _ in mixture] == ["libero_spatial_no_noops", "libero_object_no_noops",
                                            "libero_goal_no_noops", "libero_10_no_noops"]
    assert get_dataset_spec("libero_synthetic_k8") == libero_spec("libero_synthetic_k8")  # the naming rules
    assert get_dataset_spec("libero_object_scripted") == libero_spec("libero_object_scripted")
    assert get_dataset_spec("libero_spatial_scripted_50demos") == libero_spec("libero_spatial_scripted_50demos")
    for unknown in ("object_scripted", "libero_objects", "bridge_scripted"):
        with pytest.raises(ValueError, match="unknown dataset name"):
            get_dataset_spec(unknown)
    spec = libero_spec("x")
    assert spec.image_keys == ("image", "wrist_image") and spec.proprio_dim(8) == 8 and spec.action_dim == 7
    with pytest.raises(ValueError, match="is a mixture"):
        get_dataset_spec("libero_4_task_suites_no_noops")


def test_registering_a_dataset_is_one_entry(monkeypatch):
    from prismatic.vla.datasets import registry

    monkeypatch.setattr(registry, "DATASET_REGISTRY", dict(registry.DATASET_REGISTRY))
    spec = registry.register_libero_dataset("libero_object_scripted")
    assert registry.get_dataset_spec("libero_object_scripted") is spec
    assert registry.register_libero_dataset("libero_object_scripted") == spec  # idempotent
    with pytest.raises(ValueError, match="already registered with a different spec"):
        registry.register_dataset(registry.DatasetSpec("libero_object_scripted", image_keys=("image",)))
    with pytest.raises(ValueError, match="gripper_transform"):
        registry.DatasetSpec("bad", gripper_transform="flip")


def test_resize_image_numpy_api():
    from prismatic.vla.datasets.image_ops import resize_image

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)
    out = resize_image(image, 56)
    assert out.shape == (56, 56, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(resize_image(image[None], 56)[0], out)  # batched form agrees
    flat = np.full((64, 64, 3), 77, np.uint8)
    np.testing.assert_array_equal(resize_image(flat, 32), np.full((32, 32, 3), 77, np.uint8))
    roundtrip = resize_image(image, 56, jpeg_roundtrip=True)
    assert roundtrip.shape == out.shape and not np.array_equal(roundtrip, out)
    assert np.abs(roundtrip.astype(int) - out).mean() < 40
    with pytest.raises(ValueError, match="uint8"):
        resize_image(image.astype(np.float32), 56)


def test_importing_the_data_package_does_not_import_tensorflow():
    code = ("import sys, prismatic.vla.datasets, prismatic.vla.datasets.synthetic; "
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported eagerly'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


def test_get_tf_hides_gpus_and_imports_torch_first():
    from prismatic.vla.datasets._tf import get_tf

    tf = get_tf()
    assert "torch" in sys.modules
    assert tf.config.get_visible_devices("GPU") == []


def test_tensorflow_from_get_tf_survives_later_triton_users():
    """torch imports triton lazily (e.g. timm -> torchvision -> torch._dynamo); if TF's LLVM is loaded first, that
    import segfaults. get_tf() loads triton first, so importing timm after the data pipeline works."""
    code = ("import prismatic; from prismatic.vla.datasets._tf import get_tf; get_tf(); "
            "import timm, torch._dynamo; print('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "ok" in result.stdout, (result.returncode, result.stderr[-2000:])
