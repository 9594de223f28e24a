"""Buffers that must stay float32 whatever dtype the model is cast to.

Rotary frequencies are the case: `model.to(torch.bfloat16)` (and `load_vla_checkpoint(..., dtype=bf16)`,
`.bfloat16()`, `.half()`) cast every floating buffer, and a bf16 `inv_freq` (8 mantissa bits) turns the
angle `position * inv_freq` at position 1000 into an error of several radians. Upstream's Qwen2
(transformers 4.40) built its cos/sin cache from fp32 frequencies before any cast, so the released weights
were trained with fp32 LLM angles.

`Float32BuffersMixin._apply` lets the cast happen (device moves included) and then puts back the float32
original of each listed buffer on the new device, so no precision is lost in a round trip either.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


class Float32BuffersMixin(nn.Module):
    """Mix in BEFORE the nn.Module subclass: `class X(Float32BuffersMixin, SomeModule)`."""

    # Names of the buffers (on this module itself) that are kept float32 in every `_apply`.
    float32_buffers: tuple[str, ...] = ()

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True):
        originals = {name: self._buffers.get(name) for name in self.float32_buffers}
        super()._apply(fn, recurse)
        for name, old in originals.items():
            new = self._buffers.get(name)
            if old is None or new is None or new.dtype == torch.float32:
                continue
            if old.dtype == torch.float32 and not old.is_meta:
                # The cast changed the dtype: redo only the device move, from the exact fp32 values.
                self._buffers[name] = old.to(device=new.device)
            else:
                self._buffers[name] = new.to(torch.float32)
        return self
