"""bf16 fidelity with upstream's arithmetic (issue 12): rotary tables and normalisation edge cases.

Every reference below re-derives upstream's arithmetic plainly:
  * Qwen2 (transformers 4.40, what the released weights were trained with): inv_freq = 1 / theta^(2i/d) in
    fp32, cos/sin of fp32 angles position * inv_freq, rounded to the model dtype only at the end.
  * Upstream's Pro head `RotaryPositionEmbedding` after `.to(torch.bfloat16)`: inv_freq rounded to bf16,
    t = torch.arange(L, dtype=bf16), freqs = einsum("i,j->ij", t, inv_freq) in bf16, cos/sin in bf16.
  * Upstream's evaluation `normalize_proprio`: clip(where(mask, 2 (x - q01) / (q99 - q01 + 1e-8) - 1, x), -1, 1).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from prismatic.models.action_heads import RotaryEmbedding
from prismatic.models.config import LLMConfig
from prismatic.models.llm import build_language_model
from prismatic.models.loading import load_vla_checkpoint, save_released_checkpoint
from prismatic.models.vla import VLAAdapter
from prismatic.vla.normalization import normalize_bounds_q99

THETA = 1_000_000.0
HEAD_DIM = 64  # Qwen2.5-0.5B: 896 / 14
POSITIONS = torch.arange(512, 2048)  # where bf16 frequencies go badly wrong


def qwen_reference(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """transformers-4.40 Qwen2 cos/sin: fp32 frequencies and angles, result rounded to `dtype`."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    freqs = torch.outer(positions.float(), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotary_llm() -> torch.nn.Module:
    """A one-layer Qwen2 with the real head_dim (64) and theta (1e6)."""
    config = LLMConfig(hidden_size=2 * HEAD_DIM, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                       intermediate_size=64, vocab_size=64, max_position_embeddings=4096, rope_theta=THETA)
    return build_language_model(config, attn_implementation="sdpa")


def llm_cos_sin(lm, dtype: torch.dtype):
    x = torch.zeros(1, len(POSITIONS), lm.config.hidden_size, dtype=dtype)
    cos, sin = lm.model.rotary_emb(x, POSITIONS.unsqueeze(0))  # (1, L, head_dim)
    return cos[0], sin[0]


@pytest.mark.parametrize("cast", ["to", "bfloat16", "half", "round_trip"])
def test_llm_rotary_frequencies_stay_fp32_in_every_cast(cast):
    lm = rotary_llm()
    dtype = {"to": torch.bfloat16, "bfloat16": torch.bfloat16, "half": torch.float16, "round_trip": torch.float32}[cast]
    if cast == "to":
        lm = lm.to(torch.bfloat16)
    elif cast == "bfloat16":
        lm = lm.bfloat16()
    elif cast == "half":
        lm = lm.half()
    else:
        lm = lm.to(torch.bfloat16).to(torch.float32)
    assert next(lm.parameters()).dtype == dtype  # the weights were cast...
    rotary = lm.model.rotary_emb
    assert rotary.inv_freq.dtype == torch.float32  # ...the frequencies were not
    assert rotary.original_inv_freq.dtype == torch.float32
    cos, sin = llm_cos_sin(lm, dtype)
    ref_cos, ref_sin = qwen_reference(POSITIONS, HEAD_DIM, THETA, dtype)
    torch.testing.assert_close(cos, ref_cos, rtol=0, atol=0)
    torch.testing.assert_close(sin, ref_sin, rtol=0, atol=0)


def test_bf16_frequencies_would_be_far_off():
    """What the fp32 buffers prevent: angles from bf16-rounded frequencies (the issue's 0.58 cos error)."""
    inv_freq = 1.0 / (THETA ** (torch.arange(0, HEAD_DIM, 2).float() / HEAD_DIM))
    rounded = torch.outer(POSITIONS.float(), inv_freq.bfloat16().float())
    exact = torch.outer(POSITIONS.float(), inv_freq)
    assert (rounded.cos() - exact.cos()).abs().max() > 0.5


