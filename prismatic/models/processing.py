"""Turning (images, instruction) into exactly what the model consumes.

One code path serves training (the RLDS batch transform) and inference (the LIBERO policy), so the two
cannot drift apart:

    prompt  = "<|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n"
              "What action should the robot take to {instruction}?<|im_end|>\\n<|im_start|>assistant\\n"
    ids     = tokenize(prompt) + [placeholder] * num_action_queries      (no BOS: Qwen adds none)
    pixels  = concat over images of [DINO-normalised RGB, SigLIP-normalised RGB]  -> (6 * N, H, W)

The placeholder id is irrelevant to the model (its embeddings are replaced by the learned action
queries); the model locates the queries as the last `num_action_queries` attended positions of each
right-padded row.

`build_tiny_tokenizer` creates a small byte-level BPE tokenizer with the Qwen special tokens, trained on a
fixed corpus, so tests and CPU demos never download anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from prismatic.constants import (
    DINO_MEAN,
    DINO_STD,
    END_OF_TEXT,
    IM_END,
    IM_START,
    QWEN_SYSTEM_PROMPT,
    SIGLIP_MEAN,
    SIGLIP_STD,
)


def build_prompt(instruction: str) -> str:
    """The Qwen chat-template prompt used by the released VLA-Adapter checkpoints (facts §2.4)."""
    return (
        f"{IM_START}system\n{QWEN_SYSTEM_PROMPT}{IM_END}\n"
        f"{IM_START}user\nWhat action should the robot take to {instruction.lower()}?{IM_END}\n"
        f"{IM_START}assistant\n"
    )


def pixel_values_from_images(images: Sequence[np.ndarray], image_size: int) -> torch.Tensor:
    """uint8 (H, W, 3) images, already resized to `image_size` -> float32 (6 * N, image_size, image_size).

    Resizing is deliberately NOT done here: training resizes in the RLDS pipeline (lanczos3 + antialias)
    and inference must use that same function, so a second resize here would hide a mismatch.
    """
    chunks = []
    dino_mean = torch.tensor(DINO_MEAN).view(3, 1, 1)
    dino_std = torch.tensor(DINO_STD).view(3, 1, 1)
    siglip_mean = torch.tensor(SIGLIP_MEAN).view(3, 1, 1)
    siglip_std = torch.tensor(SIGLIP_STD).view(3, 1, 1)
    for i, image in enumerate(images):
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image {i}: expected uint8 (H, W, 3), got {image.dtype} {image.shape}")
        if image.shape[:2] != (image_size, image_size):
            raise ValueError(
                f"image {i}: expected {image_size}x{image_size} (resize with the data pipeline's resize "
                f"first), got {image.shape[0]}x{image.shape[1]}"
            )
        # contiguous() before the float conversion: converting the permuted view is ~100x slower.
        x = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1).contiguous().float() / 255.0  # (3, H, W)
        chunks.append((x - dino_mean) / dino_std)
        chunks.append((x - siglip_mean) / siglip_std)
    return torch.cat(chunks, dim=0)


@dataclass
class VLAProcessor:
    """Tokenizes prompts and normalises images for one model configuration."""

    tokenizer: object  # a transformers PreTrainedTokenizerBase
    image_size: int
    num_images: int
    num_action_queries: int

    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        if pad is None:
            raise ValueError("tokenizer has no pad token; expected <|endoftext|> as pad token")
        return int(pad)

    def prompt_ids(self, instruction: str) -> list[int]:
        """Token ids of the prompt followed by the action-query placeholders."""
        ids = self.tokenizer(build_prompt(instruction), add_special_tokens=False)["input_ids"]
        return list(ids) + [self.pad_token_id] * self.num_action_queries

    def __call__(self, images: Sequence[np.ndarray], instruction: str) -> dict[str, torch.Tensor]:
        """One sample: input_ids (L,), pixel_values (6 * num_images, H, W)."""
        if len(images) != self.num_images:
            raise ValueError(f"expected {self.num_images} images (third-person first, then wrist), got {len(images)}")
        return {
            "input_ids": torch.tensor(self.prompt_ids(instruction), dtype=torch.long),
            "pixel_values": pixel_values_from_images(images, self.image_size),
        }

    def collate_text(self, sequences: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-pad a list of 1-D id tensors -> input_ids (B, L), attention_mask (B, L) bool."""
        max_len = max(int(s.numel()) for s in sequences)
        input_ids = torch.full((len(sequences), max_len), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), max_len), dtype=torch.bool)
        for i, s in enumerate(sequences):
            input_ids[i, : s.numel()] = s
            attention_mask[i, : s.numel()] = True
        return input_ids, attention_mask


# A fixed corpus for the tiny tokenizer: the prompt template plus robot-instruction vocabulary.
_TINY_CORPUS = [
    build_prompt("pick up the black bowl between the plate and the ramekin and place it on the plate"),
    build_prompt("put both the alphabet soup and the tomato sauce in the basket"),
    build_prompt("open the top drawer and put the bowl inside"),
    build_prompt("pick up the red cube and place it in the blue box"),
    "move the gripper toward the red green blue yellow object cube sphere bowl plate basket drawer cabinet "
    "left right top bottom front back middle next to on in the and of a it put place pick up open close "
    "turn push stove wine bottle cream cheese butter milk ketchup salad dressing bbq sauce orange juice "
    "chocolate pudding alphabet soup tomato sauce cookie box ramekin rack shelf microwave mug",
]


def build_tiny_tokenizer(out_dir: str | Path, vocab_size: int = 512):
    """Train a deterministic byte-level BPE tokenizer with the Qwen special tokens and save it as a
    transformers fast tokenizer in `out_dir`. Returns the loaded tokenizer.

    The ids of the special tokens are fixed (<|endoftext|>=0, <|im_start|>=1, <|im_end|>=2) and every id is
    < vocab_size, so the tiny model's embedding table (llm.vocab_size) covers it.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    out_dir = Path(out_dir)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[END_OF_TEXT, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_TINY_CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=END_OF_TEXT,
        pad_token=END_OF_TEXT,
        additional_special_tokens=[IM_START, IM_END],
    )
    if len(fast) > vocab_size:
        raise ValueError(f"tiny tokenizer has {len(fast)} tokens > vocab_size {vocab_size}")
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))
    return fast


def load_tokenizer(path: str | Path):
    """Load the tokenizer stored in a checkpoint / model directory (never from a hub)."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer directory not found: {path}")
    if not any((path / name).exists() for name in ("tokenizer.json", "vocab.json", "tokenizer_config.json")):
        raise FileNotFoundError(f"no tokenizer files (tokenizer.json / vocab.json) in {path}")
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
