"""RLDSBatchTransform + PaddedCollator produce exactly the batch the model and trainer consume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.data.common import DATASET, make_dataset, take

BATCH_KEYS = {"input_ids", "attention_mask", "pixel_values", "proprio", "actions", "dataset_names", "instructions",
              "sample_keys", "sample_indices"}


@pytest.fixture(scope="module")
def processor(tiny_tokenizer, model_config):
    from prismatic.models.processing import VLAProcessor

    return VLAProcessor(tiny_tokenizer, model_config.vision.image_size, model_config.num_images_in_input,
                        model_config.num_action_queries)


def test_loader_batch_matches_the_contract(data_root, model_config, processor):
    from prismatic.models.processing import pixel_values_from_images
    from prismatic.vla.datasets import PaddedCollator, RLDSBatchTransform

    dataset = make_dataset(data_root, model_config, batch_transform=RLDSBatchTransform(processor),
                           shuffle_buffer_size=50, seed=0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, collate_fn=PaddedCollator(processor), num_workers=0)
    batch = next(iter(loader))
    raw = take(make_dataset(data_root, model_config, shuffle_buffer_size=50, seed=0), 4)  # same stream, no transform

    assert set(batch) == BATCH_KEYS
    B, L = batch["input_ids"].shape
    assert B == 4 and batch["input_ids"].dtype == torch.long
    assert batch["attention_mask"].shape == (B, L) and batch["attention_mask"].dtype == torch.bool
    assert batch["pixel_values"].shape == (B, 12, 56, 56) and batch["pixel_values"].dtype == torch.float32
    assert batch["proprio"].shape == (B, 8) and batch["proprio"].dtype == torch.float32
    assert batch["actions"].shape == (B, 8, 7) and batch["actions"].dtype == torch.float32
    assert batch["dataset_names"] == [DATASET] * B
    keys = batch["sample_keys"]  # "<dataset>/<episode>/<timestep>", unique per frame
    assert len(set(keys)) == B and all(k.startswith(f"{DATASET}/") and len(k.split("/")) == 3 for k in keys)
    assert batch["sample_indices"].dtype == torch.long
    assert batch["sample_indices"].tolist() == [int(f["sample_index"]) for f in raw] == [0, 1, 2, 3]
    for i, frame in enumerate(raw):
        instruction = frame["instruction"].decode()
        assert batch["instructions"][i] == instruction
        ids = processor.prompt_ids(instruction)
        assert batch["input_ids"][i, : len(ids)].tolist() == ids  # right padding: the prompt comes first
        assert batch["attention_mask"][i].sum() == len(ids)
        assert torch.all(batch["input_ids"][i, len(ids):] == processor.pad_token_id)
        torch.testing.assert_close(batch["pixel_values"][i], pixel_values_from_images(list(np.array(frame["images"])), 56))
        np.testing.assert_array_equal(batch["actions"][i].numpy(), frame["actions"])
        np.testing.assert_array_equal(batch["proprio"][i].numpy(), frame["proprio"])
    # The last Q attended positions of every row are the action-query placeholders.
    for i in range(B):
        n = int(batch["attention_mask"][i].sum())
        assert torch.all(batch["input_ids"][i, n - model_config.num_action_queries: n] == processor.pad_token_id)


def test_batch_of_one_keeps_two_dimensional_proprio(data_root, model_config, processor):
    from prismatic.vla.datasets import PaddedCollator, RLDSBatchTransform

    frame = take(make_dataset(data_root, model_config), 1)[0]
    batch = PaddedCollator(processor)([RLDSBatchTransform(processor)(frame)])
    assert batch["proprio"].shape == (1, 8) and batch["actions"].shape == (1, 8, 7)


def test_batch_transform_rejects_a_camera_count_mismatch(data_root, model_config, processor):
    from prismatic.vla.datasets import RLDSBatchTransform

    frame = take(make_dataset(data_root, model_config), 1)[0]
    frame["images"] = frame["images"][:1]
    with pytest.raises(ValueError, match="1 images but the processor expects 2"):
        RLDSBatchTransform(processor)(frame)
    from prismatic.vla.datasets import PaddedCollator

    with pytest.raises(ValueError, match="empty list"):
        PaddedCollator(processor)([])
