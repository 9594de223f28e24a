"""The LIBERO RLDS data pipeline (tensorflow-datasets + tf.data), N-shot selection and a generated dataset.

Public API:
    RLDSDataset, RLDSBatchTransform, PaddedCollator          the torch side (batch format in batch_transform.py)
    DATASET_REGISTRY, MIXTURE_REGISTRY, DatasetSpec,
    register_dataset, register_libero_dataset, get_dataset_spec   dataset specs (registry.py)
    image_ops.resize_image                                   THE resize of training and evaluation
    rlds_writer.write_rlds_dataset                           write LIBERO-layout RLDS
    synthetic.ensure_synthetic_dataset                       the generated `libero_synthetic` dataset

Importing this package does not import TensorFlow; the pipeline imports it lazily (after torch, GPUs hidden).
"""

from prismatic.vla.datasets.batch_transform import PaddedCollator, RLDSBatchTransform
from prismatic.vla.datasets.registry import (
    DATASET_REGISTRY,
    MIXTURE_REGISTRY,
    DatasetSpec,
    get_dataset_spec,
    register_dataset,
    register_libero_dataset,
    register_mixture,
)
from prismatic.vla.datasets.rlds_dataset import RLDSDataset

__all__ = [
    "DATASET_REGISTRY",
    "MIXTURE_REGISTRY",
    "DatasetSpec",
    "PaddedCollator",
    "RLDSBatchTransform",
    "RLDSDataset",
    "get_dataset_spec",
    "register_dataset",
    "register_libero_dataset",
    "register_mixture",
]
