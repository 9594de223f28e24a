"""The anchor on the real VLAAdapter ("tiny" preset), LoRA as the trainer applies it and full fine-tuning."""

import pytest
import torch

from prismatic.models.config import get_preset
from prismatic.models.vla import VLAAdapter
from prismatic.training.craft.anchor import AnchorModel
from prismatic.training.craft.config import CraftConfig
from prismatic.training.craft.features import pool_features, retention_loss
from prismatic.training.lora import apply_lora


def _model(seed: int = 0) -> VLAAdapter:
    torch.manual_seed(seed)
    return VLAAdapter(get_preset("tiny"), attn_implementation="sdpa")


def _batch(config, lengths=(20, 23), seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    b, width = len(lengths), max(lengths) + 2
    mask = torch.arange(width).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)  # right-padded
    size = config.vision.image_size
    return {
        "input_ids": torch.randint(3, config.llm.vocab_size, (b, width), generator=g) * mask,
        "attention_mask": mask,
        "pixel_values": torch.randn(b, 6 * config.num_images_in_input, size, size, generator=g),
        "proprio": torch.rand(b, config.proprio_dim, generator=g) * 2 - 1,
        "actions": torch.rand(b, config.num_actions_chunk, config.action_dim, generator=g) * 2 - 1,
    }


def _reference(model, batch, layer):
    model.eval()
    with torch.no_grad():
        out = model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["proprio"],
                    output_craft_features=True, craft_layer_idx=layer)
    return pool_features(out.raw_latent_features, out.action_query_features, "mean")


def _train(model, batch, layer, steps=3):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    model.train()
    for _ in range(steps):
        out = model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["proprio"],
                    actions=batch["actions"], output_craft_features=True, craft_layer_idx=layer)
        loss = out.loss + out.raw_latent_features.pow(2).mean() + out.action_query_features.pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("use_lora", [True, False], ids=["lora", "full"])
def test_anchor_matches_a_fresh_model_before_and_after_training(use_lora):
    config = get_preset("tiny")
    layer = CraftConfig().resolve_anchor_layer(config.llm.num_hidden_layers)
    batch = _batch(config)
    model = _model(seed=0)
    if use_lora:
        model = apply_lora(model, rank=4, alpha=8, dropout=0.0)
    anchor = AnchorModel.from_initial_state(model, layer_idx=layer)
    if use_lora:
        assert anchor.mode == "disable_adapters" and set(anchor.snapshot) == {"action_queries.weight"}
    else:
        assert anchor.mode == "snapshot"
        assert not any(n.startswith(("action_head.", "proprio_projector.")) for n in anchor.snapshot)
    fresh = _reference(_model(seed=0), batch, layer)  # same initial weights, never wrapped or trained

    before = anchor.anchor_features(model, batch)
    assert torch.allclose(before.raw, fresh.raw, atol=1e-6) and torch.allclose(before.aq, fresh.aq, atol=1e-6)
    _train(model, batch, layer)
    after = anchor.anchor_features(model, batch)
    assert torch.allclose(after.raw, fresh.raw, atol=1e-6) and torch.allclose(after.aq, fresh.aq, atol=1e-6)

    current = _reference(model, batch, layer)
    drift = retention_loss(current, after, "concat")
    assert float(drift.loss) > 1e-6  # training moved Φ(θ) away from Φ(θ0)
    assert float(retention_loss(before, after, "concat").loss) < 1e-10


@pytest.mark.parametrize("order", ["current_first", "anchor_first"])
def test_anchor_in_one_autocast_region_is_independent_of_the_weight_cache(order):
    """Autocast caches the bf16 cast of every fp32 Parameter for the whole region; the anchor forward swaps θ0
    into the same Parameters (full fine-tuning: every weight). In ONE region, the anchor must still see θ0 and
    the training forward θ, in either order."""
    config = get_preset("tiny")
    layer = CraftConfig().resolve_anchor_layer(config.llm.num_hidden_layers)
    batch = _batch(config)
    model = _model(seed=0)
    anchor = AnchorModel.from_initial_state(model, layer_idx=layer)
    assert anchor.mode == "snapshot"
    _train(model, batch, layer)
    model.eval()  # deterministic current features (no head noise); the anchor forward is eval anyway
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "proprio")}

    def current():
        out = model(**inputs, output_craft_features=True, craft_layer_idx=layer)
        return pool_features(out.raw_latent_features, out.action_query_features, "mean")

    with torch.autocast("cpu", dtype=torch.bfloat16):  # separate regions: the reference values
        expected_anchor = anchor.anchor_features(model, batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected_current = current()
    assert not torch.allclose(expected_anchor.aq, expected_current.aq, atol=1e-3)  # θ really moved
    with torch.autocast("cpu", dtype=torch.bfloat16):
        if order == "current_first":
            cur, anc = current(), anchor.anchor_features(model, batch)
        else:
            anc, cur = anchor.anchor_features(model, batch), current()
    for got, want in ((anc, expected_anchor), (cur, expected_current)):
        assert torch.equal(got.raw, want.raw) and torch.equal(got.aq, want.aq)
