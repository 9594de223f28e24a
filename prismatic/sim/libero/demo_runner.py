"""Demo generation over many demos: the configuration, the spawned worker pools that run the two passes of
`demo_generation.py`, and the per-task summary (attempts, successes, failure reasons, throughput).

Runs in the generator's main process, which never simulates: the simulator lives in spawned workers
(`make_worker_pool`), and this module imports neither tensorflow nor the simulator.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from prismatic.sim.libero.demo_generation import (
    INIT_SOURCES,
    DemoJob,
    DemoRecord,
    RenderedDemo,
    SlotResult,
    init_worker,
    render_demo,
    simulate_demo,
)

logger = logging.getLogger(__name__)


@dataclass
class GenerationConfig:
    """What `vla-scripts/generate_libero_demos.py` generates."""

    task_suite_name: str  # "libero_object" or "libero_spatial"
    task_ids: list[int]  # tasks of the suite; each must be supported by the expert
    demos_per_task: int  # successful demonstrations kept per task
    out: str  # data root: the dataset goes to out/<name>/<version>/
    img_size: int = 256  # square camera resolution of both images (the published data: 256)
    num_workers: int = 2  # spawned simulator processes
    seed: int = 0  # every expert / layout seed is derived from it, the task and the demo index
    name: str | None = None  # dataset name; default "<suite>_scripted"
    init_source: str = "random"  # "random" (fresh layouts) or "benchmark" (the suite's fixed eval states)
    max_attempts_per_demo: int = 6  # rejection-sampling budget per demo
    attempts_per_init: int = 2  # attempts on one initial state before drawing another (random inits)
    diversity: float = 1.0  # expert style randomisation, 0 (one nominal trajectory) .. 1
    max_replans: int = 1  # expert re-plans after a failed grasp / drop / timeout within one attempt
    num_steps_wait: int = 10  # settle steps before recording (as the evaluation protocol)
    version: str = "1.0.0"  # RLDS version directory

    def __post_init__(self) -> None:
        from prismatic.sim.libero.scripted_expert import (
            SUPPORTED_TASKS,
            UNSUPPORTED_SUITES,
            UnsupportedTaskError,
            check_task_supported,
        )

        if self.task_suite_name in UNSUPPORTED_SUITES:
            raise UnsupportedTaskError(f"task_suite_name={self.task_suite_name!r} is not supported by the scripted "
                                       f"expert: {UNSUPPORTED_SUITES[self.task_suite_name]}")
        if self.task_suite_name not in SUPPORTED_TASKS:
            raise ValueError(f"task_suite_name={self.task_suite_name!r} is not a LIBERO suite the scripted expert "
                             f"supports ({sorted(SUPPORTED_TASKS)})")
        if not self.task_ids:
            raise ValueError("task_ids must name at least one task")
        if len(set(self.task_ids)) != len(self.task_ids):
            raise ValueError(f"task_ids has duplicates: {self.task_ids}")
        for task_id in self.task_ids:
            check_task_supported(self.task_suite_name, task_id)
        positive = ("demos_per_task", "img_size", "num_workers", "max_attempts_per_demo", "attempts_per_init")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.img_size < 16:
            raise ValueError(f"img_size must be >= 16 pixels, got {self.img_size}")
        if self.init_source not in INIT_SOURCES:
            raise ValueError(f"init_source must be one of {INIT_SOURCES}, got {self.init_source!r}")
        if not 0.0 <= self.diversity <= 1.0:
            raise ValueError(f"diversity must be in [0, 1], got {self.diversity}")
        if self.max_replans < 0 or self.num_steps_wait < 0:
            raise ValueError("max_replans and num_steps_wait must be >= 0")
        if self.name is None:
            self.name = f"{self.task_suite_name}_scripted"

    def jobs(self) -> list[DemoJob]:
        return [DemoJob(suite_name=self.task_suite_name, task_id=t, slot=k, seed=self.seed,
                        init_source=self.init_source, max_attempts=self.max_attempts_per_demo,
                        attempts_per_init=self.attempts_per_init, diversity=self.diversity,
                        max_replans=self.max_replans, num_steps_wait=self.num_steps_wait)
                for t in self.task_ids for k in range(self.demos_per_task)]


def make_worker_pool(num_workers: int):
    """A ProcessPoolExecutor of spawned simulator workers (`init_worker` checks they never hold tensorflow)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    # spawn: a fresh interpreter per worker (a fork would inherit the parent's TF / GL state).
    return ProcessPoolExecutor(max_workers=num_workers, mp_context=mp.get_context("spawn"), initializer=init_worker)


