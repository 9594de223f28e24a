"""Constants shared across the package, in one place.

Only true constants live here (protocol values, file names). Everything that depends on the robot
platform or model size (action dim, chunk length, proprio dim, number of patches) is a config field
derived from `VLAConfig`, never sniffed from the command line.
"""

# Label value ignored by losses (kept for compatibility with HF conventions).
IGNORE_INDEX = -100

# Qwen chat-template pieces used to build the policy prompt (facts §2.4). The prompt ends with
# "<|im_start|>assistant\n"; the action-query placeholders follow it.
QWEN_SYSTEM_PROMPT = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
IM_START, IM_END, END_OF_TEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"

# Image normalisation constants (facts §2.1). DINO uses the bf16-rounded ImageNet statistics that the
# released checkpoints were trained with; SigLIP uses 0.5 / 0.5.
DINO_MEAN = (0.484375, 0.455078125, 0.40625)
DINO_STD = (0.228515625, 0.2236328125, 0.224609375)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)

# Normalisation: BOUNDS_Q99 maps [q01, q99] to [-1, 1] (facts §2.9).
NORMALIZATION_EPS = 1e-8

# LIBERO evaluation horizons per suite (facts §7.2; longest training demo in the comment).
LIBERO_MAX_STEPS = {
    "libero_spatial": 220,  # longest demo 193
    "libero_object": 280,  # longest demo 254
    "libero_goal": 300,  # longest demo 270
    "libero_10": 520,  # longest demo 505
    "libero_90": 400,
}
LIBERO_DUMMY_ACTION = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0)  # sent during the settle ("wait") steps

# Checkpoint file names (facts §5; upstream-compatible names).
DATASET_STATISTICS_FILE = "dataset_statistics.json"
ACTION_HEAD_FILE = "action_head--{step}_checkpoint.pt"
PROPRIO_PROJECTOR_FILE = "proprio_projector--{step}_checkpoint.pt"
RELEASED_ACTION_HEAD_FILE = "action_head--checkpoint.pt"
RELEASED_PROPRIO_PROJECTOR_FILE = "proprio_projector--checkpoint.pt"
MERGED_MODEL_FILE = "model.safetensors"
VLA_CONFIG_FILE = "vla_config.json"
LORA_ADAPTER_DIR = "lora_adapter"
ACTION_QUERIES_FILE = "action_queries.safetensors"
TRAINING_STATE_FILE = "training_state.pt"
FINETUNE_CONFIG_FILE = "finetune_config.json"
MANIFEST_FILE = "manifest.json"  # sha256 of every file of our checkpoints (prismatic/models/manifest.py)
