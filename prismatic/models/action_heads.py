"""The Bridge-Attention policy: an action head that reads every LLM layer (facts §2.7).

    latent (B, chunk, A*D) = 0 (+ noise in training)  --LN, fc1, ReLU-->  x (B, chunk, D)
    for block i in 0..n-1:   x = block_i(x, vision_i, queries_i, proprio)      (i-th entry = LLM layer i+1)
    actions (B, chunk, A) = fc2(LN(x))

Each block attends from the chunk positions over three key sets with ONE joint softmax:

    logits = [ q.k_self | q.k_cond | tanh(g) * q.k_vision ] / sqrt(head_dim)
    out    = softmax(logits) @ [ v_self | v_cond | v_vision ]
    x      = ReLU(Linear(LayerNorm(o_proj(out) + x)))

where cond = [action-query states ; proprio token] (Q + 1 tokens) and vision = the LLM states at the vision
positions (`config.num_patches` tokens; nothing here assumes 512). The original block shares one K/V
projection for all three sources; the Pro block has separate K/V per source plus RoPE per source and keeps
an unused `film_gen` layer so the released Pro files load strictly.

Why the upstream peculiarities (logit gating, zero latent + training noise, the RoPE layout, post-ReLU block
output) are kept: see "Upstream quirks reproduced" in `prismatic.models.vla` (the one place they are listed).

Key layout (released files, after stripping "module."): `model.layer_norm1`, `model.fc1`, `model.layer_norm2`,
`model.fc2`, `model.mlp_resnet_blocks.{i}.{ffn.0, ffn.1, q_proj, o_proj, gating_factor, ...}` with
`k_proj, v_proj` (original) or `k_self, v_self, k_adapter, v_adapter, k_task, v_task, film_gen.0` (Pro).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from prismatic.models.precision import Float32BuffersMixin

ROPE_BASE = 10000.0
# Arithmetic the Pro head's RoPE angle table is computed in (`ActionHeadConfig.rope_dtype`).
ROPE_TABLE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, L, D) -> (B, H, L, D / H)."""
    b, length, dim = x.shape
    return x.view(b, length, num_heads, dim // num_heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, L, d) -> (B, L, H * d)."""
    b, h, length, d = x.shape
    return x.transpose(1, 2).reshape(b, length, h * d)


class RotaryEmbedding(Float32BuffersMixin, nn.Module):
    """Rotary position embedding with the upstream Pro head's channel layout (quirk 5 in `vla.py`).

    The angle table is laid out half-split (`cat([freqs, freqs])`), while the rotation pairs neighbouring
    channels (2k, 2k+1): channel 2k gets `x*cos - x[2k+1]*sin`, channel 2k+1 gets `x*cos + x[2k]*sin`,
    each with the angle of its own table column.

    `table_dtype` is the arithmetic of the angle table (quirk 10 in `vla.py`):
      float32   exact positions and angles (heads trained here: the trainer keeps fp32 head weights).
      bfloat16  upstream's table: its head runs in bf16, so positions, frequencies, angles and cos/sin are
                all bf16 (positions 257..511 are rounded, e.g. 257 -> 256). The released Pro weights were
                trained with this table.
    The `inv_freq` buffer itself stays fp32 in every cast; the table dtype alone decides the rounding.
    """

    float32_buffers = ("inv_freq",)

    def __init__(self, head_dim: int, base: float = ROPE_BASE, table_dtype: str = "float32") -> None:
        super().__init__()
        if head_dim % 2 != 0:
            raise ValueError(f"RoPE needs an even head dim, got {head_dim}")
        if table_dtype not in ROPE_TABLE_DTYPES:
            raise ValueError(f"RoPE table dtype must be one of {sorted(ROPE_TABLE_DTYPES)}, got {table_dtype!r}")
        self.table_dtype = table_dtype
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # not in the released files

    def angles(self, length: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of shape (length, head_dim) for positions 0..length-1, cast to `dtype`."""
        arithmetic = ROPE_TABLE_DTYPES[self.table_dtype]
        positions = torch.arange(length, device=device, dtype=torch.float32).to(arithmetic)
        inv_freq = self.inv_freq.to(device=device, dtype=arithmetic)
        freqs = positions[:, None] * inv_freq[None, :]  # (L, head_dim / 2), rounded to `arithmetic`
        table = torch.cat([freqs, freqs], dim=-1)  # (L, head_dim)
        return table.cos().to(dtype), table.sin().to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, H, L, head_dim) rotated with positions 0..L-1."""
        cos, sin = self.angles(x.shape[-2], x.device, x.dtype)
        even, odd = x[..., 0::2], x[..., 1::2]
        rotated = torch.stack((-odd, even), dim=-1).reshape_as(x)  # pairs (2k, 2k+1) -> (-x_{2k+1}, x_{2k})
        return x * cos + rotated * sin


def _cond_tokens(queries: torch.Tensor, proprio: torch.Tensor | None) -> torch.Tensor:
    """Action-query states with the proprio token appended: (B, Q (+1), D)."""
    return queries if proprio is None else torch.cat([queries, proprio], dim=1)


def _joint_attention(
    q: torch.Tensor,
    keys: Sequence[torch.Tensor],
    values: Sequence[torch.Tensor],
    gate: torch.Tensor,
) -> torch.Tensor:
    """One softmax over [self | cond | vision] keys, vision logits multiplied by `gate` = tanh(g).

    Scaling the vision logits by a scalar equals scaling the vision keys by it, so the whole thing is one
    scaled-dot-product attention over concatenated keys (scale 1/sqrt(head_dim), applied after gating).
    q: (B, H, T, d); keys/values: three (B, H, L_s, d) tensors -> (B, H, T, d).
    """
    k_self, k_cond, k_vision = keys
    k = torch.cat([k_self, k_cond, k_vision * gate.to(k_vision.dtype)], dim=2)
    v = torch.cat(list(values), dim=2)
    return F.scaled_dot_product_attention(q, k, v)


class BridgeAttentionBlock(nn.Module):
    """Original block: q/k/v/o projections shared by all sources, no positional encoding."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.ffn = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.ReLU())
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.o_proj = nn.Linear(dim, dim)
        self.gating_factor = nn.Parameter(torch.zeros(1))  # tanh(0) = 0: vision logits start at 0

    def forward(
        self, x: torch.Tensor, vision: torch.Tensor, queries: torch.Tensor, proprio: torch.Tensor | None
    ) -> torch.Tensor:
        """x (B, T, D), vision (B, P, D), queries (B, Q, D), proprio (B, 1, D) | None -> (B, T, D)."""
        cond = _cond_tokens(queries, proprio)
        h = self.num_heads
        q = _split_heads(self.q_proj(x), h)
        sources = (x, cond, vision)
        keys = [_split_heads(self.k_proj(s), h) for s in sources]
        values = [_split_heads(self.v_proj(s), h) for s in sources]
        attended = _merge_heads(_joint_attention(q, keys, values, torch.tanh(self.gating_factor)))
        return self.ffn(self.o_proj(attended) + x)


class BridgeAttentionBlockPro(nn.Module):
    """Pro block: separate K/V per source, RoPE per source on q / keys (values are not rotated)."""

    def __init__(self, dim: int, num_heads: int, rope_dtype: str = "float32") -> None:
        super().__init__()
        self.num_heads = num_heads
        self.ffn = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.ReLU())
        self.q_proj = nn.Linear(dim, dim)
        self.k_self = nn.Linear(dim, dim)
        self.v_self = nn.Linear(dim, dim)
        # "adapter" = action-query states + proprio, "task" = vision states (upstream's names, kept for keys).
        self.k_adapter = nn.Linear(dim, dim)
        self.v_adapter = nn.Linear(dim, dim)
        self.k_task = nn.Linear(dim, dim)
        self.v_task = nn.Linear(dim, dim)
        self.o_proj = nn.Linear(dim, dim)
        self.gating_factor = nn.Parameter(torch.zeros(1))
        self.rope = RotaryEmbedding(dim // num_heads, table_dtype=rope_dtype)
        # Never used in forward; present only so the released Pro files load strictly (quirk 6 in `vla.py`).
        self.film_gen = nn.Sequential(nn.Linear(dim, 2 * dim))

    def forward(
        self, x: torch.Tensor, vision: torch.Tensor, queries: torch.Tensor, proprio: torch.Tensor | None
    ) -> torch.Tensor:
        """x (B, T, D), vision (B, P, D), queries (B, Q, D), proprio (B, 1, D) | None -> (B, T, D)."""
        cond = _cond_tokens(queries, proprio)
        h = self.num_heads
        # Each source has its own positions 0..L_s-1.
        q = self.rope(_split_heads(self.q_proj(x), h))
        keys = [
            self.rope(_split_heads(self.k_self(x), h)),
            self.rope(_split_heads(self.k_adapter(cond), h)),
            self.rope(_split_heads(self.k_task(vision), h)),
        ]
        values = [
            _split_heads(self.v_self(x), h),
            _split_heads(self.v_adapter(cond), h),
            _split_heads(self.v_task(vision), h),
        ]
        attended = _merge_heads(_joint_attention(q, keys, values, torch.tanh(self.gating_factor)))
        return self.ffn(self.o_proj(attended) + x)


class BridgeAttentionPolicy(nn.Module):
    """Stem (LN, fc1, ReLU), one Bridge-Attention block per LLM layer, output LN + fc2 (upstream `MLPResNet`)."""

    def __init__(
        self, llm_dim: int, action_dim: int, num_blocks: int, num_heads: int, use_pro_version: bool,
        rope_dtype: str = "float32",
    ) -> None:
        super().__init__()
        latent_dim = llm_dim * action_dim  # 6272 at real size
        self.layer_norm1 = nn.LayerNorm(latent_dim)
        self.fc1 = nn.Linear(latent_dim, llm_dim)
        if use_pro_version:
            blocks = (BridgeAttentionBlockPro(llm_dim, num_heads, rope_dtype) for _ in range(num_blocks))
        else:
            blocks = (BridgeAttentionBlock(llm_dim, num_heads) for _ in range(num_blocks))
        self.mlp_resnet_blocks = nn.ModuleList(blocks)
        self.layer_norm2 = nn.LayerNorm(llm_dim)
        self.fc2 = nn.Linear(llm_dim, action_dim)

    def forward(
        self,
        latent: torch.Tensor,
        vision_states: Sequence[torch.Tensor],
        query_states: Sequence[torch.Tensor],
        proprio: torch.Tensor | None,
    ) -> torch.Tensor:
        """latent (B, chunk, A*D) -> actions (B, chunk, A); entry i of the state lists feeds block i."""
        x = F.relu(self.fc1(self.layer_norm1(latent)))  # (B, chunk, D)
        for block, vision, queries in zip(self.mlp_resnet_blocks, vision_states, query_states, strict=True):
            x = block(x, vision, queries, proprio)
        return self.fc2(self.layer_norm2(x))


class BridgeAttentionActionHead(nn.Module):
    """L1-regression action head: zero action latent (+ training noise) through the Bridge-Attention policy."""

    def __init__(
        self,
        llm_dim: int,
        action_dim: int,
        num_actions_chunk: int,
        num_blocks: int,
        num_heads: int,
        use_pro_version: bool,
        train_noise_std: float,
        rope_dtype: str = "float32",
    ) -> None:
        super().__init__()
        self.llm_dim = llm_dim
        self.action_dim = action_dim
        self.num_actions_chunk = num_actions_chunk
        self.num_blocks = num_blocks
        self.use_pro_version = use_pro_version
        self.train_noise_std = train_noise_std
        self.model = BridgeAttentionPolicy(llm_dim, action_dim, num_blocks, num_heads, use_pro_version, rope_dtype)

    def initial_latent(self, batch_size: int, device: torch.device, dtype: torch.dtype,
                       noise: torch.Tensor | None = None) -> torch.Tensor:
        """The action latent the policy starts from: zeros, plus N(0, std^2) noise in training mode.

        One noise draw of shape (chunk, A*D) is shared by the whole batch (quirk 4 in `vla.py`). `noise`: that
        standard-normal draw, given by the trainer (`prismatic.training.randomness.head_noise`, one per global
        batch, so the result does not depend on the number of processes); None draws it from torch's RNG."""
        shape = (self.num_actions_chunk, self.action_dim * self.llm_dim)
        latent = torch.zeros(batch_size, *shape, device=device, dtype=dtype)
        if self.training and self.train_noise_std > 0:
            if noise is None:
                noise = torch.randn(*shape, device=device, dtype=dtype)
            elif tuple(noise.shape) != shape:
                raise ValueError(f"head noise has shape {tuple(noise.shape)}, expected (chunk, A*D) = {shape}")
            latent = latent + self.train_noise_std * noise.to(device=device, dtype=dtype)
        return latent

    def forward(
        self,
        vision_states: Sequence[torch.Tensor],
        query_states: Sequence[torch.Tensor],
        proprio_token: torch.Tensor | None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict a normalised action chunk.

        vision_states: num_blocks tensors (B, P, D); query_states: num_blocks tensors (B, Q, D) (entry i is
        read by block i); proprio_token: (B, 1, D) or None; noise: (chunk, A*D) or None (`initial_latent`).
        Returns (B, chunk, action_dim).
        """
        if len(vision_states) != self.num_blocks or len(query_states) != self.num_blocks:
            raise ValueError(
                f"action head has {self.num_blocks} blocks but got {len(vision_states)} vision and "
                f"{len(query_states)} query state tensors"
            )
        first = query_states[0]
        latent = self.initial_latent(first.shape[0], first.device, first.dtype, noise)
        return self.model(latent, vision_states, query_states, proprio_token)
