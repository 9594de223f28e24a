"""Base-VLM loading from a synthetic Prismatic run directory (native `.pt` format) at tiny size."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from prismatic.models.loading import CheckpointError, load_base_vlm
from prismatic.models.vla import VLAAdapter

CKPT = "step-000020-epoch-01-loss=0.5268.pt"


def timm_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our vision key names back to timm's (LayerScale `gamma`)."""
    return {k.removesuffix(".scale_factor") + ".gamma" if k.endswith(".scale_factor") else k: v
            for k, v in state.items()}


def native_checkpoint(source: VLAAdapter, with_vision: bool) -> dict:
    projector = {}
    for idx, name in ((0, "fc1"), (2, "fc2"), (4, "fc3")):
        layer = getattr(source.projector, name)
        projector[f"projector.{idx}.weight"], projector[f"projector.{idx}.bias"] = layer.weight, layer.bias
    model = {
        "projector": projector,
        # Includes llm.lm_head.weight, stored separately (equal to the embeddings: Qwen2.5 ties them).
        "llm_backbone": {f"llm.{k}": v.clone() for k, v in source.language_model.state_dict().items()},
    }
    if with_vision:
        vb = source.vision_backbone
        model["vision_backbone"] = {
            **{f"dino_featurizer.{k}": v for k, v in timm_keys(vb.featurizer.state_dict()).items()},
            **{f"siglip_featurizer.{k}": v for k, v in timm_keys(vb.fused_featurizer.state_dict()).items()},
        }
    return {"model": model}


@pytest.fixture
def source(tiny_config):
    torch.manual_seed(1)
    return VLAAdapter(tiny_config(), attn_implementation="sdpa")


def write_run(tmp_path, source, with_vision=True, name=CKPT):
    (tmp_path / "checkpoints").mkdir(parents=True, exist_ok=True)
    torch.save(native_checkpoint(source, with_vision), tmp_path / "checkpoints" / name)
    return tmp_path


def assert_vlm_equal(loaded: VLAAdapter, source: VLAAdapter, skip=("action_queries.weight",)):
    ours, theirs = loaded.merged_vlm_state_dict(), source.merged_vlm_state_dict()
    for key, value in theirs.items():
        if key not in skip:
            torch.testing.assert_close(ours[key], value, rtol=0, atol=0, msg=key)


def test_native_checkpoint_with_vision_entry(tmp_path, source, tiny_config):
    run = write_run(tmp_path, source, with_vision=True)
    torch.manual_seed(7)
    loaded = load_base_vlm(run, tiny_config(), attn_implementation="sdpa")
    assert_vlm_equal(loaded, source)
    assert loaded.language_model.lm_head.weight is loaded.language_model.model.embed_tokens.weight
    # Queries / head / proprio projector are not part of the base VLM: they keep their fresh init.
    assert not torch.equal(loaded.action_queries.weight, source.action_queries.weight)


def tower_files(directory, config, img_size):
    """timm-format tower weights (gamma names) at another resolution, as timm's pretrained files are."""
    directory.mkdir(parents=True, exist_ok=True)
    v = config.vision
    towers = {}
    for model_id, dim, depth, heads in ((v.dino_model_id, v.dino_embed_dim, v.dino_depth, v.dino_num_heads),
                                        (v.siglip_model_id, v.siglip_embed_dim, v.siglip_depth,
                                         v.siglip_num_heads)):
        tower = timm.create_model(model_id, pretrained=False, num_classes=0, img_size=img_size, embed_dim=dim,
                                  depth=depth, num_heads=heads)
        towers[model_id] = tower.state_dict()
        save_file({k: t.contiguous() for k, t in towers[model_id].items()}, str(directory / f"{model_id}.safetensors"))
    return towers


