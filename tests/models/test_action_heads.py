"""The Bridge-Attention head: one block against a hand-written reference, key layout, sizes, noise."""

from __future__ import annotations

import math

import pytest
import torch

from prismatic.models.action_heads import (
    BridgeAttentionActionHead,
    BridgeAttentionBlock,
    BridgeAttentionBlockPro,
)

DIM, HEADS, T, Q, P = 32, 4, 5, 6, 9


def linear(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return x @ layer.weight.T + layer.bias


def rope_reference(x: torch.Tensor) -> torch.Tensor:
    """x (L, d) rotated channel by channel, written out from the upstream formula: angle table column c
    uses frequency index c mod d/2; channel 2k pairs with 2k+1 (x_2k*cos - x_2k+1*sin, x_2k+1*cos + x_2k*sin)."""
    length, d = x.shape
    out = torch.empty_like(x)
    for pos in range(length):
        for c in range(d):
            theta = pos / (10000.0 ** (2 * (c % (d // 2)) / d))
            partner = -x[pos, c + 1] if c % 2 == 0 else x[pos, c - 1]
            out[pos, c] = x[pos, c] * math.cos(theta) + partner * math.sin(theta)
    return out


def block_reference(block, x, vision, queries, proprio, pro: bool) -> torch.Tensor:
    """One sample, explicit per-head loops and an explicit softmax over the concatenated logits."""
    cond = torch.cat([queries, proprio], dim=0)  # (Q + 1, D)
    gate = math.tanh(block.gating_factor.item())
    hd = DIM // HEADS
    q_all = linear(block.q_proj, x)
    if pro:
        ks = [linear(block.k_self, x), linear(block.k_adapter, cond), linear(block.k_task, vision)]
        vs = [linear(block.v_self, x), linear(block.v_adapter, cond), linear(block.v_task, vision)]
    else:
        ks = [linear(block.k_proj, s) for s in (x, cond, vision)]
        vs = [linear(block.v_proj, s) for s in (x, cond, vision)]
    heads = []
    for h in range(HEADS):
        sl = slice(h * hd, (h + 1) * hd)
        q = q_all[:, sl]
        k_parts = [k[:, sl] for k in ks]
        if pro:
            q = rope_reference(q)
            k_parts = [rope_reference(k) for k in k_parts]
        logits = torch.cat(
            [q @ k_parts[0].T, q @ k_parts[1].T, gate * (q @ k_parts[2].T)], dim=1
        ) / math.sqrt(hd)
        weights = torch.exp(logits - logits.max(dim=1, keepdim=True).values)
        weights = weights / weights.sum(dim=1, keepdim=True)
        values = torch.cat([v[:, sl] for v in vs], dim=0)
        heads.append(weights @ values)
    attended = linear(block.o_proj, torch.cat(heads, dim=1))
    ln, fc, _ = block.ffn
    y = torch.nn.functional.layer_norm(attended + x, (DIM,), ln.weight, ln.bias, ln.eps)
    return torch.relu(linear(fc, y))


@pytest.mark.parametrize("pro", [False, True])
def test_block_matches_hand_written_joint_softmax(pro):
    torch.manual_seed(0)
    block = (BridgeAttentionBlockPro if pro else BridgeAttentionBlock)(DIM, HEADS).double()
    with torch.no_grad():
        block.gating_factor.fill_(0.7)  # non-zero so the tanh gate matters
    x, vision = torch.randn(2, T, DIM).double(), torch.randn(2, P, DIM).double()
    queries, proprio = torch.randn(2, Q, DIM).double(), torch.randn(2, 1, DIM).double()
    out = block(x, vision, queries, proprio)
    assert out.shape == (2, T, DIM)
    for b in range(2):
        expected = block_reference(block, x[b], vision[b], queries[b], proprio[b], pro)
        torch.testing.assert_close(out[b], expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("pro", [False, True])
def test_zero_gate_gives_vision_uniform_not_zero_weight(pro):
    """At g = 0 the vision logits are 0 (uniform), so changing vision VALUES changes the output."""
    torch.manual_seed(1)
    block = (BridgeAttentionBlockPro if pro else BridgeAttentionBlock)(DIM, HEADS)
    x, queries, proprio = torch.randn(1, T, DIM), torch.randn(1, Q, DIM), torch.randn(1, 1, DIM)
    a = block(x, torch.randn(1, P, DIM), queries, proprio)
    b = block(x, torch.randn(1, P, DIM), queries, proprio)
    assert not torch.allclose(a, b)
    assert (a >= 0).all()  # post-ReLU block output


def test_pro_rope_distinguishes_chunk_positions_original_does_not():
    torch.manual_seed(2)
    x = torch.zeros(1, T, DIM)  # identical inputs at every chunk position
    vision, queries, proprio = torch.randn(1, P, DIM), torch.randn(1, Q, DIM), torch.randn(1, 1, DIM)
    original = BridgeAttentionBlock(DIM, HEADS)(x, vision, queries, proprio)
    pro = BridgeAttentionBlockPro(DIM, HEADS)(x, vision, queries, proprio)
    torch.testing.assert_close(original[0, 0].expand(T, DIM), original[0])
    assert not torch.allclose(pro[0, 0], pro[0, 1])


def make_head(pro: bool, noise: float = 0.02, blocks: int = 3) -> BridgeAttentionActionHead:
    return BridgeAttentionActionHead(DIM, action_dim=7, num_actions_chunk=T, num_blocks=blocks, num_heads=HEADS,
                                     use_pro_version=pro, train_noise_std=noise)


def head_inputs(batch: int, blocks: int = 3, same_rows: bool = False):
    vision = [torch.randn(1 if same_rows else batch, P, DIM).expand(batch, P, DIM) for _ in range(blocks)]
    queries = [torch.randn(1 if same_rows else batch, Q, DIM).expand(batch, Q, DIM) for _ in range(blocks)]
    proprio = torch.randn(1 if same_rows else batch, 1, DIM).expand(batch, 1, DIM)
    return vision, queries, proprio


@pytest.mark.parametrize("pro", [False, True])
def test_head_keys_match_released_layout(pro):
    keys = set(make_head(pro).state_dict())
    stem = {f"model.{m}.{p}" for m in ("layer_norm1", "fc1", "layer_norm2", "fc2") for p in ("weight", "bias")}
    assert stem <= keys
    block0 = {k.removeprefix("model.mlp_resnet_blocks.0.") for k in keys if k.startswith("model.mlp_resnet_blocks.0.")}
    common = {"ffn.0.weight", "ffn.0.bias", "ffn.1.weight", "ffn.1.bias", "q_proj.weight", "q_proj.bias",
              "o_proj.weight", "o_proj.bias", "gating_factor"}
    extra = (["k_self", "v_self", "k_adapter", "v_adapter", "k_task", "v_task", "film_gen.0"] if pro
             else ["k_proj", "v_proj"])
    assert block0 == common | {f"{m}.{p}" for m in extra for p in ("weight", "bias")}
    assert not any("rope" in k for k in keys)  # the RoPE table is not persistent


@pytest.mark.parametrize("pro, expected", [(False, 102_129_695), (True, 217_864_223)])
def test_real_size_head_parameter_count(pro, expected):
    with torch.device("meta"):
        head = BridgeAttentionActionHead(896, 7, 8, num_blocks=24, num_heads=8, use_pro_version=pro,
                                         train_noise_std=0.02)
    assert sum(p.numel() for p in head.parameters()) == expected


def test_film_gen_is_unused():
    head = make_head(pro=True)
    head(*head_inputs(2)).sum().backward()
    for block in head.model.mlp_resnet_blocks:
        assert block.film_gen[0].weight.grad is None
        assert block.q_proj.weight.grad is not None


@pytest.mark.parametrize("pro", [False, True])
def test_train_noise_only_in_training_and_shared_across_batch(pro):
    torch.manual_seed(3)
    head = make_head(pro)
    inputs = head_inputs(3, same_rows=True)  # three identical samples
    head.eval()
    e1, e2 = head(*inputs), head(*inputs)
    torch.testing.assert_close(e1, e2, rtol=0, atol=0)  # eval: deterministic
    head.train()
    t1, t2 = head(*inputs), head(*inputs)
    assert not torch.allclose(t1, t2)  # fresh noise per call
    assert not torch.allclose(t1, e1)
    # One noise draw for the whole batch (upstream quirk): identical samples stay identical.
    torch.testing.assert_close(t1[0], t1[1], rtol=0, atol=0)
    torch.testing.assert_close(t1[0], t1[2], rtol=0, atol=0)


def test_zero_noise_std_makes_train_equal_eval():
    head = make_head(pro=True, noise=0.0)
    inputs = head_inputs(2)
    a = head.train()(*inputs)
    b = head.eval()(*inputs)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_head_rejects_wrong_number_of_layers():
    head = make_head(pro=True, blocks=3)
    vision, queries, proprio = head_inputs(1, blocks=2)
    with pytest.raises(ValueError, match="3 blocks"):
        head(vision, queries, proprio)
