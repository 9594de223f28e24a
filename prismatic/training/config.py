"""`FinetuneConfig`: every flag of `vla-scripts/finetune.py`, typed, commented and validated.

Flag names follow upstream VLA-Adapter / openvla-oft so existing launch commands keep working
(facts §4.1); upstream defaults are kept except where they were bugs (lr_warmup_steps=0.1 silently
disabled the LR decay; wandb was forced offline; no seed).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from prismatic.models.config import PRESETS
from prismatic.models.hub import check_model_location
from prismatic.upstream_flags import FINETUNE_FIXED, check_fixed_flags, check_model_paths


def check_path_component(flag: str, value: str | None) -> None:
    """A user string that becomes (part of) a directory name must stay one plain name inside its root."""
    if value is None:
        return
    if not value or "/" in value or "\\" in value or value in (".", "..") or value.startswith(".") or "\0" in value:
        raise ValueError(f"--{flag} must be a plain directory name (no '/', '\\', leading '.' or '..'), "
                         f"got {value!r}")


@dataclass
class FinetuneConfig:
    # fmt: off
    # ---- model ----
    model_preset: str = "vla-adapter-pro"        # vla-adapter | vla-adapter-pro | mid | tiny (tiny/mid: random init)
    vlm_path: str | None = None                  # Prismatic base VLM (real presets; tiny / mid: optional, e.g. the pretrained tiny VLM of vla-scripts/pretrain_tiny_vlm.py, else random init): a dir, e.g. pretrained_models/prism-qwen25-extra-dinosiglip-224px-0_5b, or a hub id, e.g. Stanford-ILIAD/prism-qwen25-extra-dinosiglip-224px-0_5b
    config_file_path: str | None = None          # tokenizer files (upstream's pretrained_models/configs): a dir or a hub id (e.g. VLA-Adapter/LIBERO-Spatial-Pro); default: vlm_path
    hub_revision: str | None = None              # branch / tag / commit for hub ids in --vlm_path / --config_file_path (an id's own @rev suffix wins); None = main
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
    lora_dropout: float = 0.0                    # dropout on the LoRA branch (must be 0 with --use_craft: the features Φ(θ) would carry dropout noise the anchor never has)

    # ---- runtime ----
    device: str = "auto"                         # auto | cpu | cuda (under torchrun: cuda:<local_rank>)
    dry_run: bool = False                        # validate everything (paths / hub ids, dataset + statistics, model on meta, world size), print the plan, exit 0 without training
    precision: str = "auto"                      # auto | fp32 | bf16 (autocast; master weights stay fp32). auto: bf16 on CUDA, fp32 on CPU

    # ---- checkpoints ----
    run_root_dir: str = "runs"                   # checkpoints go to run_root_dir/{run_id}--{step}_chkpt/
    save_freq: int = 10_000                      # save every this many optimizer steps (and at the last step)
    save_latest_checkpoint_only: bool = False    # keep only the newest checkpoint directory
    save_merged_model: bool = True               # also write the merged VLM (model.safetensors) so evaluation loads ours like released ones
    resume: bool = False                         # continue from the latest checkpoint of this run
    resume_step: int | None = None               # ... or from this step's checkpoint
    overwrite: bool = False                      # a fresh run whose run id already has a run dir / checkpoints: move that old run aside to run_root_dir/{run_id}.overwritten-{time}/ (never deleted) instead of refusing to start
    save_on_sigterm: bool = False                # on SIGTERM (SLURM preemption sends it before killing), finish the step, save a checkpoint and exit 143
    resume_override_flags: str | None = None     # on resume, comma-separated flags that may differ from the checkpoint (e.g. "learning_rate,max_grad_norm"): their new values replace the restored optimizer/schedule ones (logged; train.RESUME_OVERRIDABLE lists the allowed ones)

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

    # ---- validation (upstream's flags; prismatic/training/validation.py) ----
    use_val_set: bool = False                    # every --val_freq steps, log the loss on held-out episodes as VLA Val/... (changes nothing in training)
    val_freq: int = 10_000                       # validation period in optimizer steps (when --use_val_set True)
    val_time_limit: int = 180                    # seconds one validation pass may take; it stops after the batch that crosses the limit
    val_fraction: float | None = None            # fraction of each task's episodes held out for validation (and kept out of training); None = 0.05 with --use_val_set True (upstream's 95/5 train/val split), else 0

    # ---- retention probe (prismatic/eval/retention_probe.py; docs/RETENTION_PROBE.md) ----
    probe_freq: int = 0                          # every this many optimizer steps (and at the last step), log the retention probe (Probe/...) on --probe_data's held-out split; 0 = off. Changes nothing in training
    probe_data: str | None = None                # a VQA / caption dataset directory (prismatic.vla.datasets.vqa layout: meta.json, train/, heldout/); required when --probe_freq > 0
    probe_batch_size: int = 16                   # samples per probe forward pass (memory only: the probe numbers do not depend on it beyond float rounding)

    # ---- upstream VLA-Adapter flags (docs/EXPERIMENTS_AND_TRAINING.md, "Upstream flags") ----
    use_minivlm: bool = True                     # upstream: True = the Prismatic Qwen2.5-0.5B VLM, the only model here (False = OpenVLA-7B: not supported)
    use_l1_regression: bool = True               # upstream: True = L1-regression action head, the only head here (False = discrete action tokens: not supported)
    use_diffusion: bool = False                  # upstream: diffusion action head (True: not supported)
    num_diffusion_steps: int = 50                # upstream: only with --use_diffusion True (not supported), so must stay 50
    diffusion_sample_freq: int = 50              # upstream: only with --use_diffusion True (not supported), so must stay 50
    use_film: bool = False                       # upstream: FiLM language conditioning of the vision towers (True: not supported)
    use_fz: bool = False                         # upstream: full fine-tuning, the whole model saved; True needs --use_lora False (full fine-tuning here)
    merge_lora_during_training: bool | None = None  # upstream's name for --save_merged_model: when given, it sets it (merged VLM written at every checkpoint)
    resum_vla_path: str | None = None            # upstream's resume directory: one of our checkpoint dirs (run_root_dir/<run id>--<step>_chkpt) whose run --resume True continues
    phase1_path: str | None = None               # upstream: never read; must stay None
    phase: str = "Training"                      # upstream: the head's phase; training always uses Training
    # fmt: on

    def __post_init__(self) -> None:
        self._apply_upstream_flags()
        if self.model_preset not in PRESETS:
            raise ValueError(f"--model_preset must be one of {PRESETS}, got {self.model_preset!r}")
        if self.model_preset in ("vla-adapter", "vla-adapter-pro") and not self.vlm_path and not self.resumes_checkpoint_dir():
            raise ValueError(f"--vlm_path is required for --model_preset {self.model_preset} (the Prismatic base VLM dir)")
        # Local paths or hub ids (syntax only here: downloads happen in train(), rank 0 first).
        if self.vlm_path:
            check_model_location(self.vlm_path, "--vlm_path", "the Prismatic base VLM")
        if self.config_file_path:
            check_model_location(self.config_file_path, "--config_file_path", "a directory with tokenizer files")
        positive = ("batch_size", "grad_accumulation_steps", "max_steps", "save_freq", "wandb_log_freq", "lora_rank",
                    "num_images_in_input", "craft_log_freq", "shuffle_buffer_size")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        for name in ("learning_rate", "weight_decay", "max_grad_norm", "lora_dropout"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):  # inf / nan pass every comparison below
                raise ValueError(f"--{name} must be a finite number, got {value}")
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
        if self.resume_override_flags is not None:
            if not self.resume:
                raise ValueError("--resume_override_flags is set but --resume is False; pass --resume True")
            names = {f.name for f in dataclasses.fields(self)}
            unknown = [n for n in self.resume_overrides() if n not in names]
            if unknown or not self.resume_overrides():
                raise ValueError(f"--resume_override_flags must be a comma-separated list of flag names (without "
                                 f"'--'), got {self.resume_override_flags!r}" + (f"; unknown: {unknown}" if unknown else ""))
        self._check_probe_flags()
        if self.num_images_in_input != 2:
            # The data pipeline and the released heads are built for third-person + wrist.
            raise ValueError(f"--num_images_in_input must be 2 (third-person + wrist), got {self.num_images_in_input}")
        if self.craft_anchor_cache and not self.use_craft:
            raise ValueError("--craft_anchor_cache True needs --use_craft True (it caches CRaFT's anchor features)")
        if self.use_craft and self.craft_anchor_cache and self.image_aug:
            raise ValueError("--craft_anchor_cache True needs --image_aug False (anchors depend on the exact input)")
        if self.use_craft and self.use_lora and self.lora_dropout > 0:
            raise ValueError(
                f"--lora_dropout {self.lora_dropout} cannot be used with --use_craft True: the current features would "
                "carry dropout noise that the anchor (θ0: adapters off, no dropout) never has, so the retention "
                "loss would count a noise floor no update can remove and λ would climb against it. Use "
                "--lora_dropout 0.0 (the upstream default)")
        if self.overwrite and self.resume:
            raise ValueError("--overwrite True starts the run over; it cannot be combined with --resume True")
        for name in ("run_id_override", "run_id_note"):
            check_path_component(name, getattr(self, name))
        from prismatic.vla.datasets.registry import resolve_dataset_mixture

        try:  # unknown / unsafe dataset names fail here, before any model is built
            resolve_dataset_mixture(self.dataset_name)
        except ValueError as e:
            raise ValueError(f"--dataset_name: {e}") from None
        # CRaFT flag validation lives with CRaFT's own config (names the offending --craft_* flag).
        self.craft_config()

    def _apply_upstream_flags(self) -> None:
        """Upstream VLA-Adapter's flags (facts §4.1): honoured with upstream's meaning, or an error naming the
        flag where they select something this stack does not implement (prismatic/upstream_flags.py)."""
        # Upstream's default --config_file_path / --vlm_path: first, so its message is the one a user sees.
        check_model_paths(self.vlm_path, self.config_file_path)
        check_fixed_flags(self, FINETUNE_FIXED)
        if self.use_pro_version is False and self.model_preset == "vla-adapter-pro":
            # Upstream's --use_pro_version False = the original head, i.e. this stack's vla-adapter preset.
            self.model_preset = "vla-adapter"
        if self.use_fz and self.use_lora:
            raise ValueError("--use_fz True is upstream's full fine-tuning: pass --use_lora False with it (full "
                             "fine-tuning here; the whole model is saved at every checkpoint)")
        if self.merge_lora_during_training is not None:
            if self.merge_lora_during_training and not self.save_merged_model:
                raise ValueError("--merge_lora_during_training True contradicts --save_merged_model False "
                                 "(the same switch; give one of them)")
            self.save_merged_model = self.merge_lora_during_training
        if self.resum_vla_path is not None and not self.resume:
            raise ValueError(f"--resum_vla_path {self.resum_vla_path} names a checkpoint to continue: pass "
                             f"--resume True with it")
        if self.val_fraction is None:
            self.val_fraction = 0.05 if self.use_val_set else 0.0
        if not (math.isfinite(self.val_fraction) and 0.0 <= self.val_fraction < 1.0):
            raise ValueError(f"--val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.use_val_set and self.val_fraction == 0.0:
            raise ValueError("--use_val_set True needs held-out episodes: --val_fraction must be > 0 (e.g. 0.05)")
        for name in ("val_freq", "val_time_limit"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")

    def _check_probe_flags(self) -> None:
        if self.probe_freq < 0:
            raise ValueError(f"--probe_freq must be >= 0 (0 = no retention probe), got {self.probe_freq}")
        if self.probe_batch_size < 1:
            raise ValueError(f"--probe_batch_size must be >= 1, got {self.probe_batch_size}")
        if self.probe_freq == 0:
            return
        if not self.probe_data:
            raise ValueError(f"--probe_freq {self.probe_freq} needs --probe_data: a VQA / caption dataset directory "
                             "(docs/RETENTION_PROBE.md; e.g. written by prismatic.vla.datasets.vqa.ensure_vqa_dataset)")
        from pathlib import Path

        from prismatic.vla.datasets.vqa import META_FILE

        if not (Path(self.probe_data) / META_FILE).is_file():
            raise ValueError(f"--probe_data {self.probe_data}: not a VQA / caption dataset directory (no "
                             f"{META_FILE} there; docs/RETENTION_PROBE.md describes the layout)")

    def resumes_checkpoint_dir(self) -> bool:
        """--resume True naming a checkpoint directory (--resum_vla_path, or --config_file_path as upstream):
        the run's own config applies (resume_dir.config_for_checkpoint_dir, called by finetune.py)."""
        from prismatic.training.resume_dir import check_checkpoint_path, checkpoint_location

        if self.resume:
            check_checkpoint_path("--config_file_path", self.config_file_path)
            check_checkpoint_path("--resum_vla_path", self.resum_vla_path)
        return self.resume and (self.resum_vla_path is not None or checkpoint_location(self.config_file_path) is not None)

    def craft_config(self):
        from prismatic.training.craft.config import CraftConfig

        return CraftConfig.from_flat(
            prefix="craft_",
            enabled=self.use_craft,
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name.startswith("craft_")},
        )

    def resume_overrides(self) -> tuple[str, ...]:
        """The flag names of --resume_override_flags ("learning_rate, --max_grad_norm" -> both names)."""
        if not self.resume_override_flags:
            return ()
        return tuple(n.strip().removeprefix("--") for n in self.resume_override_flags.split(",") if n.strip())

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
