"""Vision backbone, LLM hidden-state contract, projectors, and the real-size build on the meta device."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from prismatic.models.config import get_preset
from prismatic.models.llm import build_language_model, hidden_states_of
from prismatic.models.projector import ProprioProjector, VisionLanguageProjector
from prismatic.models.vision import FusedVisionBackbone
from prismatic.models.vla import VLAAdapter

REPO = Path(__file__).resolve().parents[2]


def manual_penultimate(tower, images):
    """Patch tokens after all blocks but the last, no final norm, prefix (cls / register) tokens dropped."""
    x = tower.norm_pre(tower._pos_embed(tower.patch_embed(images)))
    for block in tower.blocks[:-1]:
        x = block(x)
    return x[:, tower.num_prefix_tokens :]


def test_vision_backbone_features_and_layout(tiny_config):
    torch.manual_seed(0)
    cfg = tiny_config()
    backbone = FusedVisionBackbone(cfg.vision, num_images=2).eval()
    assert backbone.featurizer.num_prefix_tokens == 5  # DINOv2: cls + 4 registers
    pixels = torch.randn(3, 12, cfg.vision.image_size, cfg.vision.image_size)
    features = backbone(pixels)
    per_image = cfg.vision.patches_per_image
    assert features.shape == (3, 2 * per_image, cfg.vision.fused_dim)
    for image in range(2):
        chunk = pixels[:, 6 * image : 6 * image + 6]
        expected = torch.cat([manual_penultimate(backbone.featurizer, chunk[:, :3]),
                              manual_penultimate(backbone.fused_featurizer, chunk[:, 3:])], dim=-1)
        torch.testing.assert_close(features[:, image * per_image : (image + 1) * per_image], expected)
    with pytest.raises(ValueError, match="channels"):
        backbone(pixels[:, :6])


def test_layer_scale_is_named_scale_factor(tiny_config):
    keys = FusedVisionBackbone(tiny_config().vision, num_images=1).state_dict().keys()
    assert "featurizer.blocks.0.ls1.scale_factor" in keys and "featurizer.blocks.0.ls2.scale_factor" in keys
    assert not any(k.endswith("gamma") for k in keys)
    assert any(k.startswith("fused_featurizer.attn_pool.") for k in keys)  # kept for the released key layout


def test_llm_hidden_states_contract(tiny_config):
    """Index 0 = embedding output, index i = layer i output, last = final RMS norm of the last layer."""
    torch.manual_seed(0)
    cfg = tiny_config().llm
    lm = build_language_model(cfg, "sdpa").eval()
    embeds = torch.randn(2, 11, cfg.hidden_size)
    mask = torch.ones(2, 11, dtype=torch.bool)
    mask[1, 7:] = False
    layer_outputs = []
    hooks = [layer.register_forward_hook(lambda mod, args, out: layer_outputs.append(out[0] if isinstance(out, tuple)
                                                                                     else out))
             for layer in lm.model.layers]
    hidden = hidden_states_of(lm, embeds, mask)
    for hook in hooks:
        hook.remove()
    assert len(hidden) == cfg.num_hidden_layers + 1
    torch.testing.assert_close(hidden[0], embeds)
    for i in range(1, cfg.num_hidden_layers):
        torch.testing.assert_close(hidden[i], layer_outputs[i - 1])
    torch.testing.assert_close(hidden[-1], lm.model.norm(layer_outputs[-1]))
    # Causal: the prefix of a row does not see later tokens.
    changed = embeds.clone()
    changed[:, 5:] += 1
    torch.testing.assert_close(hidden_states_of(lm, changed, mask)[-1][:, :5], hidden[-1][:, :5])


def test_projectors():
    proj = VisionLanguageProjector((10, 40, 8, 8))
    assert proj(torch.randn(2, 5, 10)).shape == (2, 5, 8)
    assert set(proj.state_dict()) == {f"fc{i}.{p}" for i in (1, 2, 3) for p in ("weight", "bias")}
    proprio = ProprioProjector(8, 16)
    assert proprio(torch.randn(3, 8)).shape == (3, 1, 16)
    assert set(proprio.state_dict()) == {f"fc{i}.{p}" for i in (1, 2) for p in ("weight", "bias")}


def test_real_size_builds_on_meta_with_released_key_layout():
    with torch.device("meta"):
        model = VLAAdapter(get_preset("vla-adapter-pro"), attn_implementation="sdpa")
    vlm = model.merged_vlm_state_dict()
    assert len(vlm) == 982
    assert "language_model.lm_head.weight" not in vlm
    assert vlm["action_queries.weight"].shape == (64, 896)
    assert vlm["projector.fc1.weight"].shape == (8704, 2176)
    assert vlm["language_model.model.embed_tokens.weight"].shape == (151936, 896)
    assert "vision_backbone.featurizer.blocks.23.ls2.scale_factor" in vlm
    assert "vision_backbone.fused_featurizer.blocks.26.mlp.fc2.bias" in vlm
    assert len(model.action_head.model.mlp_resnet_blocks) == 24
    assert sum(p.numel() for p in model.action_head.parameters()) == 217_864_223
    assert sum(p.numel() for p in model.proprio_projector.parameters()) == 811_776


def test_model_summary_script_counts(monkeypatch):
    spec = importlib.util.spec_from_file_location("model_summary", REPO / "vla-scripts" / "model_summary.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "model_summary", module)  # dataclasses resolve annotations through it
    spec.loader.exec_module(module)
    rows = dict(module.summarize(module.SummaryConfig(preset="vla-adapter")))
    assert rows["action_head (original)"] == 102_129_695
    assert rows["tensors: merged VLM state dict"] == 982
    with pytest.raises(ValueError, match="--preset"):
        module.SummaryConfig(preset="huge")
