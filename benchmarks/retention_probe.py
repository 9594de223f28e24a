"""Retention on CPU: does fine-tuning a pretrained tiny VLM into a policy lose what it knew, and does CRaFT keep it?

    python benchmarks/retention_probe.py [--vlm_dir runs/tiny_vlm] [--max_steps 200] [--use_lora False]

1. the pretrained tiny VLM: reused from --vlm_dir, or pretrained there first
   (`prismatic.training.vlm_pretrain.ensure_pretrained_tiny_vlm`, vla-scripts/pretrain_tiny_vlm.py; about 10
   minutes on 2 cores the first time);
2. the generated LIBERO-format dataset (`libero_synthetic`, prismatic/vla/datasets/synthetic.py);
3. fine-tune the tiny VLA from that VLM twice, same steps, seed and data order: a baseline (L_ret monitored
   against θ0, not constrained: --monitor_retention True) and CRaFT with the budget ε set BELOW the drift the
   baseline ended with (ε = --budget_fraction x the baseline's last L_ret, so the constraint is active);
4. the retention probe (prismatic/eval/retention_probe.py; docs/RETENTION_PROBE.md) on a generated VQA /
   caption set of new scenes (--probe_scenes, --probe_seed; or --probe_data), for the pretrained model and at the last step of both runs (--probe_freq in the runs), and
   the action L1 on held-out episodes (--use_val_set) next to the L_ret each run ended with.

Prints one table (pretrained / baseline / CRaFT for each probe metric, action L1, L_ret) and, last,

    retention probe VQA: pretrained X.XX  baseline Y.YY  craft Z.ZZ

Everything lands in --work_dir (default runs/retention_probe_bench: data/, probe_data/, runs/, results.json). Whatever the
numbers show is reported as is; docs/RETENTION_PROBE.md discusses what they showed here and why.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

import torch

import prismatic  # noqa: F401  (torch before anything that may import tensorflow)

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("retention_probe_bench")

METRIC_ROWS = (  # (label, results key, format)
    ("VQA accuracy (held-out)", "vqa_accuracy", "{:.4f}"),
    ("caption NLL (nats/token)", "caption_nll", "{:.4f}"),
    ("linear-probe accuracy", "linear_probe_accuracy", "{:.4f}"),
    ("CKA to θ0", "cka", "{:.4f}"),
    ("action L1 (held-out episodes)", "val_action_l1", "{:.4f}"),
    ("action L1 (train, last step)", "train_action_l1", "{:.4f}"),
    ("L_ret (last step)", "retention_loss", "{:.3g}"),
    ("λ (last step)", "lambda", "{:.3f}"),
)


def _bool(text: str) -> bool:
    values = {"true": True, "false": False}
    if text.lower() not in values:
        raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")
    return values[text.lower()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vlm_dir", default="runs/tiny_vlm", help="the pretrained tiny VLM: reused as is if it holds "
                        "a finished pretraining (pretrain_metrics.json), else pretrained there with the pretraining's "
                        "defaults (default: %(default)s)")
    parser.add_argument("--probe_data", help="the VQA / caption set to probe on (default: one generated into "
                        "--work_dir with --probe_scenes and seed --probe_seed: new scenes, the pretraining's held-out "
                        "(colour, shape) combinations still held out); e.g. the pretraining's own set")
    parser.add_argument("--probe_scenes", default="800,200", help="train,held-out scenes of the generated probe set "
                        "(default: %(default)s)")
    parser.add_argument("--probe_seed", type=int, default=1, help="seed of the generated probe set (the pretraining "
                        "data uses 0 by default; default: %(default)s)")
    parser.add_argument("--work_dir", default="runs/retention_probe_bench", help="data, runs and results.json")
    parser.add_argument("--max_steps", type=int, default=200, help="fine-tuning steps of each run (default: %(default)s)")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--use_lora", type=_bool, default=False, help="True: LoRA on the VLM; False (default): "
                        "full fine-tuning")
    parser.add_argument("--lora_rank", type=int, default=16)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--budget_fraction", type=float, default=0.25, help="CRaFT's ε = this x the baseline's "
                        "last L_ret (must be in (0, 1): below the baseline's drift; default: %(default)s)")
    parser.add_argument("--craft_retention_weight", type=float, default=1.0, help="CRaFT's initial λ")
    parser.add_argument("--craft_dual_lr", type=float, default=0.01, help="CRaFT's dual step size η")
    parser.add_argument("--probe_freq", type=int, default=0, help="also probe every this many steps during the "
                        "runs (0: only at the last step)")
    parser.add_argument("--num_threads", type=int, default=2, help="torch CPU threads (default: %(default)s)")
    args = parser.parse_args(argv)
    if not 0 < args.budget_fraction < 1:
        parser.error(f"--budget_fraction must be in (0, 1) (ε below the baseline's drift), got {args.budget_fraction}")
    for name in ("max_steps", "batch_size", "lora_rank", "num_threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    try:
        args.probe_scenes = tuple(int(n) for n in args.probe_scenes.split(","))
    except ValueError:
        parser.error(f"--probe_scenes must be two integers 'train,held-out', got {args.probe_scenes!r}")
    if len(args.probe_scenes) != 2 or min(args.probe_scenes) < 1:
        parser.error(f"--probe_scenes must be two positive integers 'train,held-out', got {args.probe_scenes}")
    if args.probe_freq < 0:
        parser.error(f"--probe_freq must be >= 0, got {args.probe_freq}")
    return args


def _finetune(args: argparse.Namespace, name: str, vlm_dir: Path, data_root: Path, probe_data: Path, **extra):
    """One in-process fine-tuning run; returns (TrainResult, its metrics.jsonl rows, seconds)."""
    from prismatic.training.config import FinetuneConfig
    from prismatic.training.metrics import read_metrics
    from prismatic.training.train import train

    cfg = FinetuneConfig(
        model_preset="tiny", vlm_path=str(vlm_dir), dataset_name="libero_synthetic", data_root_dir=str(data_root),
        run_root_dir=str(Path(args.work_dir) / "runs"), run_id_override=name, overwrite=True, device="cpu",
        batch_size=args.batch_size, learning_rate=args.learning_rate, max_steps=args.max_steps,
        save_freq=args.max_steps, save_latest_checkpoint_only=True, shuffle_buffer_size=1000, image_aug=False,
        use_lora=args.use_lora, lora_rank=args.lora_rank, seed=args.seed, wandb_mode="disabled",
        wandb_log_freq=max(1, args.max_steps // 20),
        use_val_set=True, val_fraction=0.1, val_freq=args.max_steps,
        probe_freq=args.probe_freq or args.max_steps, probe_data=str(probe_data), probe_batch_size=64, **extra)
    t0 = time.monotonic()
    result = train(cfg)
    return result, read_metrics(result.run_dir), time.monotonic() - t0


def _run_summary(rows: list[dict]) -> dict:
    last = rows[-1]
    out = {"vqa_accuracy": last["probe_vqa_accuracy"], "caption_nll": last["probe_caption_nll"],
           "linear_probe_accuracy": last["probe_linear_accuracy"], "cka": last.get("probe_cka"),
           "val_action_l1": last.get("val_loss"), "train_action_l1": last["loss"],
           "retention_loss": last.get("retention_loss"), "lambda": last.get("lambda")}
    out["probe_curve"] = [{"step": r["step"], "vqa_accuracy": r["probe_vqa_accuracy"], "cka": r.get("probe_cka"),
                           "retention_loss": r.get("retention_loss")} for r in rows if "probe_vqa_accuracy" in r]
    return out


def _cell(value, fmt: str) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else fmt.format(value)


def render_table(results: dict) -> str:
    columns = ("pretrained", "baseline", "craft")
    lines = [f"{'metric':<32}" + "".join(f"{c:>12}" for c in columns)]
    for label, key, fmt in METRIC_ROWS:
        lines.append(f"{label:<32}" + "".join(f"{_cell(results[c].get(key), fmt):>12}" for c in columns))
    v = {c: results[c]["vqa_accuracy"] for c in columns}
    lines.append(f"retention probe VQA: pretrained {v['pretrained']:.2f}  baseline {v['baseline']:.2f}  "
                 f"craft {v['craft']:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.num_threads)
    from prismatic.eval.retention_probe import load_base_vlm_target, probe_target
    from prismatic.training.vlm_pretrain import (
        PRETRAIN_METRICS_FILE,
        ensure_pretrained_tiny_vlm,
        read_pretrain_metrics,
    )
    from prismatic.vla.datasets.synthetic import ensure_synthetic_dataset

    t0 = time.monotonic()
    work = Path(args.work_dir)
    vlm_dir = Path(args.vlm_dir)
    if (vlm_dir / PRETRAIN_METRICS_FILE).is_file():  # a finished pretraining, whatever its settings: reused as is
        log.info("reusing the pretrained VLM in %s", vlm_dir)
    else:
        vlm_dir = ensure_pretrained_tiny_vlm(vlm_dir, preset="tiny")
    pretrain = read_pretrain_metrics(vlm_dir)
    if args.probe_data:
        probe_data = Path(args.probe_data)
    else:
        from prismatic.models.config import get_preset
        from prismatic.vla.datasets.vqa import ensure_vqa_dataset

        probe_data = ensure_vqa_dataset(work / "probe_data", image_size=get_preset("tiny").vision.image_size,
                                        num_train_scenes=args.probe_scenes[0],
                                        num_heldout_scenes=args.probe_scenes[1], seed=args.probe_seed)
    data_root = work / "data"
    ensure_synthetic_dataset(data_root, name="libero_synthetic")

    device = torch.device("cpu")
    pretrained = probe_target(load_base_vlm_target(vlm_dir, "tiny", device, seed=args.seed), probe_data, device, 64)
    log.info("pretrained: %s", " | ".join(pretrained.lines()))
    baseline, base_rows, base_s = _finetune(args, "baseline", vlm_dir, data_root, probe_data, monitor_retention=True)
    drift = base_rows[-1]["retention_loss"]
    budget = args.budget_fraction * drift
    log.info("baseline ended at L_ret %.4g: CRaFT budget ε = %.2f x %.4g = %.4g", drift, args.budget_fraction, drift,
             budget)
    craft, craft_rows, craft_s = _finetune(args, "craft", vlm_dir, data_root, probe_data, use_craft=True,
                                           craft_retention_budget=budget,
                                           craft_retention_weight=args.craft_retention_weight,
                                           craft_dual_lr=args.craft_dual_lr)
    results = {
        "pretrained": {"vqa_accuracy": pretrained.vqa_accuracy, "caption_nll": pretrained.caption_nll,
                       "linear_probe_accuracy": pretrained.linear_probe_accuracy, "cka": pretrained.cka,
                       "retention_loss": 0.0, "vqa_accuracy_by_type": pretrained.vqa_accuracy_by_type,
                       "vqa_chance": pretrained.vqa_chance},
        "baseline": {**_run_summary(base_rows), "seconds": base_s, "run_dir": str(baseline.run_dir)},
        "craft": {**_run_summary(craft_rows), "seconds": craft_s, "run_dir": str(craft.run_dir),
                  "budget": budget},
        "settings": {k: v for k, v in vars(args).items()},
        "pretrain": {"vlm_dir": str(vlm_dir), "heldout": pretrain.get("heldout"), "steps": pretrain.get("steps")},
        "probe_data": str(probe_data),
        "seconds": time.monotonic() - t0,
    }
    work.mkdir(parents=True, exist_ok=True)
    (work / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True))
    print(f"retention benchmark: tiny VLM {vlm_dir} ({pretrain.get('steps')} pretraining steps), "
          f"{args.max_steps} fine-tuning steps x batch {args.batch_size}, lr {args.learning_rate}, "
          f"{'LoRA r=' + str(args.lora_rank) if args.use_lora else 'full fine-tuning'}, seed {args.seed}; "
          f"CRaFT ε = {budget:.3g} ({args.budget_fraction} x the baseline's last L_ret {drift:.3g}); "
          f"VQA chance {pretrained.vqa_chance:.2f}; {results['seconds'] / 60:.1f} min; {work / 'results.json'}")
    print(render_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
