"""Does CRaFT keep the representation drift within its budget, at what cost in action loss?

    python benchmarks/craft_constraint.py [--steps 240] [--eps_fraction 0.3] [--out DIR]

1. Baseline: plain fine-tuning of the tiny preset on the generated dataset, with L_ret against θ0 measured
   every step but not constrained (`--monitor_retention True`).
2. ε := eps_fraction x (baseline mean L_ret over the last quarter of the run): a budget the baseline violates.
3. CRaFT with that ε (same seed, data order and schedule); η is set relative to ε (see --dual_lr_scale) so
   that λ can move by O(1) within a few steps of violation, whatever the absolute scale of L_ret.
Reported: mean L_ret over the last quarter / ε for both runs, and the ratio of final action losses
(mean of the last quarter). The last line is machine-readable:

    craft L_ret/eps: X.XX  baseline L_ret/eps: Y.YY  action-loss ratio: Z.ZZ
"""

from __future__ import annotations

import argparse
import logging
import statistics
from pathlib import Path

import prismatic  # noqa: F401
from prismatic.training.config import FinetuneConfig
from prismatic.training.metrics import read_metrics
from prismatic.training.train import train


def _run(args, out: Path, **overrides) -> list[dict]:
    cfg = FinetuneConfig(
        model_preset="tiny", dataset_name="libero_synthetic", data_root_dir=str(args.data_root),
        create_synthetic_dataset=True, run_root_dir=str(out), device="cpu", batch_size=args.batch_size,
        learning_rate=args.learning_rate, lr_warmup_steps=10, num_steps_before_decay=10**9, max_steps=args.steps,
        save_freq=args.steps, save_latest_checkpoint_only=True, shuffle_buffer_size=2000, image_aug=False,
        lora_rank=8, seed=args.seed, wandb_mode="disabled", wandb_log_freq=1, **overrides,
    )
    return read_metrics(train(cfg).run_dir)


def _last_quarter_mean(rows: list[dict], key: str) -> float:
    tail = rows[-max(1, len(rows) // 4):]
    return statistics.fmean(r[key] for r in tail)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=240)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--eps_fraction", type=float, default=0.3, help="ε as a fraction of the baseline's drift")
    parser.add_argument("--dual_lr_scale", type=float, default=1.0, help="η = dual_lr_scale / ε")
    parser.add_argument("--lambda_max", type=float, default=100.0)
    parser.add_argument("--data_root", type=Path, default=Path(".cache/data"))
    parser.add_argument("--out", type=Path, default=Path("runs/craft_constraint"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    baseline = _run(args, args.out / "baseline", monitor_retention=True)
    drift = _last_quarter_mean(baseline, "retention_loss")
    eps = args.eps_fraction * drift
    print(f"baseline drift (mean L_ret, last quarter): {drift:.4e}  ->  eps = {eps:.4e}")
    craft = _run(args, args.out / "craft", use_craft=True, craft_retention_budget=eps,
                 craft_dual_lr=args.dual_lr_scale / eps, craft_lambda_max=args.lambda_max)

    craft_ret = _last_quarter_mean(craft, "retention_loss")
    base_loss, craft_loss = _last_quarter_mean(baseline, "loss"), _last_quarter_mean(craft, "loss")
    print(f"{'run':<9} {'L_ret (last 1/4)':>17} {'L_ret/eps':>10} {'action L1 (last 1/4)':>21} {'final λ':>8}")
    print(f"{'baseline':<9} {drift:>17.4e} {drift / eps:>10.2f} {base_loss:>21.4f} {'-':>8}")
    print(f"{'craft':<9} {craft_ret:>17.4e} {craft_ret / eps:>10.2f} {craft_loss:>21.4f} {craft[-1]['lambda']:>8.3f}")
    print(f"craft L_ret/eps: {craft_ret / eps:.2f}  baseline L_ret/eps: {drift / eps:.2f}  "
          f"action-loss ratio: {craft_loss / base_loss:.2f}")


if __name__ == "__main__":
    main()
