"""Released-format checkpoints: save -> load round trip, strict-loading errors, the HF config.json path."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from prismatic.constants import DATASET_STATISTICS_FILE, MERGED_MODEL_FILE, VLA_CONFIG_FILE
from prismatic.models import loading
from prismatic.models.config import get_preset
from prismatic.models.loading import (
    CheckpointError,
    config_from_hf_config,
    load_vla_checkpoint,
    save_released_checkpoint,
)
from prismatic.models.vla import VLAAdapter

LENGTHS = [30, 26]
HEAD, PROPRIO = "action_head--checkpoint.pt", "proprio_projector--checkpoint.pt"


def build(config, seed=0):
    torch.manual_seed(seed)
    model = VLAAdapter(config, attn_implementation="sdpa")
    with torch.no_grad():  # make the gates non-zero so the vision path matters in the comparison
        for block in model.action_head.model.mlp_resnet_blocks:
            block.gating_factor.fill_(0.5)
    return model.eval()


@pytest.fixture
def saved(tmp_path, tiny_config, tiny_tokenizer, dataset_statistics):
    model = build(tiny_config(use_pro_version=True))
    path = save_released_checkpoint(model, tmp_path / "ckpt", tiny_tokenizer, dataset_statistics)
    return model, path


def outputs(model, batch):
    with torch.no_grad():
        return model(**{k: v for k, v in batch.items() if k != "actions"}).predicted_actions


@pytest.mark.parametrize("pro", [False, True])
def test_round_trip_gives_identical_outputs(pro, tmp_path, tiny_config, tiny_tokenizer, dataset_statistics,
                                            make_batch):
    model = build(tiny_config(use_pro_version=pro))
    out_dir = save_released_checkpoint(model, tmp_path / "run--100_chkpt", tiny_tokenizer, dataset_statistics,
                                       step=100)
    names = {p.name for p in out_dir.iterdir()}
    assert {MERGED_MODEL_FILE, "action_head--100_checkpoint.pt", "proprio_projector--100_checkpoint.pt",
            DATASET_STATISTICS_FILE, VLA_CONFIG_FILE, "tokenizer.json"} <= names
    assert [p.name for p in tmp_path.iterdir()] == ["run--100_chkpt"]  # no temp dir left behind
    assert "language_model.lm_head.weight" not in load_file(str(out_dir / MERGED_MODEL_FILE))

    loaded = load_vla_checkpoint(out_dir)
    assert not loaded.model.training
    assert loaded.config == model.config
    assert loaded.dataset_statistics == dataset_statistics
    assert loaded.processor.num_action_queries == model.config.num_action_queries
    assert loaded.processor.tokenizer.get_vocab() == tiny_tokenizer.get_vocab()
    batch = make_batch(model.config, LENGTHS)
    torch.testing.assert_close(outputs(loaded.model, batch), outputs(model, batch), rtol=0, atol=0)
    lm = loaded.model.language_model
    assert lm.lm_head.weight is lm.model.embed_tokens.weight  # still tied after loading


def test_bf16_save_and_load_dtype(tmp_path, tiny_config, tiny_tokenizer, dataset_statistics, make_batch):
    model = build(tiny_config())
    out_dir = save_released_checkpoint(model, tmp_path / "bf16", tiny_tokenizer, dataset_statistics,
                                       dtype=torch.bfloat16)
    assert all(v.dtype == torch.bfloat16 for v in load_file(str(out_dir / MERGED_MODEL_FILE)).values())
    head = torch.load(out_dir / HEAD, weights_only=True)
    assert all(v.dtype == torch.bfloat16 for v in head.values())
    loaded = load_vla_checkpoint(out_dir, dtype=torch.float32)
    assert loaded.model.action_queries.weight.dtype == torch.float32
    rounded = {k: v.to(torch.bfloat16).float() for k, v in model.state_dict().items()}
    reference = build(tiny_config())
    reference.load_state_dict(rounded)
    batch = make_batch(model.config, LENGTHS)
    torch.testing.assert_close(outputs(loaded.model, batch), outputs(reference, batch), rtol=0, atol=0)


def test_existing_directory_needs_overwrite(saved, tiny_tokenizer, dataset_statistics):
    model, path = saved
    with pytest.raises(FileExistsError, match="overwrite"):
        save_released_checkpoint(model, path, tiny_tokenizer, dataset_statistics)
    save_released_checkpoint(model, path, tiny_tokenizer, dataset_statistics, overwrite=True)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_module_prefix_is_stripped(saved, make_batch):
    model, path = saved
    head = torch.load(path / HEAD, weights_only=True)
    torch.save({f"module.{k}": v for k, v in head.items()}, path / HEAD)  # as saved from a DDP wrapper
    loaded = load_vla_checkpoint(path)
    batch = make_batch(model.config, LENGTHS)
    torch.testing.assert_close(outputs(loaded.model, batch), outputs(model, batch), rtol=0, atol=0)


def test_strict_loading_lists_every_problem(saved):
    _, path = saved
    vlm = load_file(str(path / MERGED_MODEL_FILE))
    del vlm["projector.fc2.bias"]
    vlm["language_model.model.extra.weight"] = torch.zeros(3)
    save_file(vlm, str(path / MERGED_MODEL_FILE))
    head = torch.load(path / HEAD, weights_only=True)
    head["model.fc2.weight"] = torch.zeros(5, head["model.fc2.weight"].shape[1])
    torch.save(head, path / HEAD)
    with pytest.raises(CheckpointError) as info:
        load_vla_checkpoint(path)
    message = str(info.value)
    assert "missing key(s): projector.fc2.bias" in message
    assert "unexpected key(s): language_model.model.extra.weight" in message
    assert "model.fc2.weight has shape (5, 64), model expects (7, 64)" in message
    assert len(info.value.problems) == 3


def test_head_variant_mismatch(saved):
    _, path = saved  # a Pro head
    with pytest.raises(CheckpointError, match="use_pro_version=False requested but .* holds a Pro head"):
        load_vla_checkpoint(path, use_pro_version=False)
    config = json.loads((path / VLA_CONFIG_FILE).read_text())
    config["action_head"]["use_pro_version"] = False
    (path / VLA_CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="vla_config.json says use_pro_version=False"):
        load_vla_checkpoint(path)


def test_missing_files_are_listed_together(saved):
    _, path = saved
    (path / PROPRIO).unlink()
    (path / DATASET_STATISTICS_FILE).unlink()
    with pytest.raises(FileNotFoundError) as info:
        load_vla_checkpoint(path)
    assert "proprio_projector--*checkpoint.pt" in str(info.value)
    assert DATASET_STATISTICS_FILE in str(info.value)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_vla_checkpoint(path / "nope")


def test_two_head_files_are_ambiguous(saved):
    _, path = saved
    (path / "action_head--5_checkpoint.pt").write_bytes((path / HEAD).read_bytes())
    with pytest.raises(CheckpointError, match="several action_head files"):
        load_vla_checkpoint(path)


def released_hf_config(text_config: dict, image_size: int = 224) -> dict:
    return {
        "architectures": ["OpenVLAForActionPrediction"],
        "model_type": "openvla",
        "timm_model_ids": ["vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224"],
        "image_sizes": [image_size, image_size],
        "use_fused_vision_backbone": True,
        "text_config": text_config,
        "norm_stats": {"libero_spatial_no_noops": {}},
    }


def test_released_hf_config_gives_real_size_config():
    # HF omits text_config fields equal to Qwen2Config defaults (rms_norm_eps, max_position_embeddings here).
    text = {"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
            "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936, "rope_theta": 1000000.0,
            "tie_word_embeddings": True}
    for pro, preset in ((True, "vla-adapter-pro"), (False, "vla-adapter")):
        config = config_from_hf_config(released_hf_config(text), use_pro_version=pro, num_action_queries=64,
                                       action_dim=7, proprio_dim=8)
        # Released weights: bf16 head RoPE table, upstream's evaluation normalisation of proprio (vla.py quirk 10).
        expected = get_preset(preset)
        expected.action_head.rope_dtype = "bfloat16"
        expected.zero_constant_proprio = False
        assert config == expected
    with pytest.raises(CheckpointError, match="lacks 'text_config'"):
        config_from_hf_config({"use_fused_vision_backbone": True, "timm_model_ids": [], "image_sizes": []},
                              use_pro_version=True, num_action_queries=64, action_dim=7, proprio_dim=8)


def test_released_directory_with_hf_config_json(tmp_path, tiny_config, tiny_tokenizer, dataset_statistics,
                                                make_batch, monkeypatch):
    """A released-style directory (config.json instead of vla_config.json): sizes come from config.json and
    the weights. The tiny towers' widths stand in for the timm ids' real widths."""
    config = tiny_config()
    config = dataclasses.replace(config, action_head=dataclasses.replace(config.action_head, num_heads=8))
    model = build(config)
    path = save_released_checkpoint(model, tmp_path / "released", tiny_tokenizer, dataset_statistics)
    (path / VLA_CONFIG_FILE).unlink()
    llm = config.llm
    text = {"hidden_size": llm.hidden_size, "intermediate_size": llm.intermediate_size,
            "num_hidden_layers": llm.num_hidden_layers, "num_attention_heads": llm.num_attention_heads,
            "num_key_value_heads": llm.num_key_value_heads, "vocab_size": llm.vocab_size,
            "rope_theta": llm.rope_theta, "max_position_embeddings": llm.max_position_embeddings,
            "tie_word_embeddings": True}
    (path / "config.json").write_text(json.dumps(released_hf_config(text, config.vision.image_size)))
    v = config.vision
    tiny_arch = {v.dino_model_id: (v.dino_embed_dim, v.dino_depth, v.dino_num_heads, v.patch_size),
                 v.siglip_model_id: (v.siglip_embed_dim, v.siglip_depth, v.siglip_num_heads, v.patch_size)}
    monkeypatch.setattr(loading, "timm_architecture", lambda model_id, image_size: tiny_arch[model_id])
    loaded = load_vla_checkpoint(path)
    assert loaded.config.num_action_queries == config.num_action_queries
    assert loaded.config.action_head.use_pro_version is True
    assert loaded.config.action_head.rope_dtype == "bfloat16"  # released weights: upstream's bf16 RoPE table
    for block in model.action_head.model.mlp_resnet_blocks:
        block.rope.table_dtype = "bfloat16"
    batch = make_batch(config, LENGTHS)
    torch.testing.assert_close(outputs(loaded.model, batch), outputs(model, batch), rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="requested"):
        load_vla_checkpoint(path, use_pro_version=False)
