"""The whole loop on real simulator data, on a CPU: scripted demos -> fine-tune (baseline, CRaFT) -> evaluate
in LIBERO -> table. Used by `make demo-libero` (a few minutes) and `benchmarks/libero_cpu_closed_loop.py`
(about an hour).

Each stage runs the project's own command-line tool in a subprocess (so the generator's and evaluator's
simulator workers never share a process with TensorFlow) and is skipped when its output already exists, so an
interrupted run continues where it stopped:

    OUT/data/<suite>_scripted/1.0.0/        generate_libero_demos.py
    OUT/runs/<variant>/...--<steps>_chkpt   finetune.py  (variant: baseline | craft)
    OUT/eval/<variant>/<run_id>/            run_libero_eval.py (summary.json, results.jsonl, log)
    OUT/closed_loop_table.md                the table
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
VARIANTS = ("baseline", "craft")


@dataclass
class ClosedLoopSettings:
    out: Path  # everything goes under this directory
    suite: str = "libero_object"
    task_ids: tuple[int, ...] = (0,)
    demos_per_task: int = 10
    img_size: int = 128  # camera resolution of the generated demos (the model resizes to its own size)
    num_workers: int = 2  # simulator processes for generation
    seed: int = 0
    model_preset: str = "tiny"
    max_steps: int = 400
    batch_size: int = 8
    learning_rate: float = 1e-3
    lora_rank: int = 8
    image_aug: bool = False
    craft_args: tuple[str, ...] = ("--craft_retention_budget", "0.05")
    trials_per_task: int = 3
    eval_max_steps: int | None = None  # None: the suite's standard horizon
    num_envs: int = 1
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def dataset_name(self) -> str:
        return f"{self.suite}_scripted"


def _run(cmd: list[str], log_file: Path) -> None:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    log.info("$ %s", " ".join(cmd))
    with log_file.open("w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    if proc.returncode != 0:
        tail = log_file.read_text()[-3000:]
        raise RuntimeError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n--- {log_file} (tail) ---\n{tail}")


def generate(s: ClosedLoopSettings) -> Path:
    data = s.out / "data"
    target = data / s.dataset_name / "1.0.0"
    if (target / "generation_summary.json").exists():
        log.info("demos exist: %s", target)
        return data
    _run([sys.executable, str(ROOT / "vla-scripts/generate_libero_demos.py"), "--task_suite_name", s.suite,
          "--task_ids", *map(str, s.task_ids), "--demos_per_task", str(s.demos_per_task), "--out", str(data),
          "--img_size", str(s.img_size), "--num_workers", str(s.num_workers), "--seed", str(s.seed)],
         s.out / "logs" / "generate.log")
    return data


def finetune(s: ClosedLoopSettings, variant: str, data: Path) -> Path:
    run_root = s.out / "runs" / variant
    run_id = f"{variant}-{s.dataset_name}"
    final = run_root / f"{run_id}--{s.max_steps}_chkpt"
    if final.is_dir():
        log.info("checkpoint exists: %s", final)
        return final
    cmd = [sys.executable, str(ROOT / "vla-scripts/finetune.py"), "--model_preset", s.model_preset,
           "--dataset_name", s.dataset_name, "--data_root_dir", str(data), "--run_root_dir", str(run_root),
           "--run_id_override", run_id, "--device", "cpu", "--batch_size", str(s.batch_size),
           "--learning_rate", str(s.learning_rate), "--lr_warmup_steps", "20",
           "--num_steps_before_decay", str(int(s.max_steps * 0.8)), "--max_steps", str(s.max_steps),
           "--save_freq", str(s.max_steps), "--save_latest_checkpoint_only", "True", "--lora_rank", str(s.lora_rank),
           "--image_aug", str(s.image_aug), "--shuffle_buffer_size", "5000", "--seed", str(s.seed),
           "--wandb_mode", "disabled", "--wandb_log_freq", "10"]
    if variant == "craft":
        cmd += ["--use_craft", "True", *s.craft_args]
    else:
        cmd += ["--monitor_retention", "True"]
    _run(cmd, s.out / "logs" / f"finetune-{variant}.log")
    return final


def evaluate(s: ClosedLoopSettings, variant: str, checkpoint: Path) -> dict:
    log_dir = s.out / "eval" / variant
    run_id = f"EVAL-{s.suite}-{variant}"
    summary = log_dir / run_id / "summary.json"
    cmd = [sys.executable, str(ROOT / "experiments/robot/libero/run_libero_eval.py"),
           "--pretrained_checkpoint", str(checkpoint), "--task_suite_name", s.suite,
           "--task_ids", "[" + ",".join(map(str, s.task_ids)) + "]", "--num_trials_per_task", str(s.trials_per_task),
           "--unnorm_key", s.dataset_name, "--local_log_dir", str(log_dir), "--run_id", run_id,
           "--num_envs", str(s.num_envs), "--device", "cpu", "--save_videos", "failures"]
    if s.eval_max_steps is not None:
        cmd += ["--max_steps", str(s.eval_max_steps)]
    _run(cmd, s.out / "logs" / f"eval-{variant}.log")  # resumable: done episodes are skipped
    return json.loads(summary.read_text())


def _timed(s: ClosedLoopSettings, name: str, fn, *args):
    t0 = time.perf_counter()
    result = fn(*args)
    s.timings[name] = s.timings.get(name, 0.0) + time.perf_counter() - t0
    return result


def _final_metrics(run_dir: Path) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    tail = rows[-max(1, len(rows) // 4):]
    return {k: sum(r[k] for r in tail) / len(tail) for k in ("loss", "retention_loss") if k in tail[0]}


def run_closed_loop(s: ClosedLoopSettings) -> str:
    """Run every stage (skipping finished ones) and return the Markdown table (also written to OUT)."""
    s.out.mkdir(parents=True, exist_ok=True)
    data = _timed(s, "generate", generate, s)
    gen_summary = json.loads((data / s.dataset_name / "1.0.0" / "generation_summary.json").read_text())
    rows = []
    for variant in VARIANTS:
        ckpt = _timed(s, f"finetune-{variant}", finetune, s, variant, data)
        metrics = _final_metrics(ckpt.parent / ckpt.name.rsplit("--", 1)[0])
        summary = _timed(s, f"eval-{variant}", evaluate, s, variant, ckpt)
        rows.append((variant, metrics, summary))
    lines = [
        f"# Closed loop on CPU: {s.suite} tasks {list(s.task_ids)}, {s.demos_per_task} scripted demos/task, "
        f"{s.model_preset} preset, {s.max_steps} steps",
        "",
        f"Demos: {json.dumps(gen_summary.get('totals', {}))}",
        "",
        "| method | action L1 (last 1/4) | L_ret (last 1/4) | successes | episodes | success rate | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for variant, m, summ in rows:
        lines.append(f"| {variant} | {m.get('loss', float('nan')):.4f} | {m.get('retention_loss', float('nan')):.4f} "
                     f"| {summ['total_successes']} | {summ['total_episodes']} | {100 * summ['success_rate']:.1f}% "
                     f"| {summ['num_errors']} |")
    lines += ["", "Wall time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in s.timings.items())]
    table = "\n".join(lines) + "\n"
    (s.out / "closed_loop_table.md").write_text(table)
    return table
