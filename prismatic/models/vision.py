"""Fused DINOv2 + SigLIP vision backbone (facts §2.1).

Both towers are timm ViTs built with `pretrained=False` (weights come from checkpoints, see
`prismatic.models.loading`; for a base VLM without vision weights, from timm's pretrained weights via
`pretrained_tower_state`). Each tower contributes the patch tokens of its SECOND-TO-LAST block: no final
norm, prefix tokens (class / register) dropped. The two towers' features are concatenated per patch
(1024 + 1152 = 2176 at real size), and several images are concatenated along the patch axis:

    pixel_values (B, 6 * N, H, W)  ->  features (B, N * patches_per_image, dino_dim + siglip_dim)

Per image, channels 0-2 are DINO-normalised and 3-5 SigLIP-normalised (see `processing.py`).

timm's `LayerScale.gamma` is renamed to `scale_factor` (the released checkpoints use that name: upstream
renamed it because HF's loader re-initialises parameters named `gamma`).
"""

from __future__ import annotations

import timm
import torch
from torch import nn

from prismatic.models.config import VisionConfig


class LayerScale(nn.Module):
    """timm's LayerScale with the parameter named `scale_factor` (released key layout)."""

    def __init__(self, scale_factor: nn.Parameter, inplace: bool = False) -> None:
        super().__init__()
        self.scale_factor = scale_factor
        self.inplace = inplace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul_(self.scale_factor) if self.inplace else x * self.scale_factor


def rename_layer_scale(model: nn.Module) -> None:
    """Replace every timm LayerScale in `model` by `LayerScale` above, re-using the same Parameter."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, timm.layers.LayerScale):
                setattr(parent, name, LayerScale(child.gamma, inplace=child.inplace))


def create_tower(model_id: str, image_size: int, embed_dim: int, depth: int, num_heads: int) -> nn.Module:
    """A randomly initialised timm ViT with the given architecture overrides (key layout of `model_id`)."""
    tower = timm.create_model(
        model_id,
        pretrained=False,
        num_classes=0,
        img_size=image_size,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
    )
    rename_layer_scale(tower)
    return tower


def pretrained_tower_state(model_id: str, image_size: int, embed_dim: int, depth: int, num_heads: int,
                           cache_dir: str | None = None) -> dict[str, torch.Tensor]:
    """timm's pretrained weights of `model_id` (`id.tag`) for a tower of the given architecture, our key names.

    Goes through timm's own pretrained mechanism (`timm.create_model(pretrained=True)`: the tag's hub repo, e.g.
    timm/vit_large_patch14_reg4_dinov2.lvd142m, fetched by huggingface_hub into its cache, or read from the cache
    when HF_HUB_OFFLINE=1; cache_dir overrides the cache location), so timm's checkpoint filter resamples
    pos_embed to `image_size` and loading is strict (an architecture that does not match the weights raises).
    Errors from the hub (offline and not cached, ...) propagate to the caller.
    """
    plain = timm.create_model(model_id, pretrained=True, num_classes=0, img_size=image_size, embed_dim=embed_dim,
                              depth=depth, num_heads=num_heads, cache_dir=cache_dir)
    state = plain.state_dict()
    # timm LayerScale.gamma -> scale_factor (the released key name, see `LayerScale`).
    return {(k[: -len(".gamma")] + ".scale_factor" if k.endswith(".gamma") else k): v for k, v in state.items()}


def timm_architecture(model_id: str, image_size: int) -> tuple[int, int, int, int]:
    """(embed_dim, depth, num_heads, patch_size) of a timm ViT id, read from a meta-device instance."""
    with torch.device("meta"):
        tower = timm.create_model(model_id, pretrained=False, num_classes=0, img_size=image_size)
    return tower.embed_dim, len(tower.blocks), tower.blocks[0].attn.num_heads, tower.patch_embed.patch_size[0]


class FusedVisionBackbone(nn.Module):
    """DINOv2 (`featurizer`) + SigLIP (`fused_featurizer`), fused per patch, images along the patch axis."""

    def __init__(self, config: VisionConfig, num_images: int) -> None:
        super().__init__()
        self.config = config
        self.num_images = num_images
        self.featurizer = create_tower(
            config.dino_model_id, config.image_size, config.dino_embed_dim, config.dino_depth, config.dino_num_heads
        )
        self.fused_featurizer = create_tower(
            config.siglip_model_id,
            config.image_size,
            config.siglip_embed_dim,
            config.siglip_depth,
            config.siglip_num_heads,
        )
        for name, tower in (("dino", self.featurizer), ("siglip", self.fused_featurizer)):
            if tower.patch_embed.patch_size != (config.patch_size, config.patch_size):
                raise ValueError(
                    f"vision.patch_size={config.patch_size} but timm model {name} uses patch size "
                    f"{tower.patch_embed.patch_size}"
                )

    @property
    def embed_dim(self) -> int:
        return self.config.fused_dim

    @staticmethod
    def _penultimate_patches(tower: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """(M, 3, H, W) -> (M, patches, dim): second-to-last block output, no final norm, no prefix tokens."""
        (features,) = tower.forward_intermediates(
            images,
            indices=[len(tower.blocks) - 2],
            norm=False,
            stop_early=True,  # the last block never runs: its output is not used
            output_fmt="NLC",
            intermediates_only=True,
        )
        return features

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values (B, 6 * N, H, W) -> (B, N * patches_per_image, fused_dim)."""
        b, c, h, w = pixel_values.shape
        if c != 6 * self.num_images:
            raise ValueError(
                f"pixel_values has {c} channels; expected 6 * num_images_in_input = {6 * self.num_images}"
            )
        if (h, w) != (self.config.image_size, self.config.image_size):
            raise ValueError(f"pixel_values are {h}x{w}; expected {self.config.image_size}x{self.config.image_size}")
        # All images of all samples go through each tower as one batch (ViTs are per-sample independent).
        images = pixel_values.reshape(b * self.num_images, 6, h, w)
        dino = self._penultimate_patches(self.featurizer, images[:, :3])  # (B*N, p, dino_dim)
        siglip = self._penultimate_patches(self.fused_featurizer, images[:, 3:])  # (B*N, p, siglip_dim)
        fused = torch.cat([dino, siglip], dim=-1)  # (B*N, p, fused_dim)
        # Image order within a sample is kept: [image 0 patches, image 1 patches, ...].
        return fused.reshape(b, self.num_images * fused.shape[1], fused.shape[2])
