"""Print per-component parameter counts of a model preset, built on the meta device (no weights, no memory).

    python vla-scripts/model_summary.py --preset vla-adapter-pro
    python vla-scripts/model_summary.py --preset vla-adapter
    python vla-scripts/model_summary.py --preset tiny --use_pro_version false

Also prints the number of tensors in the merged-VLM state dict (the released `model.safetensors` layout:
982 at real size) and the per-file tensor counts of the action head and proprio projector.
"""

from __future__ import annotations

from dataclasses import dataclass

import draccus
import torch

from prismatic.models.config import PRESETS, get_preset
from prismatic.models.vla import VLAAdapter


@dataclass
class SummaryConfig:
    # Model preset: one of vla-adapter, vla-adapter-pro, mid, tiny.
    preset: str = "vla-adapter-pro"
    # Head variant override for mid / tiny (real-size presets fix it by name); None keeps the preset's.
    use_pro_version: bool | None = None

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"--preset must be one of {PRESETS}, got {self.preset!r}")


def count(module: torch.nn.Module | None) -> int:
    """Parameters of a module, each shared tensor counted once."""
    if module is None:
        return 0
    return sum(p.numel() for p in module.parameters())


def summarize(cfg: SummaryConfig) -> list[tuple[str, int]]:
    config = get_preset(cfg.preset, cfg.use_pro_version)
    with torch.device("meta"):
        model = VLAAdapter(config, attn_implementation="sdpa")
    head = model.action_head.model
    block_params = count(head.mlp_resnet_blocks[0])
    stem_params = count(head) - block_params * len(head.mlp_resnet_blocks)
    rows = [
        ("vision_backbone.featurizer (DINOv2)", count(model.vision_backbone.featurizer)),
        ("vision_backbone.fused_featurizer (SigLIP)", count(model.vision_backbone.fused_featurizer)),
        ("projector", count(model.projector)),
        ("language_model (lm_head tied: counted once)", count(model.language_model)),
        ("action_queries", count(model.action_queries)),
        ("VLM total (merged model.safetensors)", sum(v.numel() for v in model.merged_vlm_state_dict().values())),
        (f"action_head ({'Pro' if config.action_head.use_pro_version else 'original'})", count(model.action_head)),
        ("  action_head stem (LN, fc1, LN, fc2)", stem_params),
        (f"  action_head per block (x{len(head.mlp_resnet_blocks)})", block_params),
        ("proprio_projector", count(model.proprio_projector)),
        ("total", count(model)),
        ("tensors: merged VLM state dict", len(model.merged_vlm_state_dict())),
        ("tensors: action head file", len(model.action_head.state_dict())),
        ("tensors: proprio projector file",
         0 if model.proprio_projector is None else len(model.proprio_projector.state_dict())),
    ]
    return rows


def main() -> None:
    cfg = draccus.parse(config_class=SummaryConfig)
    rows = summarize(cfg)
    width = max(len(name) for name, _ in rows)
    print(f"preset {cfg.preset} (meta device, no weights)")
    for name, value in rows:
        print(f"{name:<{width}}  {value:>15,}")


if __name__ == "__main__":
    main()