def _ordered_map(executor, fn, items, window: int):
    """Like executor.map, but with at most `window` items in flight (rendered episodes are large)."""
    from collections import deque

    items = iter(items)
    pending = deque()
    for item in items:
        pending.append(executor.submit(fn, *item))
        if len(pending) >= window:
            break
    while pending:
        result = pending.popleft().result()
        nxt = next(items, None)
        if nxt is not None:
            pending.append(executor.submit(fn, *nxt))
        yield result


def simulate_demos(jobs: list[DemoJob], num_workers: int) -> list[SlotResult]:
    """Simulate pass over all slots in spawned workers; results in job order."""
    with make_worker_pool(num_workers) as pool:
        results = []
        for i, result in enumerate(_ordered_map(pool, simulate_demo, ((job,) for job in jobs), 2 * num_workers)):
            results.append(result)
            last = result.attempts[-1]
            logger.info("[%d/%d] task %d demo %d: %s after %d attempt(s)", i + 1, len(jobs), result.job.task_id,
                        result.job.slot, "kept" if result.record is not None else f"MISSING ({last.failure_reason})",
                        len(result.attempts))
        return results


def render_demos(records: list[DemoRecord], img_size: int, num_workers: int, replay_tolerance: float = 0.0):
    """Render pass: yields RenderedDemo in record order (a generator; the pool lives while it is consumed)."""
    with make_worker_pool(num_workers) as pool:
        items = ((record, img_size, replay_tolerance) for record in records)
        yield from _ordered_map(pool, render_demo, items, 2 * num_workers)


def summarize(config: GenerationConfig, results: list[SlotResult], rendered: list[RenderedDemo],
              timings: dict[str, float]) -> dict:
    """Per-task attempts / successes / failure reasons, kept-episode statistics and throughput."""
    tasks = {}
    for task_id in config.task_ids:
        mine = [r for r in results if r.job.task_id == task_id]
        attempts = [a for r in mine for a in r.attempts]
        kept = [r.record for r in mine if r.record is not None]
        reasons: dict[str, int] = {}
        for a in attempts:
            if not a.success:
                reasons[a.failure_reason] = reasons.get(a.failure_reason, 0) + 1
        lengths = [len(k.actions) for k in kept]
        tasks[str(task_id)] = {
            "instruction": kept[0].instruction if kept else None,
            "requested": config.demos_per_task,
            "kept": len(kept),
            "missing": config.demos_per_task - len(kept),
            "attempts": len(attempts),
            "successful_attempts": sum(a.success for a in attempts),
            "attempt_success_rate": sum(a.success for a in attempts) / max(len(attempts), 1),
            "failure_reasons": dict(sorted(reasons.items())),
            "steps": {"mean": float(np.mean(lengths)), "min": int(min(lengths)), "max": int(max(lengths))}
            if lengths else None,
            "replans_in_kept": int(sum(a.replans for a in attempts if a.success)),
            "noops_dropped": int(sum(a.noops_dropped for a in attempts)),
        }
    kept_total = sum(t["kept"] for t in tasks.values())
    sim_busy = sum(r.seconds for r in results)
    render_busy = sum(r.seconds for r in rendered)
    return {
        "dataset": config.name,
        "config": {k: getattr(config, k) for k in config.__dataclass_fields__},
        "tasks": tasks,
        "totals": {
            "requested": config.demos_per_task * len(config.task_ids),
            "kept": kept_total,
            "attempts": sum(t["attempts"] for t in tasks.values()),
            "transitions": int(sum(len(r.record.actions) for r in results if r.record is not None)),
        },
        "replay": {"max_state_diff": max((r.max_state_diff for r in rendered), default=0.0),
                   "episodes_rendered": len(rendered)},
        "timing": {
            **{k: round(v, 2) for k, v in timings.items()},
            # busy seconds summed over workers (env building included): demos per minute of ONE worker.
            "simulate_demos_per_min_per_worker": kept_total / (sim_busy / 60) if sim_busy else None,
            "render_demos_per_min_per_worker": len(rendered) / (render_busy / 60) if render_busy else None,
        },
    }
