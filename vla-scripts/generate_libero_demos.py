"""Generate scripted LIBERO demonstrations as an RLDS dataset in the published LIBERO layout.

    python vla-scripts/generate_libero_demos.py --task_suite_name libero_object --task_ids 0 1 2 \
        --demos_per_task 10 --out data --img_size 256 --num_workers 2 --seed 0 [--name libero_object_scripted]

writes OUT/NAME/1.0.0/ (tfds RLDS: image / wrist_image JPEG rotated by 180 degrees, state (8,), joint_state (7,),
raw env actions with the gripper -1 open / +1 close, language_instruction, episode_metadata/file_path) plus
generation_summary.json in the same directory (attempts, successes and failure reasons per task, throughput).
The summary is also printed. Train on it with `--dataset_name NAME`: names of the form `libero_*_scripted` (the
default) resolve to the LIBERO layout; register any other name with
`prismatic.vla.datasets.registry.register_libero_dataset(NAME)`.

Pipeline (prismatic/sim/libero/demo_generation.py): simulate without cameras in spawned workers (rejection
sampling, only successes kept), then re-execute the kept demos with both cameras on and check the replay
reproduces the recorded simulator states exactly. This process never runs the simulator; it only writes the
RLDS files (tensorflow is imported lazily by the writer, after the workers are spawned from a clean module).
Unsupported tasks (see prismatic/sim/libero/scripted_expert.py) are refused up front.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import prismatic  # noqa: F401  (torch before tensorflow)
from prismatic.sim.libero.demo_generation import INIT_SOURCES
from prismatic.sim.libero.demo_runner import GenerationConfig, render_demos, simulate_demos, summarize
from prismatic.sim.libero.scripted_expert import SUPPORTED_TASKS, UnsupportedTaskError

SUMMARY_FILE = "generation_summary.json"


def parse_config(argv: list[str] | None) -> GenerationConfig:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task_suite_name", required=True,
                        help=f"LIBERO suite the expert supports: {sorted(SUPPORTED_TASKS)}")
    parser.add_argument("--task_ids", type=int, nargs="+", default=None,
                        help="task ids (default: every task the expert supports in the suite)")
    parser.add_argument("--demos_per_task", type=int, required=True, help="successful demos kept per task")
    parser.add_argument("--out", required=True, help="data root; the dataset goes to OUT/NAME/VERSION")
    parser.add_argument("--img_size", type=int, default=256, help="camera resolution in pixels (default 256)")
    parser.add_argument("--num_workers", type=int, default=2, help="simulator worker processes (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="generation seed (default 0)")
    parser.add_argument("--name", default=None, help="dataset name (default <suite>_scripted)")
    parser.add_argument("--init_source", choices=INIT_SOURCES, default="random",
                        help="random: fresh layouts from LIBERO's sampler (default); benchmark: the suite's "
                             "fixed evaluation initial states")
    parser.add_argument("--max_attempts_per_demo", type=int, default=6, help="rejection-sampling budget per demo")
    parser.add_argument("--attempts_per_init", type=int, default=2,
                        help="attempts on one initial state before drawing a new one")
    parser.add_argument("--diversity", type=float, default=1.0,
                        help="expert style randomisation: 0 = one nominal trajectory per layout, 1 = full")
    parser.add_argument("--max_replans", type=int, default=1, help="expert re-plans within one attempt")
    parser.add_argument("--version", default="1.0.0", help="RLDS version directory (default 1.0.0)")
    parser.add_argument("--simulate_only", action="store_true",
                        help="measure the controller: run the simulate pass only (no rendering, nothing written "
                             "but OUT/NAME.simulate_summary.json); with --max_attempts_per_demo 1 the attempt "
                             "success rate is the expert's success rate")
    args = parser.parse_args(argv)
    task_ids = args.task_ids if args.task_ids is not None else list(SUPPORTED_TASKS.get(args.task_suite_name, ()))
    try:
        config = GenerationConfig(
            task_suite_name=args.task_suite_name, task_ids=task_ids, demos_per_task=args.demos_per_task,
            out=args.out, img_size=args.img_size, num_workers=args.num_workers, seed=args.seed, name=args.name,
            init_source=args.init_source, max_attempts_per_demo=args.max_attempts_per_demo,
            attempts_per_init=args.attempts_per_init, diversity=args.diversity, max_replans=args.max_replans,
            version=args.version,
        )
    except (ValueError, UnsupportedTaskError) as e:
        parser.error(str(e))
    return config, args.simulate_only


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)  # atomic


def format_summary(summary: dict) -> str:
    lines = [f"{'task':>4}  {'kept':>9}  {'attempts':>8}  {'success':>7}  {'steps (mean/min/max)':>20}  failures"]
    for task_id, t in summary["tasks"].items():
        steps = "-" if t["steps"] is None else f"{t['steps']['mean']:.0f}/{t['steps']['min']}/{t['steps']['max']}"
        failures = ", ".join(f"{k}: {v}" for k, v in t["failure_reasons"].items()) or "-"
        lines.append(f"{task_id:>4}  {t['kept']:>4}/{t['requested']:<4}  {t['attempts']:>8}  "
                     f"{t['attempt_success_rate']:>7.0%}  {steps:>20}  {failures}")
    timing = summary["timing"]
    per_min = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    lines.append(f"kept {summary['totals']['kept']}/{summary['totals']['requested']} demos "
                 f"({summary['totals']['transitions']} transitions); replay max state diff "
                 f"{summary['replay']['max_state_diff']:.1e}")
    line = (f"simulate {timing['simulate_s']:.0f} s ({per_min(timing['simulate_demos_per_min_per_worker'])} "
            f"demos/min/worker)")
    if "render_and_write_s" in timing:
        line += (f", render+write {timing['render_and_write_s']:.0f} s "
                 f"({per_min(timing['render_demos_per_min_per_worker'])} demos/min/worker)")
    lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    config, simulate_only = parse_config(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    target = Path(config.out) / config.name / config.version
    if target.exists() and not simulate_only:  # checked before minutes of simulation, not only by the writer
        raise SystemExit(f"dataset already exists: {target} (choose another --out / --name / --version)")
    start = time.perf_counter()
    results = simulate_demos(config.jobs(), config.num_workers)
    simulate_s = time.perf_counter() - start
    if simulate_only:
        summary = summarize(config, results, [], {"simulate_s": simulate_s})
        Path(config.out).mkdir(parents=True, exist_ok=True)
        _write_json(Path(config.out) / f"{config.name}.simulate_summary.json", summary)
        print(format_summary(summary))
        return summary
    records = [r.record for r in results if r.record is not None]
    if not records:
        raise SystemExit(f"no successful demonstration for {config.task_suite_name} tasks {config.task_ids}; "
                         f"nothing written")
    rendered = []

    def episodes():
        for demo in render_demos(records, config.img_size, config.num_workers):
            rendered.append(demo)
            yield demo.episode
            demo.episode = None  # consumed by the writer; keep only the statistics

    from prismatic.vla.datasets.rlds_writer import write_rlds_dataset  # imports tensorflow (main process only)

    start = time.perf_counter()
    path = write_rlds_dataset(config.out, config.name, episodes(), config.img_size, version=config.version)
    summary = summarize(config, results, rendered,
                        {"simulate_s": simulate_s, "render_and_write_s": time.perf_counter() - start})
    _write_json(path / SUMMARY_FILE, summary)
    print(f"wrote {len(rendered)} episodes to {path}")
    print(format_summary(summary))
    missing = summary["totals"]["requested"] - summary["totals"]["kept"]
    if missing:
        print(f"WARNING: {missing} demo(s) missing after {config.max_attempts_per_demo} attempts each "
              f"(see {path / SUMMARY_FILE})", file=sys.stderr)
    return summary


if __name__ == "__main__":
    main()
