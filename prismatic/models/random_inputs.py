"""Random but well-formed model inputs (real prompts, random images/proprio/actions) for benchmarks and
tests that exercise the model or the training step without the data pipeline."""

from __future__ import annotations

import numpy as np
import torch

from prismatic.models.config import VLAConfig
from prismatic.models.processing import VLAProcessor

INSTRUCTIONS = (
    "pick up the red cube",
    "put both the alphabet soup and the cream cheese box in the basket",
    "open the top drawer",
    "move to the blue object",
)


def random_batch(config: VLAConfig, tokenizer, batch_size: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """One collated batch: prompts of different lengths (right-padded), uint8-derived pixels, proprio and
    normalised actions in [-1, 1]."""
    proc = VLAProcessor(tokenizer, config.vision.image_size, config.num_images_in_input, config.num_action_queries)
    size = config.vision.image_size
    samples = []
    for _ in range(batch_size):
        images = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(config.num_images_in_input)]
        samples.append(proc(images, INSTRUCTIONS[int(rng.integers(len(INSTRUCTIONS)))]))
    input_ids, attention_mask = proc.collate_text([s["input_ids"] for s in samples])
    actions = rng.uniform(-1, 1, (batch_size, config.num_actions_chunk, config.action_dim)).astype(np.float32)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "pixel_values": torch.stack([s["pixel_values"] for s in samples]),
        "proprio": torch.from_numpy(rng.uniform(-1, 1, (batch_size, config.proprio_dim)).astype(np.float32)),
        "actions": torch.from_numpy(actions),
    }
