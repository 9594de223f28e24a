"""Training randomness keyed on (seed, step, global sample index): LoRA dropout masks and the head noise
do not depend on which rank or micro-batch a sample is in (prismatic.training.randomness)."""

import tempfile

import numpy as np
import pytest
import torch

from prismatic.training.randomness import KeyedDropout, dropout_keys, head_noise


def _keys(*indices):
    return torch.tensor(indices, dtype=torch.long)


def test_keyed_dropout_mask_of_a_row_depends_only_on_its_sample():
    drop = KeyedDropout(0.3, seed=1, layer_name="layer").train()
    x = torch.randn(4, 10, 16)
    with dropout_keys(_keys(5, 6, 7, 8)):
        whole = drop(x)
    with dropout_keys(_keys(7, 8)):
        half = drop(x[2:])
        padded = drop(torch.cat([x[2:], torch.randn(2, 3, 16)], dim=1))  # 3 more (padding) positions
    torch.testing.assert_close(half, whole[2:], rtol=0, atol=0)
    torch.testing.assert_close(padded[:, :10], whole[2:], rtol=0, atol=0)
    with dropout_keys(_keys(8, 7)):  # order within the batch does not matter either
        swapped = drop(x[[3, 2]])
    torch.testing.assert_close(swapped, whole[[3, 2]], rtol=0, atol=0)
    # Rows of different samples get different masks; kept elements are rescaled by 1 / (1 - p).
    kept = whole != 0
    assert not torch.equal(kept[0], kept[1])
    torch.testing.assert_close(whole[kept], x[kept] / 0.7)
    # (B * m) rows, the m rows of a sample together (two cameras through a vision tower): keyed per sample.
    images = torch.randn(8, 10, 16)
    with dropout_keys(_keys(5, 6, 7, 8)):
        both = drop(images)
    with dropout_keys(_keys(7, 8)):
        torch.testing.assert_close(drop(images[4:]), both[4:], rtol=0, atol=0)
    assert not torch.equal(both[4] != 0, both[5] != 0)  # the two images of a sample get different masks


def test_keyed_dropout_rate_seed_layer_and_modes():
    x = torch.ones(8, 64, 256)
    with dropout_keys(torch.arange(8)):
        a = KeyedDropout(0.25, seed=0, layer_name="a").train()(x)
        other_seed = KeyedDropout(0.25, seed=1, layer_name="a").train()(x)
        other_layer = KeyedDropout(0.25, seed=0, layer_name="b").train()(x)
        assert torch.equal(KeyedDropout(0.25, seed=0, layer_name="a").eval()(x), x)
    keep_rate = (a != 0).float().mean().item()
    assert abs(keep_rate - 0.75) < 0.01, keep_rate
    assert not torch.equal(a != 0, other_seed != 0) and not torch.equal(a != 0, other_layer != 0)
    # Per-position keep rates show no structure (e.g. the same mask repeated along the sequence).
    per_position = (a != 0).float().mean(dim=(0, 2))
    assert per_position.std().item() < 0.05
    with pytest.raises(RuntimeError, match="outside dropout_keys"):
        KeyedDropout(0.25, seed=0, layer_name="a").train()(x)
    with dropout_keys(torch.arange(3)), pytest.raises(ValueError, match=r"\(3,\) sample keys for a batch of 8"):
        KeyedDropout(0.25, seed=0, layer_name="a").train()(x)


def test_head_noise_is_a_function_of_seed_and_step():
    a = head_noise(7, 3, 8, 56)
    assert a.shape == (8, 56) and a.dtype == torch.float32
    assert torch.equal(a, head_noise(7, 3, 8, 56))
    assert not torch.equal(a, head_noise(7, 4, 8, 56)) and not torch.equal(a, head_noise(8, 3, 8, 56))
    assert abs(a.std().item() - 1.0) < 0.2


@pytest.fixture(scope="module")
def tiny_lora_model():
    from prismatic.models.config import get_preset
    from prismatic.models.processing import build_tiny_tokenizer
    from prismatic.models.random_inputs import random_batch
    from prismatic.models.vla import VLAAdapter
    from prismatic.training.lora import apply_lora

    config = get_preset("tiny")
    torch.manual_seed(0)
    model = apply_lora(VLAAdapter(config), rank=4, alpha=8, dropout=0.5, dropout_seed=3)
    with torch.no_grad():  # non-zero LoRA B, so the dropped LoRA branch changes the output
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    with tempfile.TemporaryDirectory() as d:
        tokenizer = build_tiny_tokenizer(d, vocab_size=config.llm.vocab_size)
    batch = random_batch(config, tokenizer, 4, np.random.default_rng(0))
    return model, config, batch


def _forward(model, batch, rows, indices, noise):
    inputs = {k: batch[k][rows] for k in ("input_ids", "attention_mask", "pixel_values", "proprio")}
    # Trim the padding the smaller batch would not have (what PaddedCollator does for a micro-batch).
    length = int(inputs["attention_mask"].sum(dim=1).max())
    inputs["input_ids"], inputs["attention_mask"] = inputs["input_ids"][:, :length], inputs["attention_mask"][:, :length]
    with dropout_keys(_keys(*indices)):
        return model(**inputs, head_noise=noise).predicted_actions


def test_model_rows_do_not_depend_on_the_micro_batch_they_are_in(tiny_lora_model):
    model, config, batch = tiny_lora_model
    model.train()
    noise = head_noise(0, 0, config.num_actions_chunk, config.action_dim * config.llm.hidden_size)
    with torch.no_grad():
        whole = _forward(model, batch, [0, 1, 2, 3], (10, 11, 12, 13), noise)
        halves = torch.cat([_forward(model, batch, [0, 1], (10, 11), noise),
                            _forward(model, batch, [2, 3], (12, 13), noise)])
        other_keys = _forward(model, batch, [0, 1, 2, 3], (20, 21, 22, 23), noise)
        other_noise = _forward(model, batch, [0, 1, 2, 3], (10, 11, 12, 13), head_noise(0, 1, *noise.shape))
    torch.testing.assert_close(halves, whole, rtol=0, atol=1e-5)
    # Both draws are really used: other sample keys (dropout masks) and another step's noise change the output.
    assert (other_keys - whole).abs().max() > 1e-3
    assert (other_noise - whole).abs().max() > 1e-3
    model.eval()
