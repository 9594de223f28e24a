"""Append-only JSONL files that survive a crash: metrics.jsonl (training) and results.jsonl (evaluation).

A record is written as ONE whole line (a single write of `json + "\\n"`), flushed and fsynced, so a crash
loses at most the record being written. What a crash can still leave is a torn LAST line (a fragment without
its newline, e.g. a kill during the write or a full disk); `drop_torn_tail` removes it, with a warning,
before a resumed run appends: otherwise the next record would be glued onto the fragment and both lost.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)


def append_record(f: IO[str], record: dict) -> None:
    """Write `record` as one line to an open append-mode file, flushed and fsynced."""
    f.write(json.dumps(record) + "\n")
    f.flush()
    os.fsync(f.fileno())


def drop_torn_tail(path: str | Path) -> str | None:
    """Cut a torn last line off `path` (in place): a final fragment without a newline, or a last line that is
    not valid JSON. Returns the dropped text (None when the file was whole or does not exist). A malformed
    line elsewhere is not touched (readers report it with its line number)."""
    path = Path(path)
    if not path.is_file():
        return None
    data = path.read_bytes()
    if not data:
        return None
    body = data if data.endswith(b"\n") else data[: data.rfind(b"\n") + 1]
    if body == data:  # whole lines; the last may still be garbage written in one go (e.g. zeros after a crash)
        start = data.rfind(b"\n", 0, len(data) - 1) + 1
        try:
            json.loads(data[start:])
            return None
        except ValueError:
            body = data[:start]
    torn = data[len(body):].decode(errors="replace")
    with open(path, "r+b") as f:
        f.truncate(len(body))
        f.flush()
        os.fsync(f.fileno())
    log.warning("%s ended in a torn line (a crash while writing it); dropped it: %r", path, torn[:200])
    return torn