def test_load_vla_checkpoint_in_bf16_keeps_rotary_fp32(tmp_path, tiny_config, tiny_tokenizer, dataset_statistics):
    config = tiny_config()
    model = VLAAdapter(config, attn_implementation="sdpa").eval()
    path = save_released_checkpoint(model, tmp_path / "ckpt", tiny_tokenizer, dataset_statistics)
    loaded = load_vla_checkpoint(path, dtype=torch.bfloat16, attn_implementation="sdpa").model
    assert loaded.projector.fc1.weight.dtype == torch.bfloat16
    rotary = loaded.language_model.model.rotary_emb
    assert rotary.inv_freq.dtype == torch.float32
    llm = config.llm
    head_dim = llm.hidden_size // llm.num_attention_heads
    x = torch.zeros(1, len(POSITIONS), llm.hidden_size, dtype=torch.bfloat16)
    cos, sin = (t[0] for t in rotary(x, POSITIONS.unsqueeze(0)))
    ref_cos, ref_sin = qwen_reference(POSITIONS, head_dim, llm.rope_theta, torch.bfloat16)
    torch.testing.assert_close(cos, ref_cos, rtol=0, atol=0)
    torch.testing.assert_close(sin, ref_sin, rtol=0, atol=0)
    for block in loaded.action_head.model.mlp_resnet_blocks:
        assert block.rope.inv_freq.dtype == torch.float32
        assert block.rope.table_dtype == "float32"  # trained here (vla_config.json): exact table


# ---------------------------------------------------------------- Pro head RoPE table

