"""Upstream flags that name a choice this stack has already made.

Upstream VLA-Adapter's `FinetuneConfig` (vla-scripts/finetune.py) and `GenerateConfig`
(experiments/robot/libero/run_libero_eval.py) carry switches for model families and heads that this stack does
not implement (the OpenVLA-7B path, discrete action tokens, diffusion, FiLM, 8/4-bit loading). Their fields are
kept so upstream's commands parse verbatim; the value naming what this stack does is accepted (it changes
nothing: it is the only behaviour), any other value is a config error naming the flag. Flags of this stack
with upstream's meaning (use_val_set, merge_lora_during_training, use_fz, ...) are ordinary fields of the
configs, not listed here.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class FixedFlag:
    name: str  # field name (the flag without '--')
    value: object  # the one value this stack implements (upstream's meaning of it is what happens here)
    other: str  # what another value asks for, for the error message


# vla-scripts/finetune.py (upstream FinetuneConfig, facts §4.1).
FINETUNE_FIXED = (
    FixedFlag("use_minivlm", True, "upstream's OpenVLA-7B (Llama-2) path; this stack fine-tunes the Prismatic "
              "Qwen2.5-0.5B VLM, which is upstream's --use_minivlm True"),
    FixedFlag("use_l1_regression", True, "OpenVLA's discrete action tokens; the action head here is trained "
              "with L1 regression (upstream's --use_l1_regression True)"),
    FixedFlag("use_diffusion", False, "a diffusion action head (upstream has no implementation either)"),
    FixedFlag("num_diffusion_steps", 50, "diffusion steps, which only apply to --use_diffusion True"),
    FixedFlag("diffusion_sample_freq", 50, "a diffusion sampling period, which only applies to --use_diffusion True"),
    FixedFlag("use_film", False, "FiLM language conditioning of the vision towers"),
    FixedFlag("phase1_path", None, "a phase-1 checkpoint, which upstream's finetune.py never reads either"),
    FixedFlag("phase", "Training", "another head phase; training always runs the head in its training phase"),
)

# experiments/robot/libero/run_libero_eval.py (upstream GenerateConfig, facts §7.1).
EVAL_FIXED = (
    FixedFlag("model_family", "openvla", "another model family; upstream's only family is openvla"),
    FixedFlag("use_l1_regression", True, "OpenVLA's discrete action tokens; the action head here is L1 regression"),
    FixedFlag("use_minivlm", True, "upstream's OpenVLA-7B (Llama-2) path; checkpoints here are the Qwen2.5-0.5B "
              "VLA-Adapter (upstream's --use_minivlm True)"),
    FixedFlag("num_diffusion_steps", 50, "diffusion steps; there is no diffusion head"),
    FixedFlag("use_film", False, "FiLM language conditioning of the vision towers"),
    FixedFlag("load_in_8bit", False, "8-bit quantised loading (bitsandbytes); the policy runs in bf16 on CUDA, "
              "fp32 on CPU"),
    FixedFlag("load_in_4bit", False, "4-bit quantised loading (bitsandbytes); the policy runs in bf16 on CUDA, "
              "fp32 on CPU"),
    FixedFlag("initial_states_path", "DEFAULT", "initial states from a JSON file; episodes start from the "
              "suite's own initial states (upstream's DEFAULT)"),
    FixedFlag("phase", "Inference", "another head phase; evaluation runs the head in its inference phase"),
)


def check_fixed_flags(cfg: object, fixed: tuple[FixedFlag, ...]) -> None:
    """Raise ValueError naming the first upstream flag of `fixed` that asks for something not supported."""
    for flag in fixed:
        value = getattr(cfg, flag.name)
        if flag.value is None and value == "None":  # upstream's default is the string "None"
            continue
        if value != flag.value or type(value) is not type(flag.value):
            raise ValueError(f"--{flag.name} {value} is not supported: it selects {flag.other}. Drop the flag "
                             f"(or pass --{flag.name} {flag.value}, the only value this stack implements)")


# ---- upstream's default model paths: OpenVLA-7B, not a VLA-Adapter base ----
# The base VLM VLA-Adapter fine-tunes (upstream README, "About vlm_path"); config_file_path defaults to it here.
BASE_VLM_HUB_ID = "Stanford-ILIAD/prism-qwen25-extra-dinosiglip-224px-0_5b"
# Upstream's FinetuneConfig defaults (`openvla/openvla-7b`) and OpenVLA / OpenVLA-OFT fine-tunes of it.
_OPENVLA_7B = re.compile(r"(?i)(openvla|moojink)/openvla-7b([-_.].*)?(@.*)?")


class NotAVLAAdapterBase(ValueError):
    """A model flag names an OpenVLA-7B checkpoint. Carries what `suggested_command` needs."""

    def __init__(self, flag: str, value: str) -> None:
        super().__init__(
            f"{flag} {value} is an OpenVLA-7B (Llama-2 7B) checkpoint, not a VLA-Adapter base: VLA-Adapter "
            f"fine-tunes the Prismatic Qwen2.5-0.5B VLM, --vlm_path {BASE_VLM_HUB_ID} (or a local copy; the "
            f"tokenizer files come from it too, so --config_file_path is not needed)")
        self.flag, self.value = flag, value

    def suggested_command(self, argv: list[str]) -> str:
        """`argv` (script first) with every OpenVLA-7B --vlm_path / --config_file_path replaced by the base VLM."""
        return "run instead:\n  python " + shlex.join(replace_openvla_paths(argv))


def is_openvla_7b(value: str | None) -> bool:
    """A hub id of OpenVLA-7B or one of its fine-tunes, or a local directory holding one (its config.json)."""
    if not value:
        return False
    if _OPENVLA_7B.fullmatch(value):
        return True
    config = Path(value) / "config.json"
    if config.is_file():
        try:
            data = json.loads(config.read_text())
        except (OSError, ValueError):
            return False  # not ours to judge here; the loader names a bad config.json
        backbone = str(data.get("llm_backbone_id", "")) if isinstance(data, dict) else ""
        return isinstance(data, dict) and (data.get("model_type") == "openvla" or backbone.startswith("llama2"))
    return False


def replace_openvla_paths(argv: list[str]) -> list[str]:
    """Drop `--config_file_path` / `--vlm_path` values naming OpenVLA-7B; add `--vlm_path <base VLM>` once
    (right after the script) unless a proper --vlm_path is already given. Handles `--flag value` and `--flag=value`."""
    script, args = argv[0], argv[1:]
    kept: list[str] = []
    has_vlm = False
    i = 0
    while i < len(args):
        arg = args[i]
        name, eq, inline = arg.partition("=")
        if name in ("--config_file_path", "--vlm_path"):
            value = inline if eq else (args[i + 1] if i + 1 < len(args) else "")
            step = 1 if eq else 2
            if is_openvla_7b(value):
                i += step
                continue
            has_vlm = has_vlm or name == "--vlm_path"
            kept += args[i:i + step]
            i += step
            continue
        kept.append(arg)
        i += 1
    return [script] + ([] if has_vlm else ["--vlm_path", BASE_VLM_HUB_ID]) + kept


def check_model_paths(vlm_path: str | None, config_file_path: str | None) -> None:
    """Raise NotAVLAAdapterBase for an OpenVLA-7B --vlm_path or --config_file_path (upstream's defaults)."""
    for flag, value in (("--vlm_path", vlm_path), ("--config_file_path", config_file_path)):
        if is_openvla_7b(value):
            raise NotAVLAAdapterBase(flag, value)
