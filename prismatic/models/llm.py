"""The Qwen2 language model (Qwen2.5-0.5B at real size, facts §2.3).

Built from `LLMConfig` with transformers' `Qwen2ForCausalLM` so the key layout matches the released files
(`language_model.model.*`, `language_model.lm_head.weight` tied to the embeddings). Attention is CAUSAL,
as upstream (the bidirectional transformers fork only changed Llama).

The VLA calls the inner `Qwen2Model` (`language_model.model`), never the LM head: the 151,936-way logits
are not used by the action head and would cost more than the rest of the LLM.

transformers 5 reports `output_hidden_states` as (embedding output, layer 1, ..., layer n-1, NORM(layer n)):
the last entry is the final RMS-normed state, exactly like the transformers 4.40 the released weights were
trained with. `hidden_states_of` checks that contract at run time.

Rotary frequencies stay float32 in every dtype cast (`Float32Qwen2RotaryEmbedding`): transformers 5 keeps
`inv_freq` as a non-persistent buffer and builds cos/sin from it in fp32 at every forward, so a bf16 cast of
the buffer would round the frequencies (cos error up to 0.58 at positions >= 512 for head_dim 64, theta 1e6).
transformers 4.40 (what the released weights were trained with) built its cos/sin cache from fp32
frequencies and rounded only the result to the model dtype; keeping the buffer fp32 reproduces exactly that.
"""

from __future__ import annotations

import importlib.util
import logging

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM
from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding

from prismatic.models.config import LLMConfig
from prismatic.models.precision import Float32BuffersMixin

logger = logging.getLogger(__name__)

ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")


def default_attention_implementation() -> str:
    """flash-attn 2 when it is installed and CUDA is available, else PyTorch SDPA."""
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def qwen2_config(config: LLMConfig, attn_implementation: str) -> Qwen2Config:
    if attn_implementation not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"attn_implementation must be one of {ATTENTION_IMPLEMENTATIONS}, got {attn_implementation!r}")
    hf_config = Qwen2Config(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        max_position_embeddings=config.max_position_embeddings,
        rms_norm_eps=config.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
        tie_word_embeddings=config.tie_word_embeddings,
        use_sliding_window=False,
        attention_dropout=0.0,
        use_cache=False,
        # No padding_idx: Qwen2.5 has none, and a padding row would be frozen at zero.
        pad_token_id=None,
    )
    hf_config._attn_implementation = attn_implementation
    return hf_config


class Float32Qwen2RotaryEmbedding(Float32BuffersMixin, Qwen2RotaryEmbedding):
    """transformers' Qwen2 rotary embedding whose frequency buffers survive `.to(bfloat16)` as float32."""

    float32_buffers = ("inv_freq", "original_inv_freq")


def build_rotary_embedding(hf_config: Qwen2Config) -> Float32Qwen2RotaryEmbedding:
    """The LLM's rotary embedding (also used to rebuild it after a meta-device load)."""
    if hf_config.rope_parameters["rope_type"] != "default":
        raise ValueError(f"only default RoPE is supported, got {hf_config.rope_parameters['rope_type']!r}")
    return Float32Qwen2RotaryEmbedding(config=hf_config)


def build_language_model(config: LLMConfig, attn_implementation: str | None = None) -> Qwen2ForCausalLM:
    """A randomly initialised causal Qwen2 LM (works under `torch.device("meta")`), rotary frequencies fp32."""
    attn_implementation = attn_implementation or default_attention_implementation()
    logger.debug("building Qwen2 LM with %s attention", attn_implementation)
    model = Qwen2ForCausalLM(qwen2_config(config, attn_implementation))
    model.model.rotary_emb = build_rotary_embedding(model.config)
    return model


def hidden_states_of(
    language_model: Qwen2ForCausalLM, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """All hidden states of the inner Qwen2 model: (num_layers + 1) tensors of shape (B, S, D).

    Index 0 is the embedding output (= `inputs_embeds`), index i the output of layer i, and the last entry
    is the final-norm output.
    """
    out = language_model.model(
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        output_hidden_states=True,
        use_cache=False,
    )
    hidden_states = out.hidden_states
    expected = language_model.config.num_hidden_layers + 1
    if hidden_states is None or len(hidden_states) != expected:
        raise RuntimeError(
            f"transformers returned {0 if hidden_states is None else len(hidden_states)} hidden states, "
            f"expected num_hidden_layers + 1 = {expected}; this transformers version breaks the contract"
        )
    if hidden_states[-1] is not out.last_hidden_state and not torch.equal(hidden_states[-1], out.last_hidden_state):
        raise RuntimeError("transformers' last hidden state is not the final-norm output; version not supported")
    return hidden_states
