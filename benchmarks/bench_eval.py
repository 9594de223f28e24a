"""LIBERO evaluation throughput: simulator steps/s (rendering both cameras) and policy-inclusive episodes.

    python benchmarks/bench_eval.py                       # defaults: 256 px, num_envs 1 and 2, tiny model
    python benchmarks/bench_eval.py --steps 200 --episodes 4 --max_steps 64 --checkpoint runs/x--20000_chkpt

Part 1 (simulator): each worker builds the env and resets to an initial state (timed separately), then all
workers execute `--steps` zero-motion steps in chunks of 8, concurrently. Reported: total env steps/s.
Part 2 (episodes): `run_evaluation` with a VLA checkpoint (a random tiny one unless --checkpoint) for
`--episodes` episodes of `--max_steps` policy steps. Reported: episodes/min, env steps/s, and the share of
wall time spent in the policy (preprocessing + model, main process).
On a shared CPU machine numbers move by +-50 %; say so when quoting them.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

import prismatic  # noqa: F401  (torch before tensorflow)
from prismatic.eval.config import EvalConfig
from prismatic.eval.policies import build_vla_policy
from prismatic.eval.runner import run_evaluation
from prismatic.sim.libero.workers import EpisodeRequest, SimWorker


def bench_simulator(num_envs: int, steps: int, suite: str, task_id: int, resolution: int) -> dict:
    workers = [SimWorker(i) for i in range(num_envs)]
    try:
        t0 = time.perf_counter()
        for i, w in enumerate(workers):
            w.send("start_episode", request=asdict(EpisodeRequest(suite, task_id, i, resolution, num_steps_wait=0,
                                                                    max_steps=steps)))
        for w in workers:
            w.recv()
        build_reset_s = time.perf_counter() - t0
        chunk = np.zeros((8, 7))
        chunk[:, 6] = -1.0
        t0 = time.perf_counter()
        done = 0
        while done < steps:
            for w in workers:
                w.send("step", actions=chunk[: min(8, steps - done)])
            for w in workers:
                w.recv()
            done += min(8, steps - done)
        step_s = time.perf_counter() - t0
    finally:
        for w in workers:
            w.close()
    return {"num_envs": num_envs, "build_reset_s": build_reset_s, "steps_per_s": num_envs * steps / step_s}


class _TimedPolicy:
    def __init__(self, policy) -> None:
        self.policy, self.chunk_size, self.seconds, self.calls = policy, policy.chunk_size, 0.0, 0

    def predict(self, observations, instructions):
        t0 = time.perf_counter()
        out = self.policy.predict(observations, instructions)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return out


def bench_episodes(num_envs: int, args, checkpoint: Path, out_dir: Path) -> dict:
    cfg = EvalConfig(pretrained_checkpoint=str(checkpoint), task_suite_name=args.suite, task_ids=[args.task_id],
                     num_trials_per_task=args.episodes, max_steps=args.max_steps, num_envs=num_envs,
                     env_img_res=args.resolution, save_videos="none", device=args.device,
                     local_log_dir=str(out_dir), run_id=f"bench-envs{num_envs}")
    vla = build_vla_policy(cfg)
    rng = np.random.default_rng(0)
    warm = {"agentview": rng.integers(0, 256, (args.resolution, args.resolution, 3), dtype=np.uint8),
            "wrist": rng.integers(0, 256, (args.resolution, args.resolution, 3), dtype=np.uint8),
            "state": np.zeros(8, np.float32)}
    vla.predict([warm] * num_envs, ["warm up"] * num_envs)  # TF import + first-call costs stay out of the timing
    policy = _TimedPolicy(vla)
    t0 = time.perf_counter()
    outcome = run_evaluation(cfg, policy=policy)
    wall = time.perf_counter() - t0
    steps = sum(r.steps for r in outcome.results)
    errors = [r.error for r in outcome.results if r.error]
    if errors:
        raise RuntimeError(f"benchmark episodes failed: {errors[0]}")
    return {"num_envs": num_envs, "episodes_per_min": 60 * len(outcome.results) / wall, "env_steps_per_s": steps / wall,
            "policy_share": policy.seconds / wall, "policy_ms_per_call": 1000 * policy.seconds / max(policy.calls, 1),
            "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default="libero_spatial")
    parser.add_argument("--task_id", type=int, default=0)
    parser.add_argument("--resolution", type=int, default=256, help="camera resolution (protocol: 256)")
    parser.add_argument("--num_envs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=80, help="simulator steps per worker in part 1")
    parser.add_argument("--episodes", type=int, default=2, help="episodes in part 2")
    parser.add_argument("--max_steps", type=int, default=32, help="policy steps per episode in part 2")
    parser.add_argument("--checkpoint", default=None, help="VLA checkpoint dir (default: a random tiny model)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--skip_episodes", action="store_true", help="only run part 1")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    print(f"LIBERO simulator, {args.resolution} px, agentview + wrist rendering, {args.steps} steps per worker")
    for n in args.num_envs:
        r = bench_simulator(n, args.steps, args.suite, args.task_id, args.resolution)
        print(f"  num_envs={n}: {r['steps_per_s']:.2f} env steps/s total (env build + reset: {r['build_reset_s']:.1f} s)")
    if args.skip_episodes:
        return
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(args.checkpoint) if args.checkpoint else _tiny_checkpoint(Path(tmp), args.suite)
        print(f"Episodes with the VLA policy ({'tiny random' if not args.checkpoint else checkpoint}), "
              f"{args.episodes} x {args.max_steps} policy steps")
        for n in args.num_envs:
            r = bench_episodes(n, args, checkpoint, Path(tmp) / "logs")
            print(f"  num_envs={n}: {r['episodes_per_min']:.2f} episodes/min, {r['env_steps_per_s']:.2f} env steps/s, "
                  f"policy {r['policy_ms_per_call']:.0f} ms/call = {100 * r['policy_share']:.1f}% of {r['wall_s']:.0f} s "
                  f"(env builds included)")


def _tiny_checkpoint(tmp: Path, suite: str) -> Path:
    import torch

    from prismatic.models.config import get_preset
    from prismatic.models.loading import save_released_checkpoint
    from prismatic.models.processing import build_tiny_tokenizer
    from prismatic.models.vla import VLAAdapter

    torch.manual_seed(0)
    stats = {suite: {
        "action": {"q01": [-1.0] * 6 + [0.0], "q99": [1.0] * 7, "mask": [True] * 6 + [False]},
        "proprio": {"q01": [-1.0] * 8, "q99": [1.0] * 8}}}
    tokenizer = build_tiny_tokenizer(tmp / "tokenizer")
    return save_released_checkpoint(VLAAdapter(get_preset("tiny")), tmp / "ckpt", tokenizer, stats)


if __name__ == "__main__":
    main()
