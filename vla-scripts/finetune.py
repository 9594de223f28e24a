"""Fine-tune a VLA-Adapter-style policy, optionally with CRaFT.

    # single process (CPU or one GPU)
    python vla-scripts/finetune.py --model_preset tiny --dataset_name libero_synthetic \
        --data_root_dir data --create_synthetic_dataset True --use_craft True --max_steps 50
    # multi-GPU
    torchrun --standalone --nproc_per_node 4 vla-scripts/finetune.py --model_preset vla-adapter-pro \
        --vlm_path pretrained_models/prism-qwen25-extra-dinosiglip-224px-0_5b \
        --config_file_path pretrained_models/configs --data_root_dir data/libero \
        --dataset_name libero_spatial_no_noops --use_lora True --lora_rank 64 --batch_size 16 \
        --learning_rate 2e-4 --use_craft True

Every flag: `python vla-scripts/finetune.py --help` (docs/EXPERIMENTS_AND_TRAINING.md explains them). Upstream
VLA-Adapter's flags and README commands are accepted ("Upstream flags" there); upstream's resume command, a
checkpoint directory as --config_file_path with --resume True, continues that run:

    python vla-scripts/finetune.py --config_file_path runs/<run id>--10000_chkpt --resume True --max_steps 20000
"""

import logging
import os
import sys

import draccus

import prismatic  # noqa: F401  (imports torch before anything that may import tensorflow)
from prismatic.cli import run_cli
from prismatic.training.config import FinetuneConfig
from prismatic.training.resume_dir import config_for_checkpoint_dir, given_flags
from prismatic.training.train import train


@draccus.wrap()
def main(cfg: FinetuneConfig) -> None:
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s",
    )
    # Upstream's resume command names a checkpoint directory: continue that run with its own config.
    cfg = config_for_checkpoint_dir(cfg, given_flags(sys.argv[1:]))
    if cfg.dry_run:  # check everything, print the plan, train nothing
        from prismatic.training.dry_run import plan_run

        plan = plan_run(cfg)
        if rank == 0:
            print("\n".join(plan.lines()))
        return
    result = train(cfg)
    if rank == 0:
        m = result.final_metrics
        print(f"final step {result.final_step}: action loss {m.get('loss', float('nan')):.4f}"
              + (f", retention loss {m['retention_loss']:.4f}, lambda {m['lambda']:.3f}" if "lambda" in m else ""))
        print(f"run dir: {result.run_dir}")
        print(f"checkpoint: {result.last_checkpoint}")


if __name__ == "__main__":
    run_cli(main)
