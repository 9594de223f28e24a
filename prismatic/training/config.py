"""`FinetuneConfig`: every flag of `vla-scripts/finetune.py`, typed, commented and validated.

Flag names follow upstream VLA-Adapter / openvla-oft so existing launch commands keep working
(facts §4.1); upstream defaults are kept except where they were bugs (lr_warmup_steps=0.1 silently
disabled the LR decay; wandb was forced offline; no seed).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from prismatic.models.config import PRESETS


@dataclass
class FinetuneConfig:
    # fmt: off
    # ---- model ----
    model_preset: str = "vla-adapter-pro"        # vla-adapter | vla-adapter-pro | mid | tiny (tiny/mid: random init)
    vlm_path: str | None = None                  # Prismatic base VLM dir (real presets), e.g. pretrained_models/prism-qwen25-extra-dinosiglip-224px-0_5b
    config_file_path: str | None = None          # dir with tokenizer files (upstream's pretrained_models/configs); default: vlm_path
    use_pro_version: bool | None = None          # head variant; None = the preset's (vla-adapter: False, vla-adapter-pro: True, tiny/mid: True)
    num_images_in_input: int = 2                 # third-person + wrist
    use_proprio: bool = True                     # feed the 8-d proprio token to the action head

    # ---- data ----
    data_root_dir: str = "datasets/rlds"         # directory holding <dataset_name>/<version>/
    dataset_name: str = "libero_spatial_no_noops"  # a registered dataset or mixture name
    shuffle_buffer_size: int = 100_000           # frame-level shuffle buffer (frames held in memory, encoded)
    image_aug: bool = True                       # random crop + colour jitter during training
    n_shot_per_task: int | None = None           # use exactly N episodes of every task (few-shot); None = all
    create_synthetic_dataset: bool = False       # generate the synthetic dataset in data_root_dir if missing (demo/tests)

    # ---- optimisation ----
    batch_size: int = 8                          # per device, per micro-batch
    grad_accumulation_steps: int = 1             # micro-batches per optimizer step (one gradient all-reduce per step)
    learning_rate: float = 5e-4                  # AdamW peak learning rate
    weight_decay: float = 0.01                   # AdamW weight decay (PyTorch default, as upstream)
    lr_warmup_steps: int = 0                     # linear warmup from 0.1x to 1x the LR over this many steps
    num_steps_before_decay: int = 100_000        # multiply the LR by 0.1 from this optimizer step on
    max_grad_norm: float | None = None           # clip the global gradient norm to this value; None = no clipping
    max_steps: int = 200_000                     # optimizer steps to train
    seed: int = 7                                # seeds model init (tiny/mid), data order, augmentation and noise

    # ---- LoRA ----
    use_lora: bool = True                        # LoRA on the VLM (vision towers, projector, LLM); False = full fine-tuning
    lora_rank: int = 32                          # LoRA rank r
    lora_alpha: int | None = None                # LoRA alpha; None = 2 * lora_rank (upstream)
    lora_dropout: float = 0.0                    # dropout on the LoRA branch

    # ---- runtime ----
    device: str = "auto"                         # auto | cpu | cuda (under torchrun: cuda:<local_rank>)
    precision: str = "auto"                      # auto | fp32 | bf16 (autocast; master weights stay fp32). auto: bf16 on CUDA, fp32 on CPU

    # ---- checkpoints ----
    run_root_dir: str = "runs"                   # checkpoints go to run_root_dir/{run_id}--{step}_chkpt/
    save_freq: int = 10_000                      # save every this many optimizer steps (and at the last step)
    save_latest_checkpoint_only: bool = False    # keep only the newest checkpoint directory
    save_merged_model: bool = True               # also write the merged VLM (model.safetensors) so evaluation loads ours like released ones
    resume: bool = False                         # continue from the latest checkpoint of this run
    resume_step: int | None = None               # ... or from this step's checkpoint

    # ---- logging ----
    wandb_entity: str | None = None              # W&B entity (team/user); None = your default
    wandb_project: str = "craft-vla"             # W&B project
    wandb_mode: str = "disabled"                 # online | offline | disabled
    wandb_log_freq: int = 10                     # log metrics every this many optimizer steps
    run_id_note: str | None = None               # appended to the run id
    run_id_override: str | None = None           # use this run id verbatim

    # ---- CRaFT (see CRAFT_SPEC.md) ----
    use_craft: bool = False                      # enable CRaFT (retention constraint + conflict-aware projection + dual ascent)
    craft_retention_weight: float = 1.0          # initial lambda
    craft_retention_budget: float = 0.1          # epsilon: drift budget on L_ret
    craft_dual_lr: float = 0.01                  # eta: dual ascent step size
    craft_lambda_max: float = 10.0               # cap on lambda (must be >= craft_retention_weight)
    craft_projection_eps: float = 1e-8           # delta: guards the division in the projection
    craft_enable_projection: bool = True         # conflict-aware gradient projection on/off (ablation)
    craft_enable_dual: bool = True               # adaptive lambda on/off (off: lambda fixed at craft_retention_weight)
    craft_anchor_layer_idx: int | None = None    # LLM layer m for the raw latent features; None = num_layers // 2
    craft_anchor_type: str = "concat"            # concat | raw_only | aq_only
    craft_pooling: str = "mean"                  # mean | max pooling of token features
    craft_projection_granularity: str = "tensor"  # tensor | global
    craft_normalize_parts: bool = False          # divide each feature part by its anchor RMS before the MSE
    craft_anchor_cache: bool = False             # cache anchor features per sample (only valid with image_aug False)
    craft_log_freq: int = 10                     # CRaFT metric window / logging period (optimizer steps)
    monitor_retention: bool = False              # baseline runs: compute and log L_ret against θ0 without constraining it
    # fmt: on

    def __post_init__(self) -> None:
        if self.model_preset not in PRESETS:
            raise ValueError(f"--model_preset must be one of {PRESETS}, got {self.model_preset!r}")
        if self.model_preset in ("vla-adapter", "vla-adapter-pro") and not self.vlm_path:
            raise ValueError(f"--vlm_path is required for --model_preset {self.model_preset} (the Prismatic base VLM dir)")
        if self.vlm_path and not Path(self.vlm_path).exists():
            raise ValueError(f"--vlm_path does not exist: {self.vlm_path}")
        positive = ("batch_size", "grad_accumulation_steps", "max_steps", "save_freq", "wandb_log_freq", "lora_rank",
                    "num_images_in_input", "craft_log_freq", "shuffle_buffer_size")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ValueError(f"--learning_rate must be > 0, got {self.learning_rate}")
        if self.weight_decay < 0:
            raise ValueError(f"--weight_decay must be >= 0, got {self.weight_decay}")
        if self.lr_warmup_steps < 0:
            raise ValueError(f"--lr_warmup_steps must be >= 0 (an integer number of steps), got {self.lr_warmup_steps}")
        if self.num_steps_before_decay < 0:
            raise ValueError(f"--num_steps_before_decay must be >= 0, got {self.num_steps_before_decay}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ValueError(f"--max_grad_norm must be > 0 (or None to disable clipping), got {self.max_grad_norm}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"--lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.lora_alpha is not None and self.lora_alpha <= 0:
            raise ValueError(f"--lora_alpha must be > 0, got {self.lora_alpha}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"--device must be auto, cpu or cuda, got {self.device!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"--precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.wandb_mode not in ("online", "offline", "disabled"):
            raise ValueError(f"--wandb_mode must be online, offline or disabled, got {self.wandb_mode!r}")
        if self.n_shot_per_task is not None and self.n_shot_per_task < 1:
            raise ValueError(f"--n_shot_per_task must be >= 1, got {self.n_shot_per_task}")
        if self.resume_step is not None:
            if self.resume_step < 1:
                raise ValueError(f"--resume_step must be >= 1, got {self.resume_step}")
            if not self.resume:
                raise ValueError("--resume_step is set but --resume is False; pass --resume True")
        if self.num_images_in_input != 2:
            # The data pipeline and the released heads are built for third-person + wrist.
            raise ValueError(f"--num_images_in_input must be 2 (third-person + wrist), got {self.num_images_in_input}")
        if self.use_craft and self.craft_anchor_cache and self.image_aug:
            raise ValueError("--craft_anchor_cache True needs --image_aug False (anchors depend on the exact input)")
        # CRaFT flag validation lives with CRaFT's own config (names the offending --craft_* flag).
        self.craft_config()

    def craft_config(self):
        from prismatic.training.craft.config import CraftConfig

        return CraftConfig.from_flat(
            prefix="craft_",
            enabled=self.use_craft,
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name.startswith("craft_")},
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
