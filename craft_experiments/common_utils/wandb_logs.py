"""Metric histories of training runs: W&B offline/online runs, or the trainer's metrics.jsonl.

Offline runs (`wandb/offline-run-*/run-<id>.wandb`, also the local copy of online runs) are read
directly. wandb 0.31 has no Python reader for them any more (its internal process is a Go binary), but
the format is stable and simple: a 7-byte header (":W&B", magic 0xBEE1 little-endian, version 0), then
32 KiB blocks of LevelDB-log records (CRC-32 of type+payload, uint16 length, type FULL/FIRST/MIDDLE/LAST),
each payload a `wandb.proto.wandb_internal_pb2.Record` protobuf. History records carry the logged
items (JSON-encoded values) and the step; run/config records carry the run config.
A checksum mismatch is an error; a record cut off at the end of the file (a run killed mid-write) ends
the read with a warning and `truncated=True`.
"""

from __future__ import annotations

import json
import logging
import math
import re
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

_HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
_BLOCK = 32 * 1024
_RECORD_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4
_RUN_DIR_RE = re.compile(r"^(?:offline-)?run-(?P<stamp>\d{8}_\d{6})-(?P<id>\w+)$")
_ONLINE_PATH_RE = re.compile(r"^[\w.-]+/[\w.-]+/[\w.-]+$")


@dataclass
class MetricHistory:
    """Scalar metrics of one run: key -> [(step, value)] sorted by step, plus the run config."""

    source: str
    config: dict = field(default_factory=dict)
    series: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    truncated: bool = False

    def steps_values(self, key: str) -> tuple[list[int], list[float]]:
        points = self.series.get(key, [])
        return [s for s, _ in points], [v for _, v in points]

    def last(self, key: str) -> float | None:
        points = self.series.get(key)
        return points[-1][1] if points else None

    def add(self, step: int, key: str, value: float) -> None:
        self.series.setdefault(key, []).append((step, value))

    def finalize(self) -> MetricHistory:
        """Sort by step; for a step logged twice (a resumed run re-logging it) the later value wins."""
        for key, points in self.series.items():
            by_step = {}
            for step, value in points:
                by_step[step] = value
            self.series[key] = sorted(by_step.items())
        return self


