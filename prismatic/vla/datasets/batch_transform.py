"""Frame -> model sample (`RLDSBatchTransform`) and samples -> batch (`PaddedCollator`).

Both go through `VLAProcessor`, the object the LIBERO policy uses at inference, so prompts, token ids and
pixel normalisation cannot differ between training and evaluation.

Batch (the contract with the model and the trainer):
    input_ids       (B, L) long, right-padded with the pad token
    attention_mask  (B, L) bool
    pixel_values    (B, 6 * num_images, H, W) float32
    proprio         (B, P) float32, normalised           (stays 2-D for B = 1, unlike upstream)
    actions         (B, chunk, A) float32, normalised
    dataset_names   list[str]
    instructions    list[str]
    sample_keys     list[str]  "<dataset>/<episode>/<timestep>": identifies the frame (CRaFT's anchor cache)
    sample_indices  (B,) long  the frames' positions in the global stream (pipeline.py): what per-sample
                    randomness is keyed on, and what tells which slice of the global batch a rank holds
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from prismatic.models.processing import VLAProcessor


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass
class RLDSBatchTransform:
    """One pipeline frame (numpy dict from RLDSDataset) -> one sample dict."""

    processor: VLAProcessor

    def __call__(self, frame: dict) -> dict:
        # uint8 (num_images, S, S, 3), third-person first. tf.data hands out read-only arrays; copy so torch
        # never wraps non-writable memory.
        images = np.array(frame["images"], copy=True)
        if images.shape[0] != self.processor.num_images:
            raise ValueError(f"frame has {images.shape[0]} images but the processor expects {self.processor.num_images}")
        instruction = _text(frame["instruction"])
        sample = self.processor(list(images), instruction)
        sample["proprio"] = torch.tensor(frame["proprio"], dtype=torch.float32)  # (P,)
        sample["actions"] = torch.tensor(frame["actions"], dtype=torch.float32)  # (chunk, A)
        sample["dataset_name"] = _text(frame["dataset_name"])
        sample["instruction"] = instruction
        sample["sample_key"] = f"{sample['dataset_name']}/{int(frame['episode_index'])}/{int(frame['timestep'])}"
        sample["sample_index"] = int(frame["sample_index"])
        return sample


@dataclass
class PaddedCollator:
    """A list of RLDSBatchTransform samples -> the batch in the module docstring."""

    processor: VLAProcessor

    def __call__(self, samples: Sequence[dict]) -> dict:
        if not samples:
            raise ValueError("PaddedCollator got an empty list of samples")
        input_ids, attention_mask = self.processor.collate_text([s["input_ids"] for s in samples])
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "pixel_values": torch.stack([s["pixel_values"] for s in samples]),
            "proprio": torch.stack([s["proprio"] for s in samples]),
            "actions": torch.stack([s["actions"] for s in samples]),
            "dataset_names": [s["dataset_name"] for s in samples],
            "instructions": [s["instruction"] for s in samples],
            "sample_keys": [s["sample_key"] for s in samples],
            "sample_indices": torch.tensor([s["sample_index"] for s in samples], dtype=torch.long),
        }
