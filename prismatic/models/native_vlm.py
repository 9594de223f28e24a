"""Writing a VLA's VLM as a base-VLM directory in the native Prismatic layout (what `load_base_vlm` reads).

    <out_dir>/checkpoints/<checkpoint_name>   torch.save({"model": {"projector": {...}, "llm_backbone": {...},
                                               "vision_backbone": {...}}})  -- the released run-directory layout
    <out_dir>/tokenizer.json, ...              the tokenizer (save_pretrained)
    <out_dir>/<extra files>                    e.g. README.txt, metrics

Used by `vla-scripts/make_random_base_vlm.py` (random weights) and by VLM pretraining
(`prismatic.training.vlm_pretrain`, trained weights), so both produce exactly the layout the real base VLM has.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import torch

from prismatic.models.loading import replace_directory

logger = logging.getLogger(__name__)

DEFAULT_CHECKPOINT_NAME = "step-000000-epoch-00-loss=0.0000.pt"


def _timm_names(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our vision key names back to timm's (LayerScale `scale_factor` -> `gamma`), as the native file has them."""
    return {k.removesuffix(".scale_factor") + ".gamma" if k.endswith(".scale_factor") else k: v
            for k, v in state.items()}


def native_state(model, dtype: torch.dtype) -> dict:
    """The native Prismatic checkpoint dict of a VLAAdapter's VLM (projector, LLM with lm_head, both towers)."""
    def cast(state):
        return {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
                for k, v in state.items()}

    projector = {}
    for idx, name in ((0, "fc1"), (2, "fc2"), (4, "fc3")):
        layer = getattr(model.projector, name)
        projector[f"projector.{idx}.weight"], projector[f"projector.{idx}.bias"] = layer.weight, layer.bias
    llm = {f"llm.{k}": v for k, v in model.language_model.state_dict().items()}  # lm_head included (tied)
    vb = model.vision_backbone
    vision = {**{f"dino_featurizer.{k}": v for k, v in _timm_names(vb.featurizer.state_dict()).items()},
              **{f"siglip_featurizer.{k}": v for k, v in _timm_names(vb.fused_featurizer.state_dict()).items()}}
    return {"model": {"projector": cast(projector), "llm_backbone": cast(llm), "vision_backbone": cast(vision)}}


def write_native_base_vlm(out_dir: str | Path, model, tokenizer, *, dtype: torch.dtype = torch.float32,
                          checkpoint_name: str = DEFAULT_CHECKPOINT_NAME,
                          extra_files: Mapping[str, str] | None = None) -> Path:
    """Write `model`'s VLM + `tokenizer` as a native base-VLM directory, atomically: everything goes into a
    temporary sibling first, which then replaces `out_dir` (a reader never sees a half-written directory).
    Callers decide whether an existing `out_dir` may be replaced. Returns `out_dir`."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "checkpoints").mkdir(parents=True)
    try:
        state = native_state(model, dtype)
        torch.save(state, tmp / "checkpoints" / checkpoint_name)
        del state
        tokenizer.save_pretrained(str(tmp))
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        replace_directory(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("wrote a native base-VLM directory to %s", out_dir)
    return out_dir
