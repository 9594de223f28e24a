"""Generate the synthetic LIBERO-format RLDS dataset (learnable pick-up tasks; see prismatic/vla/datasets/synthetic.py).

    python vla-scripts/make_synthetic_libero_rlds.py --out data --tasks 4 --episodes-per-task 10 \
        [--name libero_synthetic] [--image-size 128] [--seed 0]

writes data/<name>/1.0.0/ (tfds RLDS, the published LIBERO field names), readable by RLDSDataset with
`--dataset_name <name>`. The name must be "libero_synthetic" or start with it (registry naming rule), or be
registered with a LIBERO-layout spec. Re-running with the same arguments is a no-op; different arguments
for an existing directory are an error.
"""

from __future__ import annotations

import argparse
import logging

import prismatic  # noqa: F401  (torch before tensorflow)
from prismatic.vla.datasets.synthetic import MAX_TASKS, ensure_synthetic_dataset


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="data root directory (the dataset goes to OUT/NAME/1.0.0)")
    parser.add_argument("--tasks", type=int, required=True, help=f"number of tasks (1..{MAX_TASKS})")
    parser.add_argument("--episodes-per-task", type=int, required=True, help="demonstrations per task")
    parser.add_argument("--name", default="libero_synthetic", help="dataset name (default: libero_synthetic)")
    parser.add_argument("--image-size", type=int, default=128, help="square image size in pixels (default: 128)")
    parser.add_argument("--seed", type=int, default=0, help="generation seed (default: 0)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    path = ensure_synthetic_dataset(args.out, name=args.name, num_tasks=args.tasks,
                                    episodes_per_task=args.episodes_per_task, image_size=args.image_size,
                                    seed=args.seed)
    print(f"synthetic dataset ready: {path} ({args.tasks} tasks x {args.episodes_per_task} episodes, "
          f"{args.image_size}px)")


if __name__ == "__main__":
    main()
