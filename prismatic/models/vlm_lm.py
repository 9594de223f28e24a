"""The VLA's VLM used as a plain vision-language model: image + prompt -> next-token log-probabilities.

VLM pretraining (`prismatic.training.vlm_pretrain`) and the retention probe (`prismatic.eval.retention_probe`)
both go through these functions, so the two score text in exactly the same way. They use the SAME modules
the VLA runs -- `model.vision_backbone`, `model.projector`, `model.language_model` (its LM head included) --
and the VLA's sequence layout, with ONE image per sample and no action queries:

    pos 0         first prompt token ("<|im_start|>")
    pos 1 .. p    the image's projected patches (p = config.vision.patches_per_image)
    pos p+1 ..    the rest of the prompt, then the target text (answer / caption + "<|im_end|>"), right padding

The loss / likelihood covers the target tokens only (each predicted from the position before it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from prismatic.models.processing import pixel_values_from_images


@dataclass
class TextBatch:
    # (B, L) long token ids, right-padded with the tokenizer's pad id.
    input_ids: torch.Tensor
    # (B, L) bool: True for real tokens (a prefix of each row).
    attention_mask: torch.Tensor
    # (B, L) bool: True at the target tokens (the ones the loss / likelihood is taken over).
    target_mask: torch.Tensor


def encode_pair(tokenizer, prompt: str, target: str) -> tuple[list[int], int]:
    """Token ids of prompt + target and the number of prompt tokens.

    The two parts are tokenised separately (the prompt ends with a newline, so no BPE merge crosses the
    boundary), so every candidate answer of a closed set is scored after the identical prompt tokens."""
    prompt_ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    target_ids = list(tokenizer(target, add_special_tokens=False)["input_ids"])
    if len(prompt_ids) < 2:
        raise ValueError(f"prompt {prompt!r} tokenises to {len(prompt_ids)} token(s); need >= 2 (the image goes "
                         "after the first)")
    if not target_ids:
        raise ValueError(f"target {target!r} tokenises to no tokens")
    return prompt_ids + target_ids, len(prompt_ids)


def collate_pairs(encoded: Sequence[tuple[list[int], int]], pad_token_id: int) -> TextBatch:
    """Right-pad `encode_pair` outputs into a TextBatch."""
    if not encoded:
        raise ValueError("collate_pairs needs at least one sequence")
    length = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((len(encoded), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(encoded), length), dtype=torch.bool)
    target_mask = torch.zeros((len(encoded), length), dtype=torch.bool)
    for row, (ids, num_prompt) in enumerate(encoded):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = True
        target_mask[row, num_prompt: len(ids)] = True
    return TextBatch(input_ids, attention_mask, target_mask)


def single_image_pixels(images: Sequence, image_size: int) -> torch.Tensor:
    """uint8 (S, S, 3) images -> (B, 6, S, S) float pixel values (the VLA's per-image normalisation)."""
    return torch.stack([pixel_values_from_images([image], image_size) for image in images])


def image_patch_embeddings(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """(B, 6, S, S) one image per sample -> (B, p, D) projected patches, through the VLA's own modules.

    The fused backbone takes `num_images_in_input` images per row and runs every image through each tower
    as an independent batch element, so grouping n consecutive single images into one row (padding the
    batch with copies of the last image) and splitting the patch axis back gives each image's own patches.
    """
    b = pixel_values.shape[0]
    n = model.config.num_images_in_input
    if pixel_values.ndim != 4 or pixel_values.shape[1] != 6:
        raise ValueError(f"pixel_values must be (B, 6, H, W) (one image per sample), got {tuple(pixel_values.shape)}")
    pad = (-b) % n
    if pad:
        pixel_values = torch.cat([pixel_values, pixel_values[-1:].expand(pad, -1, -1, -1)])
    h, w = pixel_values.shape[2:]
    grouped = pixel_values.reshape((b + pad) // n, 6 * n, h, w)
    weight_dtype = model.projector.fc1.weight.dtype
    features = model.vision_backbone(grouped.to(weight_dtype))  # ((B + pad) / n, n * p, F)
    p = model.config.vision.patches_per_image
    features = features.reshape(b + pad, p, features.shape[-1])[:b]
    return model.projector(features)


def target_log_probs(model, patches: torch.Tensor, batch: TextBatch) -> torch.Tensor:
    """(B, L) float32 log p(token | image, previous tokens) at the target positions, 0 elsewhere.

    `patches`: (B, p, D) from `image_patch_embeddings` (rows may repeat one image's patches for several
    candidate texts). Logits are computed only at the positions that predict a target token, so a real-size
    vocabulary costs only what is scored."""
    ids, mask, targets = batch.input_ids, batch.attention_mask, batch.target_mask
    if patches.shape[0] != ids.shape[0]:
        raise ValueError(f"patches batch {patches.shape[0]} != text batch {ids.shape[0]}")
    if targets[:, 0].any():
        raise ValueError("the first token of a row cannot be a target (nothing precedes it)")
    b, p = ids.shape[0], patches.shape[1]
    text = model.language_model.model.embed_tokens(ids)  # (B, L, D)
    embeds = torch.cat([text[:, :1], patches.to(text.dtype), text[:, 1:]], dim=1)
    full_mask = torch.cat([mask[:, :1], torch.ones(b, p, dtype=torch.bool, device=mask.device), mask[:, 1:]], dim=1)
    hidden = model.language_model.model(inputs_embeds=embeds, attention_mask=full_mask, use_cache=False)
    hidden = hidden.last_hidden_state  # (B, L + p, D), final-norm output
    # Text position j >= 1 sits at j + p and is predicted by the state one position earlier, j + p - 1
    # (for j = 1 that is the last patch).
    rows, cols = targets.nonzero(as_tuple=True)
    source = cols + p - 1
    logits = model.language_model.lm_head(hidden[rows, source]).float()  # (T, V)
    picked = logits.log_softmax(dim=-1).gather(1, ids[rows, cols].unsqueeze(1)).squeeze(1)
    out = torch.zeros(ids.shape, dtype=torch.float32, device=ids.device)
    out[rows, cols] = picked
    return out


def mean_target_nll(model, patches: torch.Tensor, batch: TextBatch) -> torch.Tensor:
    """Per-row mean negative log-likelihood of the target tokens, averaged over rows (float32 scalar).

    Rows are weighted equally, so one-word answers count as much as long captions."""
    log_probs = target_log_probs(model, patches, batch)
    per_row = -log_probs.sum(dim=1) / batch.target_mask.sum(dim=1).clamp_min(1)
    return per_row.mean()
