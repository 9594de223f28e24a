"""LoRA on the VLM part of the model, trainable-parameter selection, and the merged VLM weights.

LoRA (peft, Gaussian init so B = 0 at start) goes on every `nn.Linear` of the vision towers, the
projector and the LLM (upstream's "all-linear" over the VLM), never on the action head or the proprio
projector, which — like the action queries — are trained in full.

The merged VLM state dict (W + scale * B A per LoRA layer, released key names) is computed without
touching the live weights: peft's in-place merge/unmerge round trip is not bit-exact, which would break
exact resume.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)

# Sub-modules of VLAAdapter that form the VLM (receive LoRA) and those trained in full.
VLM_PREFIXES = ("vision_backbone.", "projector.", "language_model.")
FULLY_TRAINED_PREFIXES = ("action_queries.", "action_head.", "proprio_projector.")
# Never adapted: the (tied) output head is not used by the policy.
LORA_EXCLUDE = ("language_model.lm_head",)


def lora_target_modules(model: nn.Module) -> list[str]:
    """Full names of every nn.Linear inside the VLM (vision towers, projector, LLM)."""
    names = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name.startswith(VLM_PREFIXES) and not name.startswith(LORA_EXCLUDE):
            names.append(name)
    if not names:
        raise RuntimeError("found no nn.Linear modules in the VLM to put LoRA on")
    return names


def apply_lora(model: nn.Module, rank: int, alpha: int, dropout: float, dropout_seed: int = 0) -> nn.Module:
    """Wrap `model` with peft LoRA on the VLM; action queries, head and proprio projector stay fully trainable.

    With dropout > 0, peft's dropout modules are replaced by `KeyedDropout` (seeded by `dropout_seed`): a
    sample's masks depend on its global index, not on the rank or micro-batch it lands in
    (prismatic.training.randomness)."""
    from peft import LoraConfig, get_peft_model

    from prismatic.training.randomness import KeyedDropout

    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=lora_target_modules(model),
        init_lora_weights="gaussian",
    )
    peft_model = get_peft_model(model, config)
    for name, module in peft_model.get_base_model().named_modules():
        for adapter, drop in getattr(module, "lora_dropout", {}).items():
            if isinstance(drop, nn.Dropout):
                module.lora_dropout[adapter] = KeyedDropout(drop.p, dropout_seed, f"{name}/{adapter}")
    for name, param in peft_model.get_base_model().named_parameters():
        if name.startswith(FULLY_TRAINED_PREFIXES):
            param.requires_grad_(True)
    return peft_model


def base_module(model: nn.Module) -> nn.Module:
    """The VLAAdapter inside an optional peft wrapper (LoRA layers stay injected and active)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def trainable_named_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, param) of every trainable parameter, names relative to the VLAAdapter, in a fixed order."""
    return [(n, p) for n, p in base_module(model).named_parameters() if p.requires_grad]


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA adapter weights only (peft key format), for `lora_adapter/`."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(model)


def merged_vlm_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """VLM weights with LoRA folded in, under the released key names (no lm_head, no head/proprio).

    Works for a plain VLAAdapter (full fine-tuning) too.
    """
    vla = base_module(model)
    merged: dict[str, torch.Tensor] = {}
    lora_layers = {}
    for name, module in vla.named_modules():
        if hasattr(module, "base_layer") and hasattr(module, "get_delta_weight") and hasattr(module, "lora_A"):
            lora_layers[name] = module
    with torch.no_grad():
        for key, tensor in vla.state_dict().items():
            if key.startswith(("action_head.", "proprio_projector.", "language_model.lm_head")):
                continue
            if ".lora_" in key:
                continue
            clean = key.replace(".base_layer.", ".")
            owner = key.rsplit(".", 1)[0].replace(".base_layer", "")
            if key.endswith(".base_layer.weight") and owner in lora_layers:
                layer = lora_layers[owner]
                delta = sum(layer.get_delta_weight(a) for a in layer.active_adapters if a in layer.lora_A)
                tensor = tensor + delta.to(tensor.dtype)
            merged[clean] = tensor.detach().clone()
    return merged
