"""Run the retention probe (held-out VQA accuracy, caption NLL, linear probes, CKA to θ0) on one model.

    # a fine-tuning checkpoint of ours (merged VLM; θ0 rebuilt from the run's --vlm_path and --seed)
    python vla-scripts/retention_probe.py --checkpoint runs/<run id>--<step>_chkpt --probe_data data/vqa_tiny
    # a Prismatic base VLM (the pretrained model itself)
    python vla-scripts/retention_probe.py --vlm_path runs/tiny_vlm --model_preset tiny --probe_data data/vqa_tiny

What each number measures, the data layout and how to run it on the real base VLM: docs/RETENTION_PROBE.md.
The same module runs inside fine-tuning (`finetune.py --probe_freq N --probe_data DIR`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

import prismatic  # noqa: F401  (torch before anything that may import tensorflow)
from prismatic.eval.retention_probe import load_base_vlm_target, load_checkpoint_target, probe_target
from prismatic.models.config import PRESETS

logger = logging.getLogger("retention_probe")


def resolve_runtime(device: str, precision: str) -> tuple[torch.device, torch.dtype | None]:
    """--device / --precision -> (device, autocast dtype or None). Weights stay fp32."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was requested but torch sees no CUDA device")
    if precision == "auto":
        precision = "bf16" if device == "cuda" else "fp32"
    return torch.device(device), torch.bfloat16 if precision == "bf16" else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", help="a fine-tuning checkpoint directory (runs/<run id>--<step>_chkpt) or a "
                       "released VLA-Adapter directory")
    which.add_argument("--vlm_path", help="a Prismatic base-VLM directory (checkpoints/*.pt + tokenizer files)")
    parser.add_argument("--probe_data", required=True, help="the VQA / caption dataset directory (meta.json, "
                        "train/, heldout/; prismatic.vla.datasets.vqa layout)")
    parser.add_argument("--model_preset", default="vla-adapter-pro", choices=PRESETS,
                        help="with --vlm_path: the model's sizes (default: %(default)s)")
    parser.add_argument("--tokenizer_dir", help="with --vlm_path: where the tokenizer files are (default: --vlm_path)")
    parser.add_argument("--reference_vlm_path", help="with --checkpoint: the base VLM of θ0 for CKA (default: the "
                        "--vlm_path in the checkpoint's finetune_config.json)")
    parser.add_argument("--seed", type=int, default=7, help="with --vlm_path: seeds the (untrained) action queries "
                        "C_AQ reads, as finetune.py --seed does (default: %(default)s)")
    parser.add_argument("--layer_idx", type=int, help="LLM layer m of C_R (default: the run's "
                        "--craft_anchor_layer_idx, else num_layers // 2)")
    parser.add_argument("--pooling", choices=("mean", "max"), help="token pooling (default: the run's "
                        "--craft_pooling, else mean)")
    parser.add_argument("--batch_size", type=int, default=16, help="samples per forward pass (default: %(default)s)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                        help="autocast dtype (auto: bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--output_json", type=Path, help="also write every number to this JSON file")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch_size must be >= 1, got {args.batch_size}")
    if args.checkpoint and args.tokenizer_dir:
        parser.error("--tokenizer_dir goes with --vlm_path (a checkpoint holds its tokenizer)")
    if args.vlm_path and args.reference_vlm_path:
        parser.error("--reference_vlm_path goes with --checkpoint (with --vlm_path, θ0 is the model itself)")
    if not (Path(args.probe_data) / "meta.json").is_file():
        parser.error(f"--probe_data {args.probe_data}: not a VQA / caption dataset directory (no meta.json)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    device, autocast_dtype = resolve_runtime(args.device, args.precision)
    if args.checkpoint:
        target = load_checkpoint_target(args.checkpoint, device, args.reference_vlm_path)
    else:
        target = load_base_vlm_target(args.vlm_path, args.model_preset, device, args.seed, args.tokenizer_dir)
    result = probe_target(target, args.probe_data, device, args.batch_size, autocast_dtype, args.layer_idx,
                          args.pooling)
    print(f"retention probe of {target.description} on {args.probe_data}:")
    print("\n".join("  " + line for line in result.lines()))
    if args.output_json is not None:
        args.output_json.parent.mkdir(parents=True, exist_ok=True)
        args.output_json.write_text(json.dumps({"model": target.description, "probe_data": str(args.probe_data),
                                                **result.__dict__}, indent=2, sort_keys=True))
        print(f"wrote {args.output_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
