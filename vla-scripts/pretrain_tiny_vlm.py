"""Pretrain the tiny (or mid) preset's VLM on generated image-text data and write a native base-VLM directory.

    python vla-scripts/pretrain_tiny_vlm.py                                  # tiny preset -> runs/tiny_vlm
    python vla-scripts/pretrain_tiny_vlm.py --model_preset mid --out_dir runs/mid_vlm --max_steps 6000
    python vla-scripts/finetune.py --model_preset tiny --vlm_path runs/tiny_vlm ...   # then fine-tune it

Vision towers, projector and LLM (no action head) learn captions and closed-set questions about scenes drawn by
the synthetic LIBERO renderer (`prismatic/vla/datasets/vqa.py`; generated into --data_root, default
<out_dir>_vqa_data). At the end it reports held-out VQA accuracy (closed set, LM likelihood) with chance level,
and held-out caption NLL, and writes them to <out_dir>/pretrain_metrics.json. Every flag: --help;
docs/PRETRAIN_TINY_VLM.md explains the data, the numbers and the time.
"""

import logging

import draccus

import prismatic  # noqa: F401  (imports torch before anything that may import tensorflow)
from prismatic.cli import run_cli
from prismatic.training.vlm_pretrain import PretrainConfig, pretrain


@draccus.wrap()
def main(cfg: PretrainConfig) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    metrics = pretrain(cfg)
    held = metrics["heldout"]
    print(f"held-out VQA accuracy {held['vqa_accuracy']:.3f} (chance {held['chance_accuracy']:.3f}, "
          f"majority answer {metrics['heldout_majority_accuracy']:.3f}), caption NLL {held['caption_nll']:.3f}, "
          f"{metrics['train_seconds'] / 60:.1f} min of training")
    print(f"base VLM: {cfg.out_dir}")


if __name__ == "__main__":
    run_cli(main)
