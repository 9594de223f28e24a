"""Typed model configuration for the VLA-Adapter model, with named presets.

Every size in the model comes from here. Derived quantities (head blocks = LLM layers, number of
vision tokens, projector widths) are properties, never separate knobs that could disagree.

Presets:
    vla-adapter      real size, original Bridge-Attention head (102,129,695 head params)
    vla-adapter-pro  real size, Pro head with RoPE (217,864,223 head params)
    mid              a mid-size model for CPU benchmarks (same structure, smaller widths)
    tiny             a few layers and small widths, for tests and CPU demos
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class VisionConfig:
    # timm architecture ids of the two towers (created with pretrained=False; weights come from checkpoints).
    dino_model_id: str = "vit_large_patch14_reg4_dinov2.lvd142m"
    siglip_model_id: str = "vit_so400m_patch14_siglip_224"
    # Input resolution of each image (square) and the ViT patch size; patches/image = (size // patch)^2.
    image_size: int = 224
    patch_size: int = 14
    # DINOv2 tower width / depth / heads (passed to timm as overrides, so tiny presets keep the key layout).
    dino_embed_dim: int = 1024
    dino_depth: int = 24
    dino_num_heads: int = 16
    # SigLIP tower width / depth / heads.
    siglip_embed_dim: int = 1152
    siglip_depth: int = 27
    siglip_num_heads: int = 16

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size != 0:
            raise ValueError(
                f"vision.image_size ({self.image_size}) must be a multiple of vision.patch_size ({self.patch_size})"
            )
        for name in ("dino_embed_dim", "dino_depth", "dino_num_heads", "siglip_embed_dim", "siglip_depth",
                     "siglip_num_heads"):
            if getattr(self, name) <= 0:
                raise ValueError(f"vision.{name} must be positive, got {getattr(self, name)}")
        if self.dino_depth < 2 or self.siglip_depth < 2:
            raise ValueError("vision.dino_depth and vision.siglip_depth must be >= 2 (features come from the "
                             "second-to-last block)")

    @property
    def patches_per_image(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def fused_dim(self) -> int:
        """Per-patch feature width after concatenating the two towers (2176 at real size)."""
        return self.dino_embed_dim + self.siglip_embed_dim


@dataclass
class LLMConfig:
    # Qwen2 architecture (Qwen2.5-0.5B at real size).
    hidden_size: int = 896
    num_hidden_layers: int = 24
    num_attention_heads: int = 14
    num_key_value_heads: int = 2
    intermediate_size: int = 4864
    # 151,665 Qwen tokens + 256 <|extra_i|> tokens, padded to a multiple of 64 (facts §2.3).
    vocab_size: int = 151936
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 32768
    # Qwen2.5-0.5B ties lm_head to embed_tokens (so lm_head is not stored in checkpoints).
    tie_word_embeddings: bool = True

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"llm.hidden_size ({self.hidden_size}) must be divisible by llm.num_attention_heads "
                f"({self.num_attention_heads})"
            )
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError("llm.num_attention_heads must be a multiple of llm.num_key_value_heads")
        if self.num_hidden_layers < 1:
            raise ValueError(f"llm.num_hidden_layers must be >= 1, got {self.num_hidden_layers}")


@dataclass
class ActionHeadConfig:
    # True: Pro block (separate K/V per source + RoPE); False: original block (shared K/V).
    use_pro_version: bool = True
    # Attention heads in each Bridge-Attention block (8 x 112 at real size).
    num_heads: int = 8
    # Std of the input noise added to the zero action latent in training mode (upstream quirk, facts §2.7;
    # the released weights were trained with it). 0 disables it (used by exact-equivalence tests).
    train_noise_std: float = 0.02
    # Arithmetic of the Pro head's RoPE angle table: "float32" (exact; heads trained here, whose weights the
    # trainer keeps in fp32) or "bfloat16" (upstream's head runs in bf16, so the released Pro weights were
    # trained with bf16 positions / angles; set by the released-checkpoint loader). Ignored by the original head.
    rope_dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.rope_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"action_head.rope_dtype must be 'float32' or 'bfloat16', got {self.rope_dtype!r}")
        if self.num_heads <= 0:
            raise ValueError(f"action_head.num_heads must be positive, got {self.num_heads}")
        if self.train_noise_std < 0:
            raise ValueError(f"action_head.train_noise_std must be >= 0, got {self.train_noise_std}")


@dataclass
class VLAConfig:
    # Name of the preset this config came from (informational; sizes below are authoritative).
    preset: str = "vla-adapter-pro"
    vision: VisionConfig = field(default_factory=VisionConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    action_head: ActionHeadConfig = field(default_factory=ActionHeadConfig)
    # Images per sample (third-person + wrist); their patches are concatenated along the sequence.
    num_images_in_input: int = 2
    # Learnable action queries appended after the prompt (64 upstream).
    num_action_queries: int = 64
    # Action chunk: current + (chunk - 1) future actions, each action_dim wide (LIBERO: 8 x 7).
    num_actions_chunk: int = 8
    action_dim: int = 7
    # Proprio: EEF pos (3) + axis-angle (3) + gripper qpos (2).
    proprio_dim: int = 8
    # Whether the proprio token is fed to the action head (the released checkpoints require it).
    use_proprio: bool = True
    # Whether evaluation maps proprio dims with q01 == q99 to 0, as our data pipeline does in training.
    # False for released checkpoints (set by their loader): upstream's evaluation normalises such dims like
    # any other (clip(2 (x - q01) / eps - 1)), and that is what their weights see in upstream's evaluation.
    zero_constant_proprio: bool = True

    def __post_init__(self) -> None:
        # draccus / json may hand us plain dicts for the nested parts.
        if isinstance(self.vision, dict):
            self.vision = VisionConfig(**self.vision)
        if isinstance(self.llm, dict):
            self.llm = LLMConfig(**self.llm)
        if isinstance(self.action_head, dict):
            self.action_head = ActionHeadConfig(**self.action_head)
        for name in ("num_images_in_input", "num_action_queries", "num_actions_chunk", "action_dim", "proprio_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.llm.hidden_size % self.action_head.num_heads != 0:
            raise ValueError(
                f"llm.hidden_size ({self.llm.hidden_size}) must be divisible by action_head.num_heads "
                f"({self.action_head.num_heads})"
            )

    # ---- derived sizes ----
    @property
    def num_patches(self) -> int:
        """Vision tokens in the LLM sequence (512 at real size with 2 images)."""
        return self.vision.patches_per_image * self.num_images_in_input

    @property
    def num_head_blocks(self) -> int:
        """Bridge-Attention blocks: one per LLM layer (block i reads layer i + 1)."""
        return self.llm.num_hidden_layers

    @property
    def projector_dims(self) -> tuple[int, int, int, int]:
        """Projector widths in -> 4*in -> llm -> llm (2176 -> 8704 -> 896 -> 896 at real size)."""
        return (self.vision.fused_dim, 4 * self.vision.fused_dim, self.llm.hidden_size, self.llm.hidden_size)

    # ---- (de)serialisation ----
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VLAConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown VLAConfig fields: {sorted(unknown)}")
        return cls(**data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))

    @classmethod
    def load(cls, path: str | Path) -> VLAConfig:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"model config not found: {path}")
        return cls.from_dict(json.loads(path.read_text()))


def _tiny(use_pro_version: bool) -> VLAConfig:
    return VLAConfig(
        preset="tiny",
        vision=VisionConfig(
            image_size=56, patch_size=14,  # 4 x 4 = 16 patches per image
            dino_embed_dim=32, dino_depth=2, dino_num_heads=2,
            siglip_embed_dim=48, siglip_depth=2, siglip_num_heads=2,
        ),
        llm=LLMConfig(
            hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, vocab_size=512, max_position_embeddings=1024,
        ),
        action_head=ActionHeadConfig(use_pro_version=use_pro_version, num_heads=4),
        num_action_queries=16,
    )


def _mid(use_pro_version: bool) -> VLAConfig:
    return VLAConfig(
        preset="mid",
        vision=VisionConfig(
            image_size=112, patch_size=14,  # 8 x 8 = 64 patches per image
            dino_embed_dim=192, dino_depth=4, dino_num_heads=3,
            siglip_embed_dim=192, siglip_depth=4, siglip_num_heads=3,
        ),
        llm=LLMConfig(
            hidden_size=256, num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=1024, vocab_size=512, max_position_embeddings=2048,
        ),
        action_head=ActionHeadConfig(use_pro_version=use_pro_version, num_heads=4),
        num_action_queries=64,
    )


PRESETS = ("vla-adapter", "vla-adapter-pro", "mid", "tiny")


def get_preset(name: str, use_pro_version: bool | None = None) -> VLAConfig:
    """Build a named preset. `use_pro_version` overrides the head variant for mid/tiny
    (real-size presets fix it by name)."""
    if name == "vla-adapter":
        cfg = VLAConfig(preset=name, action_head=ActionHeadConfig(use_pro_version=False))
    elif name == "vla-adapter-pro":
        cfg = VLAConfig(preset=name, action_head=ActionHeadConfig(use_pro_version=True))
    elif name == "mid":
        cfg = _mid(True if use_pro_version is None else use_pro_version)
    elif name == "tiny":
        cfg = _tiny(True if use_pro_version is None else use_pro_version)
    else:
        raise ValueError(f"unknown model preset {name!r}; choose one of {PRESETS}")
    if name in ("vla-adapter", "vla-adapter-pro") and use_pro_version is not None:
        if use_pro_version != cfg.action_head.use_pro_version:
            raise ValueError(
                f"preset {name!r} fixes use_pro_version={cfg.action_head.use_pro_version}; "
                f"use preset {'vla-adapter-pro' if use_pro_version else 'vla-adapter'} instead"
            )
    return cfg
