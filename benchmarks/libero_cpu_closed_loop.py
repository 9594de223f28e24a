"""A policy trained from scratch on a CPU, on scripted LIBERO demos, evaluated closed-loop in the simulator.

    python benchmarks/libero_cpu_closed_loop.py [--out runs/libero_cpu_closed_loop] [--demos_per_task 30]
        [--max_steps 2000] [--trials 6]

The same stages as `make demo-libero` (prismatic/eval/closed_loop.py) at a scale that fits in about an hour
on 2 cores: one libero_object task, 30 scripted demos, 2000 steps (batch 16) of the tiny preset for the
baseline and for CRaFT, 6 evaluation episodes each from the suite's standard initial states. Prints the
success rates and the wall time of every stage; finished stages are skipped on re-runs.
Measured with these defaults on 2 shared cores: 48 min; CRaFT 3/6 successes, baseline 0/6.
"""

import argparse
import logging
from pathlib import Path

import prismatic  # noqa: F401  (torch first)
from prismatic.eval.closed_loop import ClosedLoopSettings, run_closed_loop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/libero_cpu_closed_loop"))
    parser.add_argument("--task_ids", type=int, nargs="+", default=[0])
    parser.add_argument("--demos_per_task", type=int, default=30)
    parser.add_argument("--max_steps", type=int, default=2000)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--num_envs", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    settings = ClosedLoopSettings(out=args.out, task_ids=tuple(args.task_ids), demos_per_task=args.demos_per_task,
                                  max_steps=args.max_steps, batch_size=args.batch_size, trials_per_task=args.trials,
                                  num_envs=args.num_envs)
    print(run_closed_loop(settings))


if __name__ == "__main__":
    main()
