"""`EvalConfig`: every flag of `experiments/robot/libero/run_libero_eval.py`, typed, commented, validated.

Flag names follow upstream's `GenerateConfig` (facts §7.1) so existing launch commands keep working. Changes:
`use_pro_version` defaults to None (= the checkpoint's head variant; upstream's True made original-head
checkpoints fail to load). Upstream's knobs for other model families / heads / quantisation are accepted with
the one value this stack implements (anything else is an error naming the flag: prismatic/upstream_flags.py).
Added: task_ids, num_envs, policy, max_steps, save_videos, device, run_id.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from prismatic.constants import LIBERO_MAX_STEPS
from prismatic.upstream_flags import EVAL_FIXED, check_fixed_flags

POLICIES = ("vla", "scripted")
VIDEO_MODES = ("all", "failures", "none")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class EvalConfig:
    # fmt: off
    # ---- policy ----
    policy: str = "vla"                          # vla (a checkpoint, run in this process) | scripted (privileged-state expert, run in the sim workers)
    pretrained_checkpoint: str = ""              # checkpoint (released VLA-Adapter layout or ours): a directory or a hub id, e.g. VLA-Adapter/LIBERO-Spatial-Pro; required for policy=vla
    hub_revision: str | None = None              # branch / tag / commit when --pretrained_checkpoint is a hub id (an id's own @rev suffix wins); None = main
    use_pro_version: bool | None = None          # head variant; None = whatever the checkpoint says (a mismatch with it is an error)
    use_proprio: bool = True                     # feed the 8-d proprio state (must match the checkpoint)
    num_images_in_input: int = 2                 # 2 = third-person + wrist, 1 = third-person only (must match the checkpoint)
    center_crop: bool = True                     # 0.9-area centre crop, resized back (use when the model was trained with image_aug)
    num_open_loop_steps: int = 8                 # actions of each predicted chunk executed before re-planning (<= chunk length)
    unnorm_key: str = ""                         # dataset-statistics key for un-normalising actions; "" = task_suite_name (or its _no_noops variant)
    device: str = "auto"                         # auto (CUDA if available, else CPU) | cpu | cuda; bf16 on CUDA, fp32 on CPU

    # ---- benchmark protocol (facts §7.2) ----
    task_suite_name: str = "libero_spatial"      # libero_spatial | libero_object | libero_goal | libero_10 | libero_90
    task_ids: list[int] | None = None            # evaluate only these task indices (e.g. [0,3]); None = all tasks of the suite
    num_trials_per_task: int = 50                # episodes per task; episode k starts from the suite's initial state k
    num_steps_wait: int = 10                     # dummy-action steps at the start of each episode while objects settle
    max_steps: int | None = None                 # cap on policy steps per episode; None = the suite's (220/280/300/520, libero_90: 400)
    env_img_res: int = 256                       # camera resolution rendered by the simulator (then resized to the model's input size)
    seed: int = 7                                # seeds python/numpy/torch (and the scripted expert, per episode)

    # ---- execution ----
    num_envs: int = 1                            # simulator worker processes run in parallel; observations are batched for the policy
    dry_run: bool = False                        # validate everything (checkpoint path / hub id, statistics key, suite), print the plan, exit 0 without simulating
    save_videos: str = "all"                     # all | failures | none (errors count as failures): agentview + wrist mp4s in <run dir>/videos

    # ---- output ----
    local_log_dir: str = "./experiments/logs"    # run directories are created here
    run_id: str | None = None                    # run directory name; None = EVAL-<suite>-<policy>-<timestamp>[--note]. Re-use it to resume
    run_id_note: str | None = None               # appended to a generated run id
    use_wandb: bool = False                      # log success rates to Weights & Biases
    wandb_entity: str | None = None              # W&B entity (team/user); None = your default
    wandb_project: str = "craft-vla-eval"        # W&B project

    # ---- upstream GenerateConfig flags (docs/EXPERIMENTS_AND_TRAINING.md, "Upstream flags") ----
    model_family: str = "openvla"                # upstream: model family; openvla (the VLA-Adapter checkpoints) is the only one
    use_l1_regression: bool = True               # upstream: True = L1-regression action head, the only head here (False: not supported)
    use_minivlm: bool = True                     # upstream: True = the Qwen2.5-0.5B VLA-Adapter, the only model here (False = OpenVLA-7B: not supported)
    num_diffusion_steps: int = 50                # upstream: only for a diffusion head (none here), so must stay 50
    use_film: bool = False                       # upstream: FiLM (True: not supported)
    load_in_8bit: bool = False                   # upstream: 8-bit quantised loading (True: not supported; bf16 on CUDA, fp32 on CPU)
    load_in_4bit: bool = False                   # upstream: 4-bit quantised loading (True: not supported)
    initial_states_path: str = "DEFAULT"         # upstream: DEFAULT = the suite's initial states, the only source here (a JSON path: not supported)
    save_version: str = "vla-adapter"            # upstream: the ./rollouts/<save_version>/ video folder; here videos go to <run dir>/videos, this label is kept in eval_config.json
    phase: str = "Inference"                     # upstream: the head's phase; evaluation always uses Inference
    # fmt: on

    def __post_init__(self) -> None:
        check_fixed_flags(self, EVAL_FIXED)  # upstream flags naming what this stack does not have
        if self.policy not in POLICIES:
            raise ValueError(f"--policy must be one of {POLICIES}, got {self.policy!r}")
        if self.policy == "vla" and not self.pretrained_checkpoint:
            raise ValueError("--pretrained_checkpoint is required for --policy vla (a checkpoint directory)")
        if self.task_suite_name not in LIBERO_MAX_STEPS:
            raise ValueError(f"--task_suite_name must be one of {tuple(LIBERO_MAX_STEPS)}, got {self.task_suite_name!r}")
        if self.task_ids is not None:
            self.task_ids = [int(t) for t in self.task_ids]
            if not self.task_ids:
                raise ValueError("--task_ids must not be empty (omit it to evaluate every task)")
            if any(t < 0 for t in self.task_ids):
                raise ValueError(f"--task_ids must be >= 0, got {self.task_ids}")
            if len(set(self.task_ids)) != len(self.task_ids):
                raise ValueError(f"--task_ids has duplicates: {self.task_ids}")
        for name in ("num_trials_per_task", "num_open_loop_steps", "env_img_res", "num_envs"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.num_steps_wait < 0:
            raise ValueError(f"--num_steps_wait must be >= 0, got {self.num_steps_wait}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"--max_steps must be >= 1 (or None for the suite's cap), got {self.max_steps}")
        if self.num_images_in_input not in (1, 2):
            raise ValueError(f"--num_images_in_input must be 1 or 2 (LIBERO has a third-person and a wrist camera), "
                             f"got {self.num_images_in_input}")
        if self.save_videos not in VIDEO_MODES:
            raise ValueError(f"--save_videos must be one of {VIDEO_MODES}, got {self.save_videos!r}")
        if self.device not in DEVICES:
            raise ValueError(f"--device must be one of {DEVICES}, got {self.device!r}")
        if self.run_id is not None and (not self.run_id or "/" in self.run_id or self.run_id in (".", "..")):
            raise ValueError(f"--run_id must be a plain directory name, got {self.run_id!r}")

    # ---- derived ----
    @property
    def suite_max_steps(self) -> int:
        """Policy-step cap per episode: the override, else the suite's published horizon."""
        return self.max_steps if self.max_steps is not None else LIBERO_MAX_STEPS[self.task_suite_name]

    def resolve_run_id(self) -> str:
        """The run directory name (generated once, then fixed on the config so it is saved with the run)."""
        if self.run_id is None:
            stamp = time.strftime("%Y_%m_%d-%H_%M_%S")
            self.run_id = f"EVAL-{self.task_suite_name}-{self.policy}-{stamp}"
            if self.run_id_note:
                self.run_id += f"--{self.run_id_note}"
        return self.run_id

    @property
    def run_dir(self) -> Path:
        return Path(self.local_log_dir) / self.resolve_run_id()


# Fields that change what an episode's outcome means; a resumed run must agree with the stored config on them.
PROTOCOL_FIELDS = (
    "policy", "pretrained_checkpoint", "hub_revision", "use_pro_version", "use_proprio", "num_images_in_input", "center_crop",
    "num_open_loop_steps", "unnorm_key", "task_suite_name", "num_steps_wait", "max_steps", "env_img_res", "seed",
)
