"""Host reads of device values: none in the model's token layout (it runs in every forward, the anchor's too)."""

import pytest
import torch

from prismatic.models.config import get_preset
from prismatic.models.vla import VLAAdapter

READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__")


def test_token_layout_reads_nothing_back(monkeypatch):
    config = get_preset("tiny")
    model = VLAAdapter(config, attn_implementation="sdpa")
    q, p = config.num_action_queries, config.num_patches
    lengths = torch.tensor([q + 5, q + 9])
    mask = torch.arange(q + 11).unsqueeze(0) < lengths.unsqueeze(1)

    def boom(*_args, **_kwargs):
        raise AssertionError("host read of a device value in token_layout")

    for name in READS:
        monkeypatch.setattr(torch.Tensor, name, boom)
    monkeypatch.setattr(torch, "equal", boom)
    layout = model.token_layout(mask)
    # Bad masks are still errors, named as before.
    with pytest.raises(ValueError, match="right-padded"):
        model.token_layout(mask.flip(1))
    with pytest.raises(ValueError, match="num_action_queries"):
        model.token_layout(torch.ones(1, q + 1, dtype=torch.bool))
    monkeypatch.undo()
    expected = torch.stack([torch.arange(n - q, n) for n in lengths.tolist()]) + p
    assert torch.equal(layout.query_positions, expected)
    assert torch.equal(layout.head_query_positions, expected - 1)
