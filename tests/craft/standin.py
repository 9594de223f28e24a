"""A small stand-in with the VLA's API shape, for anchor tests that need neither timm nor Qwen.

Same top-level module names as VLAAdapter (vision_backbone, projector, language_model, action_queries,
action_head, proprio_projector), the same forward signature and output fields. The "LLM" mixes tokens
causally (cumulative mean), so the action-query features depend on the vision tokens and queries, and
it has dropout so tests can tell whether the anchor forward runs in eval mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

D, PATCH_DIM, NUM_PATCHES, NUM_QUERIES, NUM_LAYERS, VOCAB = 8, 6, 4, 3, 4, 16
CHUNK, ACTION_DIM, PROPRIO_DIM = 2, 3, 5


@dataclass
class StandInOutput:
    predicted_actions: Tensor
    loss: Tensor | None = None
    curr_action_l1: Tensor | None = None
    next_actions_l1: Tensor | None = None
    raw_latent_features: Tensor | None = None
    action_query_features: Tensor | None = None


class _Block(nn.Module):
    def __init__(self, dropout: float = 0.3) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(D)
        self.fc1 = nn.Linear(D, 2 * D)
        self.fc2 = nn.Linear(2 * D, D)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        # Causal token mixing: position t sees the mean of positions <= t.
        counts = torch.arange(1, x.shape[1] + 1, device=x.device, dtype=x.dtype).view(1, -1, 1)
        mixed = x.cumsum(dim=1) / counts
        return x + self.dropout(self.fc2(torch.nn.functional.gelu(self.fc1(self.norm(mixed)))))


class _LLM(nn.Module):
    def __init__(self, dropout: float = 0.3) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(VOCAB, D)
        self.layers = nn.ModuleList(_Block(dropout) for _ in range(NUM_LAYERS))
        self.norm = nn.LayerNorm(D)


class StandInVLA(nn.Module):
    num_layers = NUM_LAYERS

    def __init__(self, dropout: float = 0.3) -> None:
        super().__init__()
        self.vision_backbone = nn.Linear(PATCH_DIM, D)
        self.projector = nn.Sequential(nn.Linear(D, D), nn.GELU(), nn.Linear(D, D))
        self.language_model = _LLM(dropout)
        self.action_queries = nn.Embedding(NUM_QUERIES, D)
        self.action_head = nn.Linear(D, CHUNK * ACTION_DIM)
        self.proprio_projector = nn.Linear(PROPRIO_DIM, D)
        self.forward_rows = 0  # rows seen by forward (tests count anchor forwards with it)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        pixel_values: Tensor,
        proprio: Tensor | None = None,
        actions: Tensor | None = None,
        output_craft_features: bool = False,
        craft_layer_idx: int | None = None,
    ) -> StandInOutput:
        b = input_ids.shape[0]
        self.forward_rows += b
        vision = self.projector(self.vision_backbone(pixel_values.reshape(b, NUM_PATCHES, PATCH_DIM)))
        text = self.language_model.embed_tokens(input_ids) * attention_mask.unsqueeze(-1).to(vision.dtype)
        queries = self.action_queries.weight.unsqueeze(0).expand(b, -1, -1)
        x = torch.cat([vision, text, queries], dim=1)
        hidden = [x]
        for block in self.language_model.layers:
            x = block(x)
            hidden.append(x)
        last = self.language_model.norm(x)
        query_states = last[:, -NUM_QUERIES:]
        head_in = query_states.mean(dim=1)
        if proprio is not None:
            head_in = head_in + self.proprio_projector(proprio)
        predicted = self.action_head(head_in).reshape(b, CHUNK, ACTION_DIM)
        out = StandInOutput(predicted_actions=predicted)
        if actions is not None:
            err = (predicted.float() - actions).abs()
            out.loss = err.mean()
            out.curr_action_l1 = err[:, 0].mean()
            out.next_actions_l1 = err[:, 1:].mean() if CHUNK > 1 else None
        if output_craft_features:
            m = NUM_LAYERS // 2 if craft_layer_idx is None else craft_layer_idx
            out.raw_latent_features = hidden[m][:, :NUM_PATCHES]
            out.action_query_features = query_states
        return out


def make_batch(batch_size: int = 4, seq_len: int = 5, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch_size, seq_len, dtype=torch.bool)
    mask[0, -1] = False  # one right-padded row
    return {
        "input_ids": torch.randint(0, VOCAB, (batch_size, seq_len), generator=g),
        "attention_mask": mask,
        "pixel_values": torch.randn(batch_size, NUM_PATCHES * PATCH_DIM, generator=g),
        "proprio": torch.randn(batch_size, PROPRIO_DIM, generator=g),
        "actions": torch.rand(batch_size, CHUNK, ACTION_DIM, generator=g) * 2 - 1,
        "instructions": [f"task {i}" for i in range(batch_size)],
    }


def make_model(seed: int = 0, dropout: float = 0.3) -> StandInVLA:
    torch.manual_seed(seed)
    return StandInVLA(dropout)


def lora_wrap(model: StandInVLA, init_lora_weights: bool | str = "gaussian"):
    """peft LoRA on every Linear of the "VLM" (not the head / proprio projector); queries fully trained."""
    from peft import LoraConfig, get_peft_model

    targets = [n for n, m in model.named_modules()
               if isinstance(m, nn.Linear) and not n.startswith(("action_head", "proprio_projector"))]
    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=targets,
                                                  init_lora_weights=init_lora_weights))
    for name, p in peft_model.get_base_model().named_parameters():
        if name.startswith(("action_queries.", "action_head.", "proprio_projector.")):
            p.requires_grad_(True)
    return peft_model


def features(model: nn.Module, batch: dict, layer_idx: int | None = None) -> tuple[Tensor, Tensor]:
    """Token-level (raw, aq) features of `model` in eval mode, no grad (reference for the anchor)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["proprio"],
                        output_craft_features=True, craft_layer_idx=layer_idx)
    finally:
        model.train(was_training)
    return out.raw_latent_features, out.action_query_features


def train_steps(model: nn.Module, batch: dict, steps: int = 5, lr: float = 0.05) -> None:
    """A few Adam steps on a loss that moves the features (so θ drifts away from θ0)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    model.train()
    for _ in range(steps):
        out = model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["proprio"],
                    actions=batch["actions"], output_craft_features=True)
        loss = out.loss + out.raw_latent_features.pow(2).mean() + (out.action_query_features - 1).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
