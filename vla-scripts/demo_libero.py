"""`make demo-libero`: the whole loop on real LIBERO simulator data, small enough for a CPU.

    python vla-scripts/demo_libero.py [--out runs/demo_libero] [--demos_per_task 5] [--max_steps 300] [--trials 2]

Generates scripted demos for one libero_object task, fine-tunes the tiny preset (baseline and CRaFT),
evaluates both in the simulator with the standard protocol and prints a table. Re-running continues where
an interrupted run stopped. See prismatic/eval/closed_loop.py.
"""

import argparse
import logging
from pathlib import Path

import prismatic  # noqa: F401  (torch first)
from prismatic.eval.closed_loop import ClosedLoopSettings, run_closed_loop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/demo_libero"))
    parser.add_argument("--task_ids", type=int, nargs="+", default=[0])
    parser.add_argument("--demos_per_task", type=int, default=5)
    parser.add_argument("--max_steps", type=int, default=300)
    parser.add_argument("--trials", type=int, default=2, help="evaluation episodes per task and method")
    parser.add_argument("--eval_max_steps", type=int, default=None, help="step cap (default: the suite's horizon)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    settings = ClosedLoopSettings(out=args.out, task_ids=tuple(args.task_ids), demos_per_task=args.demos_per_task,
                                  max_steps=args.max_steps, trials_per_task=args.trials,
                                  eval_max_steps=args.eval_max_steps)
    print(run_closed_loop(settings))


if __name__ == "__main__":
    main()
