"""The whole loop on real simulator data (what `make demo-libero` runs), at the smallest size: one scripted
demo, a few training steps per method, one short evaluation episode per method, the table; then a re-run
that finds every stage done."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.sim]


def _demo(out: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "vla-scripts/demo_libero.py"), "--out", str(out), "--demos_per_task", "1",
           "--max_steps", "4", "--trials", "1", "--eval_max_steps", "8"]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1500)


def test_demo_libero_chain_then_everything_is_skipped(tmp_path):
    out = tmp_path / "loop"
    first = _demo(out)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    table = (out / "closed_loop_table.md").read_text()
    assert "| baseline |" in table and "| craft |" in table
    summary = json.loads((out / "data/libero_object_scripted/1.0.0/generation_summary.json").read_text())
    assert summary  # the generator's per-task accounting is there
    for variant in ("baseline", "craft"):
        ckpts = list((out / "runs" / variant).glob("*--4_chkpt"))
        assert len(ckpts) == 1, variant
        results = (out / "eval" / variant / f"EVAL-libero_object-{variant}" / "results.jsonl").read_text().splitlines()
        assert len(results) == 1 and json.loads(results[0])["error"] is None
    # CRaFT logged its retention loss against θ0; the baseline monitored it without constraining
    for variant in ("baseline", "craft"):
        run_dir = next(p for p in (out / "runs" / variant).iterdir() if p.is_dir() and not p.name.endswith("_chkpt"))
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert "retention_loss" in rows[-1]
        assert ("lambda" in rows[-1]) == (variant == "craft")

    second = _demo(out)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "demos exist" in second.stderr and second.stderr.count("checkpoint exists") == 2