def test_vision_from_timm_files_in_vision_subdir(tmp_path, source, tiny_config):
    config = tiny_config()
    run = write_run(tmp_path, source, with_vision=False)
    towers = tower_files(run / "vision", config, img_size=70)  # 5x5 grid; the model uses 4x4
    loaded = load_base_vlm(run, config)
    assert_vlm_equal(loaded, source, skip=("action_queries.weight",) + tuple(
        k for k in source.merged_vlm_state_dict() if k.startswith("vision_backbone.")))
    dino = towers[config.vision.dino_model_id]
    torch.testing.assert_close(loaded.vision_backbone.featurizer.blocks[1].ls2.scale_factor,
                               dino["blocks.1.ls2.gamma"], rtol=0, atol=0)
    assert loaded.vision_backbone.featurizer.pos_embed.shape == (1, 16, config.vision.dino_embed_dim)  # resampled


def test_vision_from_local_hf_cache(tmp_path, source, tiny_config):
    config = tiny_config()
    run = write_run(tmp_path / "run", source, with_vision=False)
    cache = tmp_path / "hf_cache"
    staging = tmp_path / "staging"
    towers = tower_files(staging, config, img_size=56)
    for model_id, repo in ((config.vision.dino_model_id, "vit_large_patch14_reg4_dinov2.lvd142m"),
                           (config.vision.siglip_model_id, "vit_so400m_patch14_siglip_224.webli")):
        repo_dir = cache / f"models--timm--{repo}"
        (repo_dir / "refs").mkdir(parents=True)
        (repo_dir / "refs" / "main").write_text("0123abcd")
        snapshot = repo_dir / "snapshots" / "0123abcd"
        snapshot.mkdir(parents=True)
        (staging / f"{model_id}.safetensors").rename(snapshot / "model.safetensors")
    loaded = load_base_vlm(run, config, hf_cache_dir=cache)
    torch.testing.assert_close(loaded.vision_backbone.fused_featurizer.pos_embed,
                               towers[config.vision.siglip_model_id]["pos_embed"], rtol=0, atol=0)


def test_missing_vision_weights_name_what_is_missing(tmp_path, source, tiny_config):
    run = write_run(tmp_path, source, with_vision=False)
    with pytest.raises(FileNotFoundError) as info:
        load_base_vlm(run, tiny_config(), hf_cache_dir=tmp_path / "empty_cache")
    message = str(info.value)
    assert "vit_large_patch14_reg4_dinov2.lvd142m" in message and "vit_so400m_patch14_siglip_224" in message
    assert str(run / "vision") in message


def test_highest_step_is_used(tmp_path, source, tiny_config):
    older = VLAAdapter(tiny_config(), attn_implementation="sdpa")
    write_run(tmp_path, older, name="step-000010-epoch-00-loss=0.7280.pt")
    write_run(tmp_path, source, name=CKPT)
    assert_vlm_equal(load_base_vlm(tmp_path, tiny_config()), source)


def test_native_format_problems_are_reported(tmp_path, source, tiny_config):
    checkpoint = native_checkpoint(source, with_vision=True)
    checkpoint["model"]["llm_backbone"]["llm.model.layers.0.extra.weight"] = torch.zeros(2)
    checkpoint["model"]["llm_backbone"]["llm.lm_head.weight"] = torch.zeros_like(
        checkpoint["model"]["llm_backbone"]["llm.lm_head.weight"])
    del checkpoint["model"]["projector"]["projector.4.bias"]
    (tmp_path / "checkpoints").mkdir()
    torch.save(checkpoint, tmp_path / "checkpoints" / CKPT)
    with pytest.raises(CheckpointError) as info:
        load_base_vlm(tmp_path, tiny_config())
    message = str(info.value)
    assert "language_model.model.layers.0.extra.weight" in message
    assert "lm_head.weight differs" in message
    assert "projector.fc3.bias" in message
    torch.save({"state_dict": {}}, tmp_path / "checkpoints" / CKPT)
    with pytest.raises(CheckpointError, match='"projector" and "llm_backbone"'):
        load_base_vlm(tmp_path, tiny_config())
    with pytest.raises(FileNotFoundError, match="checkpoints"):
        load_base_vlm(tmp_path / "checkpoints", tiny_config())
