"""Worker-side helpers of the demo tests (run inside spawned simulator workers; never import tensorflow)."""

from __future__ import annotations

import dataclasses

from prismatic.sim.libero import demo_generation as gen


def live_and_replayed(job: gen.DemoJob, img_size: int, num_steps: int) -> dict:
    """Simulate `job` without cameras (the generator's first pass), then
    (a) roll the same attempt out LIVE with cameras on, capturing the frames the env returns, and
    (b) render the recorded demo the generator's way (re-execution in a fresh camera env),
    both for the first `num_steps` steps."""
    result = gen.simulate_demo(job)
    record = result.record
    assert record is not None, f"the expert failed every attempt: {result.attempts}"
    env, instruction = gen.get_worker_env(job.suite_name, job.task_id, img_size)
    reset_seed, init_state = gen.initial_state_from_label(env, job.suite_name, job.task_id, record.init_label)
    live, _ = gen.rollout(env, instruction, dataclasses.replace(job, max_steps=num_steps), result.attempts[-1].attempt,
                          reset_seed, init_state, record.init_label, capture_images=True)
    replayed = gen.render_demo(record, img_size, num_steps=num_steps)
    return {"record": record, "live": live, "replayed": replayed}
