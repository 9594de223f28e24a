"""The checksum manifest of our checkpoints: `manifest.json`, one sha256 per file.

    {"format": 1, "files": {"model.safetensors": {"bytes": 123, "sha256": "..."}, "lora_adapter/...": {...}}}

Written LAST into the checkpoint's temporary directory (atomically: a temp file, fsynced, renamed), after every
other file was written and fsynced, and before the directory is renamed into place. Verified on resume and on
evaluation: a missing file, a changed size or a changed checksum is an error naming the file.

Ours vs released: released VLA-Adapter checkpoints carry no manifest and still load unverified. A directory
is OURS when it holds `manifest.json`, `training_state.pt` or `finetune_config.json` (what `save_checkpoint`
writes and no released checkpoint has); in ours a missing manifest is an error.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from prismatic.constants import FINETUNE_CONFIG_FILE, MANIFEST_FILE, TRAINING_STATE_FILE

MANIFEST_FORMAT = 1
_CHUNK = 8 << 20  # bytes read at a time while hashing


class CorruptCheckpointError(ValueError):
    """A checkpoint file is damaged (checksum / size mismatch, unreadable, truncated)."""


def file_digest(path: Path, fsync: bool = False) -> tuple[int, str]:
    """(size in bytes, sha256 hex) of a file; `fsync` also flushes it to disk (used at save time)."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
        if fsync:
            os.fsync(f.fileno())
    return size, digest.hexdigest()


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)


def write_manifest(directory: str | Path) -> dict:
    """Hash (and fsync) every file under `directory`, then write `manifest.json` atomically. Returns it."""
    directory = Path(directory)
    files = {}
    for path in _files(directory):
        size, sha = file_digest(path, fsync=True)
        files[path.relative_to(directory).as_posix()] = {"bytes": size, "sha256": sha}
    manifest = {"format": MANIFEST_FORMAT, "files": files}
    tmp = directory / (MANIFEST_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    tmp.rename(directory / MANIFEST_FILE)
    return manifest


def is_our_checkpoint(directory: str | Path) -> bool:
    """True for a checkpoint written by our trainer (see module docstring), False for a released one."""
    directory = Path(directory)
    return any((directory / name).exists() for name in (MANIFEST_FILE, TRAINING_STATE_FILE, FINETUNE_CONFIG_FILE))


def verify_manifest(directory: str | Path) -> bool:
    """Check every file of our checkpoint against its manifest. Returns False for a released checkpoint
    (nothing to verify). Raises FileNotFoundError naming every missing file (the manifest itself included)
    and CorruptCheckpointError naming every damaged one."""
    directory = Path(directory)
    if not is_our_checkpoint(directory):
        return False
    manifest_path = directory / MANIFEST_FILE
    if not manifest_path.is_file():
        raise FileNotFoundError(
            f"checkpoint {directory} is missing {MANIFEST_FILE} (our checkpoints list a sha256 for every file "
            f"there); it is incomplete or was written by a version without manifests, so its files cannot be "
            f"trusted: use another checkpoint"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CorruptCheckpointError(f"corrupt checkpoint file {manifest_path}: {type(e).__name__}: {e}") from e
    missing, damaged = [], []
    for name, entry in sorted(files.items()):
        path = directory / name
        if not path.is_file():
            missing.append(name)
            continue
        if path.stat().st_size != entry["bytes"]:
            damaged.append(f"{name} ({path.stat().st_size} bytes, the manifest says {entry['bytes']})")
            continue
        if file_digest(path)[1] != entry["sha256"]:
            damaged.append(f"{name} (sha256 differs from the manifest)")
    if missing:
        raise FileNotFoundError(f"checkpoint {directory} is missing {', '.join(missing)} (listed in {MANIFEST_FILE})")
    if damaged:
        raise CorruptCheckpointError(f"checkpoint {directory} is damaged: {'; '.join(damaged)}; use another "
                                     f"checkpoint (its files were changed after it was written)")
    return True
