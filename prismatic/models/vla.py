"""VLA-Adapter: a Prismatic VLM (fused ViTs + projector + Qwen2) with learned action queries and a
Bridge-Attention action head that reads every LLM layer.

Sequence fed to the LLM (one row; rows are right-padded; P = config.num_patches, Q = num_action_queries):

    pos 0            first prompt token ("<|im_start|>"; Qwen has no BOS)
    pos 1 .. P       projected patch embeddings (image 0 patches, then image 1, ...)
    pos P+1 ..       the rest of the prompt, ending "<|im_start|>assistant\\n"
    last Q attended  the Q learned action-query embeddings (they replace the placeholder token embeddings)
    then             right padding (attention_mask False)

The query positions come from `attention_mask`: the last Q attended text positions of each row, so prompts
of different lengths share a batch. Attention is causal.

Upstream quirks reproduced
--------------------------
The released VLA-Adapter weights were trained with the following behaviour, so it is reproduced on purpose
(facts §2.7, §3). Plain bugs of the upstream training script (facts §4.7, §10: DDP head desync, LR schedule,
duplicate saves, resume) are NOT reproduced; they are trainer matters and are fixed there.

1. Off-by-one head inputs. The action head reads, from every layer, the states at positions
   [0, P) as "vision" -- i.e. the first prompt token plus patches 1..P-1 (the last patch is dropped) -- and
   the Q states that END ONE BEFORE the last query -- the last prompt token plus queries 0..Q-2 (the state
   of the last query is never used, so its embedding gets no gradient). CRaFT features (below) use the
   TRUE positions instead.
2. Block i of the head reads LLM hidden state i+1 (layers 1..n; the embedding output is never used), and
   the head has exactly one block per LLM layer. The last entry is the final-norm output.
3. Gating scales LOGITS: in each block the vision logits are multiplied by tanh(g) inside one joint
   softmax over [self | queries+proprio | vision], then everything is divided by sqrt(head_dim). At g=0 the
   vision keys get uniform (not zero) weight.
4. The action latent starts at zero; in training mode a fresh N(0, 0.02^2) draw of shape (chunk, A*D),
   shared by the whole batch, is added (upstream's "learnable_random_perturbations", which is not
   learned). The trainer draws it once per optimizer step for the whole GLOBAL batch (upstream: once per
   GPU micro-batch), so the run does not depend on the number of GPUs (prismatic.training.randomness). Because LayerNorm follows, train-time inputs are unit-variance noise while eval-time inputs are
   exactly the LN bias. `config.action_head.train_noise_std` sets the std (0 disables it).
5. Pro RoPE layout: per source positions (chunk 0..T-1 for q and self keys, 0..Q for query+proprio keys,
   0..P-1 for vision keys; values unrotated), base 10000, with a half-split angle table applied to
   interleaved channel pairs (so the two channels of a pair use different frequencies).
6. The Pro block keeps an unused `film_gen` Linear(D, 2D) (38.6 M dead parameters at real size) so the
   released files load strictly.
7. Blocks end with ReLU(Linear(LayerNorm(attn + x))): no skip around the FFN, so outputs are >= 0.
8. The proprio token goes to the head only (appended to the query states), never into the LLM sequence.
9. Vision states never see the instruction (images precede the text under causal attention).
10. Precision of the tables the released weights were trained with (upstream ran everything in bf16):
   the LLM's rotary cos/sin come from fp32 frequencies (transformers 4.40 cached them before the bf16 cast;
   ours keep `inv_freq` fp32 in every cast, `prismatic.models.precision`), while the Pro head's RoPE table
   was computed entirely in bf16 (positions 257..511 rounded). `config.action_head.rope_dtype` records the
   table a checkpoint was trained with: "bfloat16" for released files (set by the loader), "float32" for
   heads trained here (fp32 master weights). Released proprio statistics are applied at evaluation as
   upstream's evaluation does, without zeroing constant dimensions (`config.zero_constant_proprio`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from prismatic.models.action_heads import BridgeAttentionActionHead, RotaryEmbedding
from prismatic.models.config import VLAConfig
from prismatic.models.llm import build_language_model, build_rotary_embedding, hidden_states_of
from prismatic.models.projector import ProprioProjector, VisionLanguageProjector
from prismatic.models.vision import FusedVisionBackbone
from prismatic.vla.normalization import normalize_bounds_q99, unnormalize_bounds_q99

# Top-level parts that make up the merged VLM file (`model.safetensors`); the head and the proprio projector
# are stored in their own files.
VLM_COMPONENTS = ("vision_backbone", "projector", "language_model", "action_queries")


@dataclass
class VLAOutput:
    # (B, chunk, A) normalised actions predicted by the head (model dtype); None with compute_actions=False.
    predicted_actions: torch.Tensor | None
    # L1 over all chunk elements (float32 scalar); None without target actions.
    loss: torch.Tensor | None = None
    # L1 on chunk step 0 / on steps 1.. (float32 scalars); None without actions (next: also when chunk == 1).
    curr_action_l1: torch.Tensor | None = None
    next_actions_l1: torch.Tensor | None = None
    # (B, P, D) LLM hidden state m at the true vision positions 1..P (CRaFT); None unless requested.
    raw_latent_features: torch.Tensor | None = None
    # (B, Q, D) final-norm hidden state at the true action-query positions (CRaFT); None unless requested.
    action_query_features: torch.Tensor | None = None


@dataclass
class TokenLayout:
    """Where things sit in the LLM sequence (multimodal positions), per row."""

    # (B, Q) long: true positions of the action queries.
    query_positions: torch.Tensor
    # (B, Q) long: positions the head reads as "query states" (true positions - 1, quirk 1).
    head_query_positions: torch.Tensor
    # First true vision position (1) and the count P; the head reads [0, P) instead (quirk 1).
    vision_start: int
    num_patches: int


def _check_on_device(condition: torch.Tensor, message: str) -> None:
    """Raise ValueError(message) unless the 0-dim bool `condition` holds, without a host read of it.

    `torch._assert_async` evaluates on the tensor's device: on CPU it raises here (re-raised as ValueError);
    on CUDA it is a device-side assertion that aborts at the next synchronisation. A right-padded mask is a
    property of the collator, so on accelerators this is a guard against a broken input pipeline, checked
    without stalling every forward on a device-to-host copy."""
    try:
        torch._assert_async(condition, message)
    except RuntimeError as error:
        raise ValueError(message) from error


class VLAAdapter(nn.Module):
    def __init__(self, config: VLAConfig, attn_implementation: str | None = None) -> None:
        """Random initialisation from `config` (works under `torch.device("meta")`).

        attn_implementation: "sdpa" | "eager" | "flash_attention_2"; None picks flash-attn 2 when it is
        installed and CUDA is available, else SDPA.
        """
        super().__init__()
        self.config = config
        d = config.llm.hidden_size
        self.vision_backbone = FusedVisionBackbone(config.vision, config.num_images_in_input)
        self.projector = VisionLanguageProjector(config.projector_dims)
        self.language_model = build_language_model(config.llm, attn_implementation)
        self.action_queries = nn.Embedding(config.num_action_queries, d)
        nn.init.normal_(self.action_queries.weight, mean=0.0, std=0.02)
        self.action_head = BridgeAttentionActionHead(
            llm_dim=d,
            action_dim=config.action_dim,
            num_actions_chunk=config.num_actions_chunk,
            num_blocks=config.num_head_blocks,
            num_heads=config.action_head.num_heads,
            use_pro_version=config.action_head.use_pro_version,
            train_noise_std=config.action_head.train_noise_std,
            rope_dtype=config.action_head.rope_dtype,
        )
        self.proprio_projector = ProprioProjector(config.proprio_dim, d) if config.use_proprio else None

    # ---- layout ----
    def token_layout(self, attention_mask: torch.Tensor) -> TokenLayout:
        """Validate a right-padded text mask (B, L) and locate queries / vision in the LLM sequence."""
        q, p = self.config.num_action_queries, self.config.num_patches
        if attention_mask.dtype != torch.bool:
            raise ValueError(f"attention_mask must be bool, got {attention_mask.dtype}")
        b, length = attention_mask.shape
        lengths = attention_mask.sum(dim=1)  # (B,)
        arange = torch.arange(length, device=attention_mask.device)
        # Checked on the mask's device, never read back (no host sync per forward; see _check_on_device).
        _check_on_device((attention_mask == (arange.unsqueeze(0) < lengths.unsqueeze(1))).all(),
                         "attention_mask must be right-padded: each row True for a prefix, then False")
        # Need the first token, at least one more prompt token, then Q queries (quirk 1 reads one before).
        _check_on_device(lengths.min() >= q + 2,
                         f"a row of attention_mask has fewer than num_action_queries + 2 = {q + 2} attended tokens "
                         "(prompt + action-query placeholders)")
        text_query_positions = lengths.unsqueeze(1) - q + torch.arange(q, device=attention_mask.device)  # (B, Q)
        query_positions = text_query_positions + p  # text position j >= 1 sits at j + P
        return TokenLayout(query_positions, query_positions - 1, vision_start=1, num_patches=p)

    # ---- forward ----
    def _embed(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor, layout: TokenLayout
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Build the LLM input: (B, L + P, D) embeddings and the (B, L + P) bool mask."""
        b = input_ids.shape[0]
        p = self.config.num_patches
        text = self.language_model.model.embed_tokens(input_ids)  # (B, L, D)
        rows = torch.arange(b, device=input_ids.device).unsqueeze(1)
        queries = self.action_queries.weight.to(text.dtype).unsqueeze(0).expand(b, -1, -1)  # (B, Q, D)
        text = text.index_put((rows, layout.query_positions - p), queries)  # out-of-place, differentiable
        weight_dtype = self.projector.fc1.weight.dtype
        patches = self.projector(self.vision_backbone(pixel_values.to(weight_dtype)))  # (B, P, D)
        if patches.shape[1] != p:
            raise RuntimeError(f"vision backbone produced {patches.shape[1]} patches, config says {p}")
        embeds = torch.cat([text[:, :1], patches.to(text.dtype), text[:, 1:]], dim=1)
        patch_mask = torch.ones(b, p, dtype=torch.bool, device=attention_mask.device)
        mask = torch.cat([attention_mask[:, :1], patch_mask, attention_mask[:, 1:]], dim=1)
        return embeds, mask

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor,
        proprio: torch.Tensor | None = None,
        actions: torch.Tensor | None = None,
        output_craft_features: bool = False,
        craft_layer_idx: int | None = None,
        compute_actions: bool = True,
        head_noise: torch.Tensor | None = None,
    ) -> VLAOutput:
        """input_ids (B, L) long, attention_mask (B, L) bool (right-padded), pixel_values (B, 6N, H, W),
        proprio (B, P_dim) normalised, actions (B, chunk, A) normalised or None.

        head_noise: (chunk, A*D) standard-normal draw for the head's training noise (quirk 4), or None to
        draw it from torch's RNG; the trainer passes one per optimizer step (world-size invariance).

        compute_actions=False skips the action head (only the CRaFT features are wanted, e.g. the anchor
        forward: the head does not influence Φ)."""
        cfg = self.config
        b = input_ids.shape[0]
        if input_ids.shape != attention_mask.shape:
            raise ValueError(f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} differ")
        if pixel_values.shape[0] != b:
            raise ValueError(f"pixel_values batch {pixel_values.shape[0]} != input_ids batch {b}")
        layout = self.token_layout(attention_mask)
        embeds, mask = self._embed(input_ids, attention_mask, pixel_values, layout)
        hidden_states = hidden_states_of(self.language_model, embeds, mask)  # n + 1 tensors (B, S, D)

        p = layout.num_patches
        rows = torch.arange(b, device=input_ids.device).unsqueeze(1)
        if not compute_actions and actions is not None:
            raise ValueError("actions were given but compute_actions=False: no loss can be computed")
        out = VLAOutput(predicted_actions=None)
        if compute_actions:
            # Head inputs from layers 1..n (quirk 2), at the upstream positions (quirk 1).
            layers = hidden_states[1:]
            vision_states = [h[:, :p] for h in layers]
            query_states = [h[rows, layout.head_query_positions] for h in layers]
            proprio_token = self._proprio_token(proprio, b)
            out.predicted_actions = self.action_head(vision_states, query_states, proprio_token,
                                                     noise=head_noise)  # (B, chunk, A)
        predicted = out.predicted_actions
        if actions is not None:
            expected = (b, cfg.num_actions_chunk, cfg.action_dim)
            if tuple(actions.shape) != expected:
                raise ValueError(f"actions have shape {tuple(actions.shape)}, expected {expected}")
            pred, target = predicted.float(), actions.to(predicted.device, torch.float32)
            out.loss = F.l1_loss(pred, target)
            out.curr_action_l1 = F.l1_loss(pred[:, 0], target[:, 0])
            if cfg.num_actions_chunk > 1:
                out.next_actions_l1 = F.l1_loss(pred[:, 1:], target[:, 1:])
        if output_craft_features:
            m = cfg.llm.num_hidden_layers // 2 if craft_layer_idx is None else craft_layer_idx
            if not 0 <= m <= cfg.llm.num_hidden_layers:
                raise ValueError(f"craft_layer_idx must be in [0, {cfg.llm.num_hidden_layers}], got {m}")
            out.raw_latent_features = hidden_states[m][:, layout.vision_start : layout.vision_start + p]
            out.action_query_features = hidden_states[-1][rows, layout.query_positions]
        return out

    def _proprio_token(self, proprio: torch.Tensor | None, batch_size: int) -> torch.Tensor | None:
        if self.proprio_projector is None:
            return None
        expected = (batch_size, self.config.proprio_dim)
        if proprio is None:
            raise ValueError("config.use_proprio is True but no proprio was given")
        if tuple(proprio.shape) != expected:
            raise ValueError(f"proprio has shape {tuple(proprio.shape)}, expected {expected}")
        return self.proprio_projector(proprio.to(self.proprio_projector.fc1.weight.dtype))

    # ---- inference ----
    @torch.no_grad()
    def predict_action(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor,
        proprio_raw: torch.Tensor | None,
        stats: dict,
    ) -> torch.Tensor:
        """Un-normalised actions (B, chunk, A) float32 from RAW proprio (B, P_dim).

        `stats` is one entry of dataset_statistics.json (with "action" and "proprio"). The head always runs
        without training noise here: the module is switched to eval mode for the call and restored after.
        """
        for part in ("action", "proprio") if self.config.use_proprio else ("action",):
            if part not in stats:
                raise KeyError(f"dataset statistics entry lacks {part!r}")
        proprio = None
        if self.config.use_proprio:
            if proprio_raw is None:
                raise ValueError("config.use_proprio is True but proprio_raw is None")
            proprio = normalize_bounds_q99(proprio_raw.float(), stats["proprio"],
                                           zero_constant=self.config.zero_constant_proprio)
        was_training = self.training
        self.eval()
        try:
            out = self(input_ids, attention_mask, pixel_values, proprio=proprio)
        finally:
            self.train(was_training)
        return unnormalize_bounds_q99(out.predicted_actions.float(), stats["action"])

    # ---- checkpoint layout ----
    def materialize_meta_buffers(self, device: torch.device) -> None:
        """After `load_state_dict(..., assign=True)` into a meta-device model: recompute the non-persistent
        buffers (the LLM's and the head's RoPE tables, which no checkpoint stores) and re-tie the LM head."""
        inner = self.language_model.model
        if inner.rotary_emb.inv_freq.is_meta:
            inner.rotary_emb = build_rotary_embedding(self.language_model.config).to(device)
        for block in self.action_head.model.mlp_resnet_blocks:
            rope = getattr(block, "rope", None)
            if rope is not None and rope.inv_freq.is_meta:
                block.rope = RotaryEmbedding(2 * rope.inv_freq.shape[0], table_dtype=rope.table_dtype).to(device)
        self.language_model.tie_weights()
        left = [n for n, t in [*self.named_parameters(), *self.named_buffers()] if t.is_meta]
        if left:
            raise RuntimeError(f"tensors left on the meta device (not in the checkpoint?): {left[:10]}")

    def merged_vlm_state_dict(self) -> dict[str, torch.Tensor]:
        """The merged-VLM tensors in the released `model.safetensors` layout (982 at real size): vision
        towers, projector, LLM without the tied `lm_head`, and `action_queries.weight`."""
        tied = self.config.llm.tie_word_embeddings
        return {
            k: v
            for k, v in self.state_dict().items()
            if k.split(".", 1)[0] in VLM_COMPONENTS and not (tied and k == "language_model.lm_head.weight")
        }