def upstream_bf16_head_table(length: int, head_dim: int):
    """Upstream's RotaryPositionEmbedding with the head cast to bf16 (its training and evaluation)."""
    inv_freq = (1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))).to(torch.bfloat16)
    t = torch.arange(length, dtype=inv_freq.dtype)
    freqs = torch.einsum("i,j->ij", t, inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def exact_head_table(length: int, head_dim: int):
    """The same table in float64 scalar math: cos/sin(p / 10000^(2i/d)), half-split layout."""
    half = [1.0 / (10000 ** (2 * i / head_dim)) for i in range(head_dim // 2)]
    angles = [[p * f for f in half + half] for p in range(length)]
    return (torch.tensor([[math.cos(a) for a in row] for row in angles], dtype=torch.float64),
            torch.tensor([[math.sin(a) for a in row] for row in angles], dtype=torch.float64))


@pytest.mark.parametrize("head_dim", [16, 112])  # tiny preset, real size (896 / 8)
def test_head_rope_tables_match_their_references(head_dim):
    length = 512  # real-size vision keys: positions 0..511
    bf16 = RotaryEmbedding(head_dim, table_dtype="bfloat16")
    cos, sin = bf16.angles(length, torch.device("cpu"), torch.bfloat16)
    ref_cos, ref_sin = upstream_bf16_head_table(length, head_dim)
    torch.testing.assert_close(cos, ref_cos, rtol=0, atol=0)
    torch.testing.assert_close(sin, ref_sin, rtol=0, atol=0)

    fp32 = RotaryEmbedding(head_dim, table_dtype="float32")
    cos32, sin32 = fp32.angles(length, torch.device("cpu"), torch.float32)
    exact_cos, exact_sin = exact_head_table(length, head_dim)
    torch.testing.assert_close(cos32.double(), exact_cos, rtol=0, atol=2e-4)  # fp32 angle rounding at p ~ 500
    torch.testing.assert_close(sin32.double(), exact_sin, rtol=0, atol=2e-4)
    # The two tables really differ where bf16 rounds positions (257 -> 256: one radian in column 0).
    assert torch.arange(257, 258, dtype=torch.bfloat16).item() == 256
    assert (cos.double() - exact_cos)[257:].abs().max() > 0.5


def test_head_rope_keeps_table_after_model_cast():
    """A cast of the head to bf16 (CUDA evaluation) rounds only the result of the fp32 table, not the angles."""
    rope = RotaryEmbedding(112, table_dtype="float32").to(torch.bfloat16)
    assert rope.inv_freq.dtype == torch.float32
    cos, _ = rope.angles(512, torch.device("cpu"), torch.bfloat16)
    exact_cos, _ = exact_head_table(512, 112)
    torch.testing.assert_close(cos, exact_cos.to(torch.float32).to(torch.bfloat16), rtol=0, atol=2 ** -8)


def test_rope_dtype_is_recorded_and_reaches_every_block(tmp_path, tiny_config, tiny_tokenizer, dataset_statistics,
                                                        make_batch):
    config = tiny_config()
    config = dataclasses.replace(config, action_head=dataclasses.replace(config.action_head, rope_dtype="bfloat16"))
    model = VLAAdapter(config, attn_implementation="sdpa").eval()
    assert {b.rope.table_dtype for b in model.action_head.model.mlp_resnet_blocks} == {"bfloat16"}
    path = save_released_checkpoint(model, tmp_path / "ckpt", tiny_tokenizer, dataset_statistics)
    loaded = load_vla_checkpoint(path, attn_implementation="sdpa")
    assert loaded.config.action_head.rope_dtype == "bfloat16"
    assert {b.rope.table_dtype for b in loaded.model.action_head.model.mlp_resnet_blocks} == {"bfloat16"}
    # The table choice changes the head's output (the vision keys' positions go through it).
    batch = make_batch(config, [40, 44])
    batch.pop("actions")
    with torch.no_grad():
        with_bf16 = loaded.model(**batch).predicted_actions
        for block in loaded.model.action_head.model.mlp_resnet_blocks:
            block.rope.table_dtype = "float32"
        with_fp32 = loaded.model(**batch).predicted_actions
    assert not torch.equal(with_bf16, with_fp32)
    with pytest.raises(ValueError, match="action_head.rope_dtype"):
        dataclasses.replace(config.action_head, rope_dtype="float16")


# ---------------------------------------------------------------- normalisation edge cases

def upstream_eval_normalize_proprio(x: np.ndarray, q01: np.ndarray, q99: np.ndarray) -> np.ndarray:
    """Upstream's `normalize_proprio` (BOUNDS_Q99, no mask in the statistics)."""
    return np.clip(2 * (x - q01) / (q99 - q01 + 1e-8) - 1, -1.0, 1.0)


NEAR_CONSTANT = {  # dim 1: q01 == q99 but min < max (a near-constant dimension); dim 2: truly constant
    "q01": [-1.0, 0.5, 0.04], "q99": [1.0, 0.5, 0.04], "min": [-1.2, 0.4, 0.04], "max": [1.3, 0.6, 0.04],
}


def test_near_constant_proprio_dims_released_vs_ours():
    x = np.array([[0.3, 0.5, 0.04], [-2.0, 0.5000001, 0.04], [0.9, 0.45, 0.04]], dtype=np.float32)
    q01, q99 = np.array(NEAR_CONSTANT["q01"], np.float32), np.array(NEAR_CONSTANT["q99"], np.float32)
    upstream = upstream_eval_normalize_proprio(x, q01, q99)
    released = normalize_bounds_q99(x, NEAR_CONSTANT, zero_constant=False)
    np.testing.assert_allclose(released, upstream, rtol=0, atol=1e-6)
    assert released[0, 1] == -1.0 and released[1, 1] == 1.0  # the near-constant dim is NOT zeroed upstream
    ours = normalize_bounds_q99(x, NEAR_CONSTANT)
    np.testing.assert_allclose(ours[:, 0], upstream[:, 0], rtol=0, atol=1e-6)
    assert np.all(ours[:, 1:] == 0.0)  # our training convention: q01 == q99 -> 0
    torch.testing.assert_close(normalize_bounds_q99(torch.from_numpy(x), NEAR_CONSTANT, zero_constant=False),
                               torch.from_numpy(upstream), rtol=0, atol=1e-6)


@pytest.mark.parametrize("zero_constant", [True, False])
def test_predict_action_normalises_proprio_per_checkpoint_source(zero_constant, tiny_config, make_batch,
                                                                  dataset_statistics):
    config = dataclasses.replace(tiny_config(), zero_constant_proprio=zero_constant)
    model = VLAAdapter(config, attn_implementation="sdpa").eval()
    stats = dict(dataset_statistics["toy_dataset"])
    proprio_stats = {k: list(v) for k, v in stats["proprio"].items()}
    proprio_stats["q01"][2] = proprio_stats["q99"][2] = 1.0  # a near-constant dimension
    stats["proprio"] = proprio_stats
    batch = make_batch(config, [40])
    raw = torch.tensor([[0.1, 0.0, 1.0, 0.0, 0.0, 0.0, 0.02, -0.02]])
    seen = {}
    hook = model.proprio_projector.register_forward_pre_hook(lambda mod, args: seen.update(x=args[0]))
    model.predict_action(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], raw, stats)
    hook.remove()
    q01, q99 = np.array(proprio_stats["q01"]), np.array(proprio_stats["q99"])
    upstream = upstream_eval_normalize_proprio(raw.numpy(), q01, q99)
    expected = upstream.copy()
    if zero_constant:
        expected[0, 2] = 0.0
    assert upstream[0, 2] == -1.0
    np.testing.assert_allclose(seen["x"].numpy(), expected, rtol=0, atol=1e-6)
