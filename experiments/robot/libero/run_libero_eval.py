"""Evaluate a VLA checkpoint (or the scripted expert) in the LIBERO simulator.

    python experiments/robot/libero/run_libero_eval.py \
        --pretrained_checkpoint runs/<run>--20000_chkpt --task_suite_name libero_spatial [--num_envs 2]

Every flag is a field of `prismatic.eval.config.EvalConfig` (upstream's names). Output: a run directory
under --local_log_dir with the upstream-format log, results.jsonl, summary.json and videos; re-run with the
same --run_id to resume. This module must not import tensorflow at the top level: the simulator workers are
spawned processes that re-import the main module.
"""

import logging
import sys

import draccus

from prismatic.cli import run_cli
from prismatic.eval.config import EvalConfig
from prismatic.eval.runner import run_evaluation


@draccus.wrap()
def main(cfg: EvalConfig) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    if cfg.dry_run:  # check everything, print the plan, start no simulator
        from prismatic.eval.dry_run import plan_evaluation

        print("\n".join(plan_evaluation(cfg).lines()))
        return
    outcome = run_evaluation(cfg)
    s = outcome.summary
    print(f"{s['task_suite_name']}: {s['total_successes']}/{s['total_episodes']} successes "
          f"({s['success_rate'] * 100:.1f}%), {s['num_errors']} episodes with errors; results in {outcome.run_dir}")


if __name__ == "__main__":
    run_cli(main)