def _scalar(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None  # histograms, tables, strings: not a curve
    return float(value)


def _iter_payloads(path: Path, data: bytes):
    """Yield (offset, payload) of every complete record; returns True via StopIteration if truncated."""
    if data[: len(_HEADER)] != _HEADER:
        raise ValueError(f"{path} is not a W&B transaction log (bad header {data[:7]!r})")
    offset, pending = len(_HEADER), None
    while offset < len(data):
        left_in_block = _BLOCK - offset % _BLOCK
        if left_in_block < _RECORD_HEADER:  # block trailer padding
            offset += left_in_block
            continue
        if offset + _RECORD_HEADER > len(data):
            return True
        checksum, length, kind = struct.unpack_from("<IHB", data, offset)
        if kind == 0 and length == 0:  # zero-filled, preallocated space: end of the written data
            return pending is not None
        start = offset + _RECORD_HEADER
        if start + length > len(data):
            return True
        payload = data[start:start + length]
        if zlib.crc32(bytes([kind]) + payload) != checksum:
            raise ValueError(f"{path}: checksum mismatch in the record at byte {offset} (corrupt file)")
        offset = start + length
        if kind == _FULL:
            yield offset, payload
        elif kind == _FIRST:
            pending = bytearray(payload)
        elif kind in (_MIDDLE, _LAST):
            if pending is None:
                raise ValueError(f"{path}: record continuation at byte {offset} without its first part")
            pending += payload
            if kind == _LAST:
                yield offset, bytes(pending)
                pending = None
        else:
            raise ValueError(f"{path}: unknown record type {kind} at byte {offset}")
    return pending is not None


def _item_key(item) -> str:
    return item.key if item.key else ".".join(item.nested_key)


def read_wandb_file(path: str | Path) -> MetricHistory:
    """Scalar history and config of one `run-<id>.wandb` file."""
    from wandb.proto import wandb_internal_pb2  # lazy: only needed here

    path = Path(path)
    data = path.read_bytes()
    history = MetricHistory(str(path))
    reader = _iter_payloads(path, data)
    while True:
        try:
            offset, payload = next(reader)
        except StopIteration as stop:
            history.truncated = bool(stop.value)
            break
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind in ("run", "config"):
            updates = record.run.config.update if kind == "run" else record.config.update
            for item in updates:
                history.config[_item_key(item)] = json.loads(item.value_json)
        elif kind == "history":
            values = {_item_key(item): json.loads(item.value_json) for item in record.history.item}
            step = record.history.step.num if record.history.HasField("step") else values.get("_step")
            if step is None:
                raise ValueError(f"{path}: history record before byte {offset} has no step")
            for key, value in values.items():
                if not key.startswith("_") and (v := _scalar(value)) is not None:
                    history.add(int(step), key, v)
    if history.truncated:
        log.warning("%s ends in a partly written record (run killed?); read up to the last complete one", path)
    return history.finalize()


def find_wandb_files(root: str | Path) -> list[Path]:
    """`run-*.wandb` files under `root` (or `root` itself), oldest run first (by the run dir's time stamp)."""
    root = Path(root)
    if root.is_file():
        return [root]
    files = [p for p in root.rglob("run-*.wandb") if p.is_file()]

    def order(p: Path):
        m = _RUN_DIR_RE.match(p.parent.name)
        return (m.group("stamp") if m else "", str(p))

    return sorted(files, key=order)


def read_wandb_runs(root: str | Path) -> MetricHistory:
    """All W&B runs under `root` merged into one history (a resumed run writes a new run directory)."""
    files = find_wandb_files(root)
    if not files:
        raise FileNotFoundError(f"no run-*.wandb file under {root}")
    merged = MetricHistory(str(root))
    for path in files:
        part = read_wandb_file(path)
        merged.config.update(part.config)
        merged.truncated |= part.truncated
        for key, points in part.series.items():
            merged.series.setdefault(key, []).extend(points)
    return merged.finalize()


def fetch_online_run(run_path: str, api=None) -> MetricHistory:
    """History of `entity/project/run_id` through the public API (`api`: a `wandb.Api()`; injectable)."""
    if api is None:
        import wandb

        api = wandb.Api()
    run = api.run(run_path)
    history = MetricHistory(f"wandb:{run_path}", dict(run.config))
    for row in run.scan_history():
        step = row.get("_step")
        if step is None:
            raise ValueError(f"wandb run {run_path}: a history row without _step")
        for key, value in row.items():
            if not key.startswith("_") and (v := _scalar(value)) is not None and not math.isnan(v):
                history.add(int(step), key, v)
    return history.finalize()


def read_metrics_jsonl(path: str | Path) -> MetricHistory:
    """The trainer's `metrics.jsonl` (internal names), with keys mapped to the W&B keys of CRAFT_SPEC.md."""
    from prismatic.training.metrics import WANDB_KEYS  # lazy: imports torch; the one source of the key names

    path = Path(path)
    history = MetricHistory(str(path))
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from e
        if "step" not in row:
            raise ValueError(f"{path}:{lineno}: no 'step' field")
        for key, value in row.items():
            if key != "step" and (v := _scalar(value)) is not None:
                history.add(int(row["step"]), WANDB_KEYS.get(key, key), v)
    return history.finalize()


def load_run_history(run_root: str | Path) -> MetricHistory | None:
    """A training run's history: its W&B files if any, else its metrics.jsonl; None if it has neither."""
    run_root = Path(run_root)
    if find_wandb_files(run_root):
        return read_wandb_runs(run_root)
    jsonls = sorted(run_root.rglob("metrics.jsonl"))
    if len(jsonls) > 1:
        raise ValueError(f"several metrics.jsonl under {run_root}: {[str(p) for p in jsonls]}")
    return read_metrics_jsonl(jsonls[0]) if jsonls else None


def load_history_source(source: str) -> MetricHistory:
    """A local path (file or directory, searched recursively) or an online `entity/project/run_id`."""
    path = Path(source)
    if path.exists():
        history = load_run_history(path) if path.is_dir() else (
            read_wandb_file(path) if path.suffix == ".wandb" else read_metrics_jsonl(path))
        if history is None:
            raise FileNotFoundError(f"no W&B run and no metrics.jsonl under {source}")
        return history
    if _ONLINE_PATH_RE.match(source):
        return fetch_online_run(source)
    raise FileNotFoundError(f"{source} is neither an existing path nor an ENTITY/PROJECT/RUN_ID W&B run path")


def render_last_values(histories: dict[str, MetricHistory], metrics: list[str], fmt: str) -> str:
    """The last logged value of each metric per run, as a Markdown / LaTeX / CSV table."""
    from craft_experiments.common_utils.tables import tex_escape

    def cell(h: MetricHistory, key: str) -> str:
        value = h.last(key)
        return "" if value is None else f"{value:.4g}"

    rows = [(name, [cell(h, k) for k in metrics]) for name, h in histories.items()]
    if fmt == "csv":
        import csv
        import io

        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["run", *metrics])
        writer.writerows([name, *cells] for name, cells in rows)
        return out.getvalue()
    if fmt == "md":
        lines = ["| Run | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
        lines += [f"| {name} | " + " | ".join(c or "n/a" for c in cells) + " |" for name, cells in rows]
        return "\n".join(lines + ["", "Last logged value of each metric."]) + "\n"
    if fmt == "tex":
        lines = ["% last logged value of each metric", r"\begin{tabular}{l" + "c" * len(metrics) + "}", r"\toprule",
                 "Run & " + " & ".join(tex_escape(m) for m in metrics) + r" \\", r"\midrule"]
        lines += [tex_escape(name) + " & " + " & ".join(c or "n/a" for c in cells) + r" \\" for name, cells in rows]
        return "\n".join(lines + [r"\bottomrule", r"\end{tabular}"]) + "\n"
    raise ValueError(f"unknown format {fmt!r}; choose md, tex or csv")
