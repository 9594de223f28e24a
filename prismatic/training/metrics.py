"""Metric names, the progress-bar line, and the loggers (W&B, a local JSONL file).

W&B keys are the ones users already have in their dashboards (CRAFT_SPEC.md, "Metrics"). wandb is
imported lazily and only on rank 0; `wandb_mode=disabled` never imports it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from prismatic.jsonl import append_record, drop_torn_tail

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"

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
    # validation (--use_val_set): upstream's "VLA Val/" prefix on the train names
    "val_loss": "VLA Val/Loss",
    "val_curr_action_l1": "VLA Val/Curr Action L1 Loss",
    "val_next_actions_l1": "VLA Val/Next Actions L1 Loss",
    "val_retention_loss": "VLA Val/Retention Loss",
    "val_batches_count": "VLA Val/Val Batches Count",
    # retention probe (--probe_freq; prismatic/eval/retention_probe.py, PROBE_WANDB_KEYS)
    "probe_vqa_accuracy": "Probe/VQA Accuracy",
    "probe_caption_nll": "Probe/Caption NLL",
    "probe_linear_accuracy": "Probe/Linear Probe Accuracy",
    "probe_cka": "Probe/CKA to θ0",
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


def val_line(m: dict[str, float]) -> str:
    """`Val Loss: 0.1234 | Curr L1: 0.1000 | Next L1: 0.1300 [| Retention: 0.0100] | Batches: 12`."""
    parts = [f"Val Loss: {m['val_loss']:.4f}", f"Curr L1: {m['val_curr_action_l1']:.4f}",
             f"Next L1: {m['val_next_actions_l1']:.4f}"]
    if "val_retention_loss" in m:
        parts.append(f"Retention: {m['val_retention_loss']:.4f}")
    parts.append(f"Batches: {m['val_batches_count']:.0f}")
    return " | ".join(parts)


def probe_line(m: dict[str, float]) -> str:
    """`VQA: 0.8123 | Caption NLL: 0.4567 | Linear probe: 0.9012 [| CKA θ0: 0.9876]`."""
    parts = [f"VQA: {m['probe_vqa_accuracy']:.4f}", f"Caption NLL: {m['probe_caption_nll']:.4f}",
             f"Linear probe: {m['probe_linear_accuracy']:.4f}"]
    if "probe_cka" in m:
        parts.append(f"CKA θ0: {m['probe_cka']:.4f}")
    return " | ".join(parts)


class MetricsLogger:
    """Rank-0 sink for step metrics: W&B (online/offline/disabled) and `metrics.jsonl` in the run dir."""

    def __init__(self, run_dir: Path, mode: str, project: str, entity: str | None, run_name: str,
                 config: dict, resume_run_id: str | None, start_step: int):
        self.run_dir = run_dir
        self.jsonl = run_dir / METRICS_FILE
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
        """On resume, drop lines logged after the checkpoint (they will be logged again identically).
        Rewritten atomically (temp file, rename): a crash here leaves the old file."""
        rows = check_metrics_file(self.run_dir)
        if rows is None:
            return
        tmp = self.jsonl.with_name(self.jsonl.name + ".tmp")
        with tmp.open("w") as f:
            f.write("".join(json.dumps(row) + "\n" for row in rows if row["step"] <= step))
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.jsonl)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        with self.jsonl.open("a") as f:
            append_record(f, {"step": step, **metrics})
        if self.wandb_run is not None:
            self.wandb_run.log({WANDB_KEYS.get(k, k): v for k, v in metrics.items()}, step=step)

    def close(self) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish()


def _parse_rows(path: Path) -> list[dict]:
    rows = []
    for i, line in enumerate(path.read_text().splitlines()):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            int(row["step"])
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}, line {i + 1}: not a metrics record ({type(e).__name__}: {e}): "
                             f"{line[:200]!r}") from None
        rows.append(row)
    return rows


def check_metrics_file(run_dir: str | Path) -> list[dict] | None:
    """Before a resumed run appends to metrics.jsonl: drop a torn last line (a crash mid-write; warned) and
    check the rest, naming the file and line of a bad record. Returns the rows, None if there is no file."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return None
    drop_torn_tail(path)
    return _parse_rows(path)


def read_metrics(run_dir: str | Path) -> list[dict]:
    """All rows of a run's metrics.jsonl (used by benchmarks and plots). A torn last line (a run killed while
    writing it) is skipped with a warning; any other bad line is an error naming it."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        raise FileNotFoundError(f"no metrics.jsonl in {run_dir}")
    text = path.read_text()
    if text and not text.endswith("\n"):
        log.warning("ignoring a torn last line in %s: %r", path, text[text.rfind("\n") + 1:][:200])
        text = text[: text.rfind("\n") + 1]
    return [json.loads(line) for line in text.splitlines() if line]
