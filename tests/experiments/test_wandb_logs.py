"""Metric histories from W&B offline runs (read straight from the .wandb file), the public API and metrics.jsonl."""

import json
import struct

import pytest

from craft_experiments.common_utils import wandb_logs as wl

STEPS = 300  # enough records to cross several 32 KiB blocks


@pytest.fixture(scope="module")
def offline_runs(tmp_path_factory):
    """Two offline runs made by wandb itself: a long one, and a 'resumed' one re-logging steps 250.. later."""
    wandb = pytest.importorskip("wandb")
    root = tmp_path_factory.mktemp("wandb_runs")
    mp = pytest.MonkeyPatch()
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_SILENT", "true")
    try:
        settings = wandb.Settings(console="off")
        run = wandb.init(mode="offline", dir=str(root / "first"), project="craft-tests", settings=settings,
                         config={"craft_retention_budget": 0.05, "long_note": "x" * 70_000})  # a record over 2 blocks
        for step in range(STEPS):
            run.log({"VLA Train/Loss": 1.0 / (step + 1), "CRaFT/Lambda": 0.01 * step, "CRaFT/Retention Loss": 0.1,
                     "note": "not a number", "flag": True}, step=step)
        run.finish()
        run = wandb.init(mode="offline", dir=str(root / "second"), project="craft-tests", settings=settings)
        for step in range(250, 260):
            run.log({"VLA Train/Loss": -1.0}, step=step)
        run.finish()
    finally:
        wandb.teardown()
        mp.undo()
    return root


def _only_file(root):
    files = wl.find_wandb_files(root)
    assert len(files) == 1
    return files[0]


def test_offline_run_history_and_config(offline_runs):
    history = wl.read_wandb_file(_only_file(offline_runs / "first"))
    steps, values = history.steps_values("VLA Train/Loss")
    assert steps == list(range(STEPS)) and values[0] == 1.0 and values[9] == pytest.approx(0.1)
    assert history.last("CRaFT/Lambda") == pytest.approx(0.01 * (STEPS - 1))
    assert "note" not in history.series and "flag" not in history.series  # scalars only
    assert not any(k.startswith("_") for k in history.series)
    assert history.config["craft_retention_budget"] == 0.05 and len(history.config["long_note"]) == 70_000
    assert not history.truncated


def test_resumed_runs_merge_later_wins(offline_runs):
    merged = wl.read_wandb_runs(offline_runs)
    points = dict(merged.series["VLA Train/Loss"])
    assert len(points) == STEPS and points[255] == -1.0 and points[249] == pytest.approx(1 / 250)


def test_corrupt_and_truncated_files(offline_runs, tmp_path):
    data = bytearray(_only_file(offline_runs / "first").read_bytes())
    truncated = tmp_path / "run-trunc.wandb"
    truncated.write_bytes(bytes(data[: len(data) // 2]))
    part = wl.read_wandb_file(truncated)
    assert part.truncated and 0 < len(part.series["VLA Train/Loss"]) < STEPS
    _, first_length, _ = struct.unpack_from("<IHB", data, 7)  # the first record, after the 7-byte file header
    data[7 + 7 + first_length - 1] ^= 0xFF  # flip its last payload byte
    corrupt = tmp_path / "run-bad.wandb"
    corrupt.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum mismatch"):
        wl.read_wandb_file(corrupt)
    other = tmp_path / "run-other.wandb"
    other.write_bytes(b"PK\x03\x04" + struct.pack("<HB", 1, 0))
    with pytest.raises(ValueError, match="not a W&B transaction log"):
        wl.read_wandb_file(other)


class _FakeRun:
    config = {"craft_retention_budget": 0.2}

    def scan_history(self):
        return [{"_step": 0, "VLA Train/Loss": 0.5, "media": {"_type": "image"}},
                {"_step": 10, "VLA Train/Loss": 0.25, "CRaFT/Lambda": 1.0}]


class _FakeApi:
    def __init__(self):
        self.asked = []

    def run(self, path):
        self.asked.append(path)
        return _FakeRun()


def test_online_run_through_the_public_api():
    api = _FakeApi()
    history = wl.fetch_online_run("team/craft/abc123", api=api)
    assert api.asked == ["team/craft/abc123"]
    assert history.series == {"VLA Train/Loss": [(0, 0.5), (10, 0.25)], "CRaFT/Lambda": [(10, 1.0)]}
    assert history.config["craft_retention_budget"] == 0.2


def test_metrics_jsonl_maps_to_wandb_keys(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps({"step": s, "loss": 1.0 / s, "lambda": 0.1, "conflict_ratio": 0.3})
                              for s in (1, 2)) + "\n")
    history = wl.read_metrics_jsonl(path)
    assert set(history.series) == {"VLA Train/Loss", "CRaFT/Lambda", "CRaFT/Conflict Ratio"}
    assert history.steps_values("VLA Train/Loss") == ([1, 2], [1.0, 0.5])
    path.write_text('{"loss": 1.0}\n')
    with pytest.raises(ValueError, match="no 'step' field"):
        wl.read_metrics_jsonl(path)


def test_load_run_history_prefers_wandb_and_sources(offline_runs, tmp_path):
    assert wl.load_run_history(tmp_path) is None
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 0.5}) + "\n")
    assert wl.load_run_history(tmp_path).series == {"VLA Train/Loss": [(1, 0.5)]}
    assert "CRaFT/Lambda" in wl.load_history_source(str(offline_runs / "first")).series
    with pytest.raises(FileNotFoundError, match="neither an existing path"):
        wl.load_history_source(str(tmp_path / "missing"))


def test_last_values_table(offline_runs):
    histories = {"first": wl.read_wandb_runs(offline_runs / "first")}
    md = wl.render_last_values(histories, ["CRaFT/Lambda", "CRaFT/Gradient Cosine"], "md")
    assert f"| first | {0.01 * (STEPS - 1):.4g} | n/a |" in md
    assert wl.render_last_values(histories, ["CRaFT/Lambda"], "csv").splitlines()[1] == f"first,{0.01 * (STEPS - 1):.4g}"


def test_log_parser_cli_pulls_wandb_metrics(offline_runs, capsys):
    from craft_experiments.common_utils.log_parser import main

    assert main(["--wandb", str(offline_runs / "first"), "--metrics", "CRaFT/Lambda,VLA Train/Loss", "--format", "csv"]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header == "run,CRaFT/Lambda,VLA Train/Loss" and row.endswith(f",{0.01 * (STEPS - 1):.4g},{1 / STEPS:.4g}")
