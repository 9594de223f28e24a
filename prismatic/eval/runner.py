"""The LIBERO evaluation loop: episodes spread over simulator workers, policy batched in this process.

    run_evaluation(cfg) -> EvalOutcome

Order of work: validate the selection (suite, task ids, initial states) and load the policy FIRST, so bad
input fails before any simulator starts; then resume bookkeeping; then the episode loop.

The loop runs in lock-step rounds: every busy worker has one request in flight (start an episode, or
execute the open-loop part of a chunk); the round collects all replies, the workers that need actions are
batched into ONE policy call, and each gets its chunk back. An episode's outcome depends only on (task,
initial state, policy), never on which worker ran it or what ran before, so a deterministic policy gives the
same per-episode outcomes for any --num_envs.

Errors: an exception in the simulator, a crashed worker, or a policy that raises ends that episode with an
`error` (its traceback) — recorded, logged as "Episode error: ...", counted as a failure in the success
rate and listed separately in the summary. A failing batched policy call is retried per episode so the
error lands on the episode that caused it.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
import traceback
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from prismatic.eval.config import PROTOCOL_FIELDS, EvalConfig
from prismatic.eval.policies import BatchPolicy, build_vla_policy
from prismatic.eval.results import CONFIG_FILE, RESULTS_FILE, VIDEO_DIR, EpisodeResult, EvalRecorder, read_results
from prismatic.eval.video import should_save_video, video_filename
from prismatic.sim.libero.workers import EpisodeRequest, SimWorker, WorkerDied, WorkerError

logger = logging.getLogger(__name__)


@dataclass
class EvalOutcome:
    run_dir: Path
    summary: dict  # summary.json's content
    results: list[EpisodeResult] = field(default_factory=list)  # episodes run by THIS call, in finishing order


def set_seed_everywhere(seed: int) -> None:
    """Seed python, numpy and torch (all devices) and make cuDNN deterministic (upstream's set_seed_everywhere)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    os.environ["PYTHONHASHSEED"] = str(seed)


def episode_seed(seed: int, task_id: int, episode: int) -> int:
    """A per-episode seed for in-worker policies, independent of scheduling."""
    return int(np.random.SeedSequence([seed, task_id, episode]).generate_state(1)[0])


def select_episodes(cfg: EvalConfig) -> tuple[dict[int, str], dict[int, list[int]]]:
    """Check the suite / task ids / trial count against LIBERO's task definitions (no simulator needed).
    Returns ({task_id: instruction}, {task_id: [episode indices]})."""
    from prismatic.sim.libero.env import get_initial_states, get_task_suite

    suite = get_task_suite(cfg.task_suite_name)
    task_ids = cfg.task_ids if cfg.task_ids is not None else list(range(suite.n_tasks))
    bad = [t for t in task_ids if not 0 <= t < suite.n_tasks]
    if bad:
        raise ValueError(f"--task_ids {bad} out of range: {cfg.task_suite_name} has {suite.n_tasks} tasks "
                         f"(0..{suite.n_tasks - 1})")
    names, episodes = {}, {}
    for task_id in task_ids:
        num_states = len(get_initial_states(cfg.task_suite_name, task_id))
        if cfg.num_trials_per_task > num_states:
            raise ValueError(f"--num_trials_per_task {cfg.num_trials_per_task} exceeds the {num_states} initial states "
                             f"of {cfg.task_suite_name} task {task_id}")
        names[task_id] = suite.get_task(task_id).language
        episodes[task_id] = list(range(cfg.num_trials_per_task))
    return names, episodes


def _config_record(cfg: EvalConfig) -> dict:
    record = asdict(cfg)
    if record["pretrained_checkpoint"] and Path(record["pretrained_checkpoint"]).exists():  # hub ids stay ids
        record["pretrained_checkpoint"] = str(Path(record["pretrained_checkpoint"]).resolve())
    return record


def check_resume(run_dir: Path, cfg: EvalConfig) -> None:
    """A run directory that already holds results may only be continued with the same protocol flags."""
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        if (run_dir / RESULTS_FILE).is_file():
            raise ValueError(f"{run_dir} holds {RESULTS_FILE} but no {CONFIG_FILE}; refusing to mix runs")
        return
    stored = json.loads(path.read_text())
    current = _config_record(cfg)
    diff = {k: (stored.get(k), current[k]) for k in PROTOCOL_FIELDS if stored.get(k) != current[k]}
    if diff:
        details = ", ".join(f"{k}: stored {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise ValueError(f"cannot resume {run_dir}: protocol flags differ ({details}); use another --run_id")


def _write_config(run_dir: Path, cfg: EvalConfig) -> None:
    tmp = run_dir / (CONFIG_FILE + ".tmp")
    tmp.write_text(json.dumps(_config_record(cfg), indent=2))
    tmp.replace(run_dir / CONFIG_FILE)


@dataclass
class _Slot:
    """One worker and the episode it is running."""

    worker: SimWorker
    task_id: int = -1
    episode: int = -1
    instruction: str = ""
    t0: float = 0.0
    steps: int = 0
    obs: dict | None = None
    busy: bool = False  # an episode is assigned
    in_flight: bool = False  # a request is waiting for its reply


class _EpisodeLoop:
    def __init__(self, cfg: EvalConfig, policy: BatchPolicy | str, recorder: EvalRecorder, task_names: dict[int, str]):
        self.cfg = cfg
        self.policy = policy
        self.in_worker = isinstance(policy, str)
        self.recorder = recorder
        self.task_names = task_names
        self.video_dir = recorder.run_dir / VIDEO_DIR
        self.results: list[EpisodeResult] = []

    def _request(self, task_id: int, episode: int) -> EpisodeRequest:
        return EpisodeRequest(self.cfg.task_suite_name, task_id, episode, self.cfg.env_img_res, self.cfg.num_steps_wait,
                              self.cfg.suite_max_steps, record_video=self.cfg.save_videos != "none")

    def _begin(self, slot: _Slot, task_id: int, episode: int) -> None:
        slot.task_id, slot.episode, slot.instruction = task_id, episode, self.task_names[task_id]
        slot.t0, slot.steps, slot.obs, slot.busy = time.monotonic(), 0, None, True
        request = asdict(self._request(task_id, episode))
        if self.in_worker:
            command = ("run_policy_episode", dict(request=request, policy=self.policy,
                                                  seed=episode_seed(self.cfg.seed, task_id, episode)))
        else:
            command = ("start_episode", dict(request=request))
        try:
            slot.worker.send(command[0], **command[1])
        except WorkerDied:  # it died while idle (after its last reply): replace it, the episode has not begun
            logger.warning("simulator worker %d had died; restarting it", slot.worker.index)
            slot.worker.restart()
            slot.worker.send(command[0], **command[1])
        slot.in_flight = True

    def _finish(self, slot: _Slot, success: bool = False, error: str | None = None, worker_dead: bool = False) -> None:
        result = EpisodeResult(slot.task_id, slot.instruction, slot.episode, bool(success) and error is None,
                               slot.steps, time.monotonic() - slot.t0, error,
                               final_state=None if slot.obs is None else [float(x) for x in slot.obs["state"]])
        if not worker_dead:
            path = None
            if should_save_video(self.cfg.save_videos, result.success):
                name = video_filename(slot.task_id, slot.episode, result.success, slot.instruction, error is not None)
                path = str(self.video_dir / name)
            try:
                result.video_path = slot.worker.end_episode(path)["video_path"]
            except WorkerError as e:
                result.success, result.error = False, _join(result.error, f"saving the video failed: {e}\n"
                                                                          f"{e.remote_traceback}")
            except WorkerDied as e:
                result.success, result.error = False, _join(result.error, f"saving the video failed: {e}")
                worker_dead = True
        slot.busy, slot.in_flight, slot.obs = False, False, None
        self.recorder.record(result)  # before a restart, which may itself fail and end the run
        self.results.append(result)
        if worker_dead:
            slot.worker.restart()

    def _collect(self, slot: _Slot) -> bool:
        """Receive a slot's reply. Returns True when the slot now needs actions from the policy."""
        slot.in_flight = False
        try:
            reply = slot.worker.recv()
        except WorkerError as e:
            self._finish(slot, error=f"{e}\n{e.remote_traceback}")
            return False
        except WorkerDied as e:
            self._finish(slot, error=f"WorkerDied: {e}", worker_dead=True)
            return False
        if self.in_worker:
            slot.instruction, slot.steps = reply["instruction"], reply["steps"]
            slot.obs = {"state": reply["final_state"]}
            self._finish(slot, success=reply["success"])
            return False
        if "instruction" in reply:  # the reply to start_episode
            slot.instruction = reply["instruction"]
        slot.obs = reply["obs"]
        slot.steps = reply.get("steps", 0)
        if reply.get("episode_over", False):
            self._finish(slot, success=reply["done"])
            return False
        return True

    def _predict(self, slots: list[_Slot]) -> list[np.ndarray | str]:
        """One batched policy call; on failure, per-slot calls so each error is attributed. Returns per slot
        either the actions to execute (num_open_loop_steps, 7) or an error traceback."""
        n = self.cfg.num_open_loop_steps
        try:
            chunks = self._checked(self.policy.predict([s.obs for s in slots], [s.instruction for s in slots]), len(slots))
            return [c[:n] for c in chunks]
        except Exception:
            if len(slots) == 1:
                return [traceback.format_exc()]
        logger.warning("batched policy call failed; retrying the %d episodes one by one", len(slots))
        out: list[np.ndarray | str] = []
        for s in slots:
            try:
                out.append(self._checked(self.policy.predict([s.obs], [s.instruction]), 1)[0][:n])
            except Exception:
                out.append(traceback.format_exc())
        return out

    def _checked(self, chunks, batch: int) -> np.ndarray:
        chunks = np.asarray(chunks, dtype=np.float64)
        n = self.cfg.num_open_loop_steps
        if chunks.ndim != 3 or chunks.shape[0] != batch or chunks.shape[2] != 7 or chunks.shape[1] < n:
            raise ValueError(f"policy returned actions of shape {chunks.shape}; expected ({batch}, >= {n}, 7)")
        if not np.all(np.isfinite(chunks)):
            raise ValueError("policy returned non-finite actions")
        return chunks

    def run(self, todo: list[tuple[int, int]]) -> list[EpisodeResult]:
        queue = deque(todo)
        slots: list[_Slot] = []
        try:
            for i in range(min(self.cfg.num_envs, len(queue))):
                slots.append(_Slot(SimWorker(i)))
            while queue or any(s.busy for s in slots):
                for slot in slots:
                    if not slot.busy and queue:
                        self._begin(slot, *queue.popleft())
                need_actions = [s for s in slots if s.in_flight and self._collect(s)]
                if need_actions:
                    for slot, actions in zip(need_actions, self._predict(need_actions)):
                        if isinstance(actions, str):
                            self._finish(slot, error=actions)
                        else:
                            try:
                                slot.worker.send("step", actions=actions)
                                slot.in_flight = True
                            except WorkerDied as e:
                                self._finish(slot, error=f"WorkerDied: {e}", worker_dead=True)
        finally:
            for slot in slots:
                slot.worker.close()
        return self.results


def _join(first: str | None, second: str) -> str:
    return second if first is None else f"{first}\n{second}"


def run_evaluation(cfg: EvalConfig, policy: BatchPolicy | str | None = None) -> EvalOutcome:
    """Evaluate `cfg`. `policy` overrides the one the flags name: a `BatchPolicy` object (runs here, batched)
    or an in-worker policy spec ("scripted" or "module:factory")."""
    if cfg.dry_run:
        raise ValueError("--dry_run True simulates nothing: use prismatic.eval.dry_run.plan_evaluation(cfg) "
                         "(run_libero_eval.py does)")
    task_names, episodes = select_episodes(cfg)
    if policy is None:
        policy = build_vla_policy(cfg) if cfg.policy == "vla" else cfg.policy
    if not isinstance(policy, str) and getattr(policy, "chunk_size", cfg.num_open_loop_steps) < cfg.num_open_loop_steps:
        raise ValueError(f"--num_open_loop_steps {cfg.num_open_loop_steps} exceeds the policy's chunk size "
                         f"{policy.chunk_size}")
    set_seed_everywhere(cfg.seed)
    run_dir = cfg.run_dir
    check_resume(run_dir, cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_config(run_dir, cfg)
    previous = read_results(run_dir / RESULTS_FILE)
    recorder = EvalRecorder(run_dir, f"{cfg.resolve_run_id()}.txt", cfg.task_suite_name, task_names, episodes, previous)
    try:
        todo = [(t, e) for t, eps in episodes.items() for e in eps if (t, e) not in recorder.done]
        recorder.line(f"Task suite: {cfg.task_suite_name}")
        skipped = sum(len(eps) for eps in episodes.values()) - len(todo)
        if skipped:
            recorder.line(f"Resuming: {skipped} episodes already completed, {len(todo)} to run")
        loop = _EpisodeLoop(cfg, policy, recorder, task_names)
        results = loop.run(todo) if todo else []
        summary = recorder.summarize()
    finally:
        recorder.close()
    if cfg.use_wandb:
        _log_wandb(cfg, summary)
    return EvalOutcome(run_dir, summary, results)


def _log_wandb(cfg: EvalConfig, summary: dict) -> None:
    import wandb

    run = wandb.init(entity=cfg.wandb_entity, project=cfg.wandb_project, name=cfg.resolve_run_id(),
                     config=_config_record(cfg))
    metrics = {"success_rate/total": summary["success_rate"]}
    for entry in summary["per_task"].values():
        metrics[f"success_rate/{entry['task']}"] = entry["success_rate"]
        metrics[f"num_episodes/{entry['task']}"] = entry["episodes"]
    run.log(metrics)
    run.finish()
