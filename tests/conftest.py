"""Suite-wide settings: nothing is downloaded, W&B stays off, and shared tiny fixtures."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

import prismatic  # noqa: E402,F401  (torch before tensorflow in this process)


@pytest.fixture(autouse=True)
def _single_thread():
    # CI machines have 2 cores shared by several jobs; tiny models gain nothing from more torch threads.
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    from prismatic.models.processing import build_tiny_tokenizer

    return build_tiny_tokenizer(tmp_path_factory.mktemp("tiny_tokenizer"))


@pytest.fixture(scope="session")
def synthetic_data_root(tmp_path_factory):
    """A small generated LIBERO-format RLDS dataset (`libero_synthetic`), built once per test session."""
    from prismatic.vla.datasets.synthetic import ensure_synthetic_dataset

    root = tmp_path_factory.mktemp("rlds")
    ensure_synthetic_dataset(root, name="libero_synthetic")
    return root


def pytest_collection_modifyitems(config, items):
    # Under pytest-xdist (`make test` runs 2 workers, --dist loadgroup) every test that submits to the one-node
    # SLURM cluster runs on the same worker, one after another: their assertions read the shared queue.
    for item in items:
        if item.get_closest_marker("slurm") or "slurm_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("slurm"))
