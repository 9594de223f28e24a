"""Training randomness as a function of (seed, step, global sample index), never of the rank layout.

A run must give the same weights on 1 or N processes and with any gradient-accumulation split, and a
checkpoint must continue on another world size (docs: multi-GPU). So no random draw of training may come
from a per-process RNG stream, whose position depends on how many samples this process handled:

    data order, mixture, shuffle   seeded by (seed, purpose); one global stream (vla/datasets/pipeline.py)
    image augmentation             stateless, seeded by (seed, global sample index k)  (pipeline.py)
    action-head noise              `head_noise(seed, step)`: one draw per optimizer step, shared by the whole
                                   GLOBAL batch (upstream shares one draw per batch, quirk 4 in models/vla.py;
                                   the global batch is the batch that is invariant)
    LoRA dropout                   `KeyedDropout`: the mask of sample k is a hash of (seed, k, layer, position)

Draws are made on the CPU from counter-seeded generators, so they are also the same on CPU and GPU.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib

import torch
from torch import nn

_MASK32 = 0xFFFFFFFF
_HASH_MULTIPLIER = 0x45D9F3B  # < 2^27: products of 32-bit values stay below 2^59 (no int64 overflow)


def stable_seed(*parts: object) -> int:
    """A 63-bit integer from the parts, identical in every process and Python run (unlike hash())."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def head_noise(seed: int, step: int, chunk: int, latent_dim: int) -> torch.Tensor:
    """The standard-normal draw (chunk, latent_dim) float32 that the action head adds (x its std) to the zero
    action latent at optimizer step `step` (0-based), the same for every sample of the global batch."""
    generator = torch.Generator().manual_seed(stable_seed("head-noise", seed, step))
    return torch.randn(chunk, latent_dim, generator=generator, dtype=torch.float32)


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mix of int64 values in [0, 2^32) (elementwise; exact on every device)."""
    x = (((x >> 16) ^ x) * _HASH_MULTIPLIER) & _MASK32
    x = (((x >> 16) ^ x) * _HASH_MULTIPLIER) & _MASK32
    return (x >> 16) ^ x


# The global sample indices (B,) int64 of the rows being forwarded, set by `dropout_keys`.
_SAMPLE_KEYS: contextvars.ContextVar[torch.Tensor | None] = contextvars.ContextVar(
    "prismatic_dropout_sample_keys", default=None)


@contextlib.contextmanager
def dropout_keys(sample_indices: torch.Tensor | None):
    """Within the block, every `KeyedDropout` draws the mask of row i from sample_indices[i] (and its seed)."""
    token = _SAMPLE_KEYS.set(sample_indices)
    try:
        yield
    finally:
        _SAMPLE_KEYS.reset(token)


class KeyedDropout(nn.Module):
    """Dropout whose mask for row i of the batch is a pure function of (seed, global sample index of row i,
    this layer, element position): the same whichever rank, micro-batch or padded length the row is in.

    Input (B, ..., F), or (B m, ..., F) with the m rows of each sample together (the vision towers see the
    m images of a sample as consecutive rows): the element at flat position c within row r keeps with
    probability 1 - p where hash(key_r ^ hash(c)) / 2^32 >= p, key_r = a 32-bit hash of (seed, layer, k of
    r's sample, r mod m). Positions are counted within the row from its start, so right padding (which only
    appends positions) never moves them.
    Outside `dropout_keys` (no keys known) training mode is an error rather than an unreproducible draw.
    """

    def __init__(self, p: float, seed: int, layer_name: str) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.seed = seed
        self.layer_name = layer_name
        self._layer_key = stable_seed("lora-dropout", seed, layer_name) & _MASK32

    def extra_repr(self) -> str:
        return f"p={self.p}, seed={self.seed}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        sample_indices = _SAMPLE_KEYS.get()
        if sample_indices is None:
            raise RuntimeError(f"KeyedDropout({self.layer_name}) in training mode outside dropout_keys(...): the "
                               "trainer must say which global samples are being forwarded")
        if sample_indices.dim() != 1 or len(sample_indices) == 0 or x.shape[0] % len(sample_indices):
            raise ValueError(f"KeyedDropout({self.layer_name}): {tuple(sample_indices.shape)} sample keys for a "
                             f"batch of {x.shape[0]}")
        # key of row r from (this layer's key, its sample's k, r's place among that sample's rows), on the
        # device: no host round trip per layer.
        per_sample = x.shape[0] // len(sample_indices)
        k = sample_indices.to(device=x.device, dtype=torch.int64).repeat_interleave(per_sample)
        sub = torch.arange(per_sample, device=x.device, dtype=torch.int64).repeat(len(sample_indices))
        row_keys = _hash32(_hash32(_hash32((k & _MASK32) ^ self._layer_key) ^ ((k >> 32) & _MASK32)) ^ sub)
        row_numel = x[0].numel()
        if row_numel > _MASK32:
            raise ValueError(f"KeyedDropout({self.layer_name}): rows of {row_numel} elements exceed 2^32")
        # Flat position of each element within its row, laid out like x[0] (row-major over the trailing dims).
        positions = torch.arange(row_numel, device=x.device, dtype=torch.int64).view(x.shape[1:])
        bits = _hash32(row_keys.view(-1, *([1] * (x.dim() - 1))) ^ _hash32(positions))
        keep = bits >= int(self.p * 2**32)  # P(keep) = 1 - p
        return x * keep.to(x.dtype) / (1.0 - self.p)
