"""Metric names, the progress-bar line, and the loggers (W&B, a local JSONL file).

W&B keys are the ones users already have in their dashboards (CRAFT_SPEC.md, "Metrics"). wandb is
imported lazily and only on rank 0; `wandb_mode=disabled` never imports it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

# internal metric name -> W&B key
WANDB_KEYS = {
    "loss": "VLA Train/Loss",
    "curr_action_l1": "VLA Train/Curr Action L1 Loss",
    "next_actions_l1": "VLA Train/Next Actions L1 Loss",
    "grad_norm": "VLA Train/Gradient Norm",
    "lr": "VLA Train/Learning Rate",
    "retention_loss": "CRaFT/Retention Loss",
    "retention_mse_raw": "CRaFT/Retention MSE Raw",
    "retention_mse_aq": "CRaFT/Retention MSE AQ",
    "lambda": "CRaFT/Lambda",
    "conflict_ratio": "CRaFT/Conflict Ratio",
    "grad_cosine": "CRaFT/Gradient Cosine",
    "projection_energy_removed": "CRaFT/Projection Energy Removed",
}


def progress_line(m: dict[str, float]) -> str:
    """`Loss: 0.1234 | λ: 0.050 | Conflict: 23.45% | GradNorm: 1.23 | LR: 5.00e-04` (CRaFT parts if present)."""
    parts = [f"Loss: {m['loss']:.4f}"]
    if "lambda" in m:
        parts.append(f"λ: {m['lambda']:.3f}")
    if "conflict_ratio" in m:
        parts.append(f"Conflict: {100 * m['conflict_ratio']:.2f}%")
    parts.append(f"GradNorm: {m['grad_norm']:.2f}")
    parts.append(f"LR: {m['lr']:.2e}")
    return " | ".join(parts)


class MetricsLogger:
    """Rank-0 sink for step metrics: W&B (online/offline/disabled) and `metrics.jsonl` in the run dir."""

    def __init__(self, run_dir: Path, mode: str, project: str, entity: str | None, run_name: str,
                 config: dict, resume_run_id: str | None, start_step: int):
        self.run_dir = run_dir
        self.jsonl = run_dir / "metrics.jsonl"
        self._truncate_after(start_step)
        self.wandb_run = None
        if mode != "disabled":
            import wandb  # lazy: only when logging is on

            self.wandb_run = wandb.init(
                project=project, entity=entity, name=run_name, config=config, mode=mode, dir=str(run_dir),
                id=resume_run_id, resume="allow" if resume_run_id else None,
            )

    @property
    def wandb_run_id(self) -> str | None:
        return self.wandb_run.id if self.wandb_run is not None else None

    def _truncate_after(self, step: int) -> None:
        """On resume, drop lines logged after the checkpoint (they will be logged again identically)."""
        if not self.jsonl.exists():
            return
        kept = [line for line in self.jsonl.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        self.jsonl.write_text("".join(line + "\n" for line in kept))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        with self.jsonl.open("a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.wandb_run is not None:
            self.wandb_run.log({WANDB_KEYS.get(k, k): v for k, v in metrics.items()}, step=step)

    def close(self) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish()


def read_metrics(run_dir: str | Path) -> list[dict]:
    """All rows of a run's metrics.jsonl (used by benchmarks and plots)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"no metrics.jsonl in {run_dir}")
    return [json.loads(line) for line in path.read_text().splitlines() if line]
