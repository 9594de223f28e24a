"""Model locations given as a local directory OR a Hugging Face hub id (`--vlm_path`, `--config_file_path`,
`--pretrained_checkpoint`).

    resolve_model_dir("VLA-Adapter/LIBERO-Spatial-Pro", flag="--pretrained_checkpoint") -> Path (a snapshot dir)
    resolve_model_dir("runs/my-run--20000_chkpt", flag="--pretrained_checkpoint")        -> that directory

Rules (the same for every flag):
  1. a path that exists locally wins (a directory named like `org/name` in the working directory is used as is);
  2. otherwise something shaped like a hub repo id (`org/name`, optionally `org/name@revision`) is fetched with
     `huggingface_hub.snapshot_download` into the standard cache (`HF_HOME` / `HF_HUB_CACHE`), or taken from
     that cache when `HF_HUB_OFFLINE=1`;
  3. anything else is an error naming the flag.

Only the files a flag needs are fetched (`KINDS`): a released / our checkpoint is fetched whole (every file is
used), a base VLM without its older `checkpoints/*.pt` and training logs, a tokenizer directory only its small
files. Under torchrun rank 0 downloads first and the other ranks read the cache after a barrier (no racing
downloads of the same blobs). Offline and not cached is ONE `HubModelNotFound` naming the repo, the revision and
the flag.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

logger = logging.getLogger(__name__)

# Hub repo ids: `namespace/name`, each part letters, digits, '-', '_', '.', not starting with a symbol
# (huggingface_hub's own validator also forbids '--' and '..', which we reject too), at most 96 characters.
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")
HUB_ID_MAX_LEN = 96

# What each kind of location needs. `None` = every file of the repo.
SMALL_FILES = ["*.json", "*.yaml", "*.txt", "*.model", "*.tiktoken"]  # configs, tokenizer files, README-ish
KINDS = ("checkpoint", "base_vlm", "tokenizer")
_PRISMATIC_CKPT = re.compile(r"checkpoints/step-(\d+)[^/]*\.pt")


class HubModelNotFound(FileNotFoundError):
    """A hub id that cannot be resolved (offline and not cached, unknown repo, gated, no network)."""


def split_revision(value: str) -> tuple[str, str | None]:
    """`org/name@rev` -> ("org/name", "rev"); without '@' the revision is None."""
    if "@" in value:
        repo_id, revision = value.split("@", 1)
        return repo_id, revision
    return value, None


def looks_like_hub_id(value: str) -> bool:
    """True for `org/name` or `org/name@revision` (syntax only; says nothing about the repo existing)."""
    repo_id, revision = split_revision(value)
    if revision is not None and not _REVISION.fullmatch(revision):
        return False
    return (_HUB_ID.fullmatch(repo_id) is not None and len(repo_id) <= HUB_ID_MAX_LEN
            and "--" not in repo_id and ".." not in repo_id and not repo_id.endswith("."))


def check_model_location(value: str, flag: str, what: str) -> None:
    """Config-time check (no network, no download): `value` must exist locally or be shaped like a hub id.

    `what` describes the expected content for the message (e.g. "the Prismatic base VLM directory")."""
    if Path(value).exists() or looks_like_hub_id(value):
        return
    raise ValueError(f"{flag} does not exist: {value} (expected {what}: a local directory, or a Hugging Face hub id "
                     f"like org/name or org/name@revision)")


def base_vlm_allow_patterns(repo_files: list[str]) -> list[str]:
    """Files of a Prismatic base-VLM repo to fetch: configs + the highest-step `checkpoints/step-*.pt` only
    (the released repo holds three 2.6 GB checkpoints and the training data; the loader uses the last)."""
    steps = {f: int(m.group(1)) for f in repo_files if (m := _PRISMATIC_CKPT.fullmatch(f))}
    if not steps:
        raise ValueError("no checkpoints/step-<N>-*.pt in the repo: not a Prismatic base VLM")
    return SMALL_FILES + [max(steps, key=steps.get)]


def _is_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _cache_dir() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def _download(repo_id: str, revision: str | None, kind: str, local_only: bool) -> Path:
    from huggingface_hub import HfApi, snapshot_download

    offline = local_only or _is_offline()
    allow = None
    if kind == "tokenizer":
        allow = SMALL_FILES
    elif kind == "base_vlm":
        # Offline the repo cannot be listed: check the small files, then the loader takes the highest-step
        # checkpoint present in the cached snapshot (the one fetched online by the rule below).
        allow = SMALL_FILES if offline else base_vlm_allow_patterns(HfApi().list_repo_files(repo_id, revision=revision))
    path = snapshot_download(repo_id, revision=revision, allow_patterns=allow, local_files_only=offline)
    return Path(path)


def _not_found(repo_id: str, revision: str | None, flag: str, error: BaseException) -> HubModelNotFound:
    rev = revision or "main"
    if _is_offline():
        why = (f"HF_HUB_OFFLINE=1 and it is not in the local cache {_cache_dir()}; fetch it once with network "
               f"access (unset HF_HUB_OFFLINE, or `hf download {repo_id}" + (f" --revision {rev}" if revision else "")
               + "`), or point HF_HOME at a cache that has it")
    else:
        why = f"{type(error).__name__}: {error}"
    return HubModelNotFound(f"{flag} {repo_id} (revision {rev}): cannot get this Hugging Face hub repo: {why}")


def resolve_model_dir(name_or_path: str | os.PathLike, *, revision: str | None = None, flag: str = "--vlm_path",
                      kind: str = "checkpoint", dist_info=None) -> Path:
    """A local directory for `name_or_path`: the path itself if it exists, else the hub snapshot of that repo id.

    revision: branch, tag or commit for hub ids (an `@rev` suffix on the id wins). kind: one of KINDS (what to
    fetch). dist_info: a `prismatic.training.distributed.DistInfo` under torchrun (rank 0 downloads, then a
    barrier, then the other ranks read the cache); None in single-process use.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    value = os.fspath(name_or_path)
    if Path(value).exists():
        return Path(value)
    if not looks_like_hub_id(value):
        raise FileNotFoundError(f"{flag} does not exist: {value} (neither a local path nor a hub id org/name)")
    repo_id, suffix_revision = split_revision(value)
    revision = suffix_revision or revision

    distributed = dist_info is not None and dist_info.distributed
    path, error = None, None
    if not distributed or dist_info.is_main:
        try:
            logger.info("resolving %s %s (revision %s) via the Hugging Face hub", flag, repo_id, revision or "main")
            path = _download(repo_id, revision, kind, local_only=False)
        except Exception as e:  # noqa: BLE001 - re-raised below (after the barrier) with the flag and repo named
            error = e
    if distributed:
        from prismatic.training.distributed import barrier

        barrier(dist_info)  # rank 0 has downloaded (or failed); every rank passes this exactly once
        if not dist_info.is_main:
            try:
                path = _download(repo_id, revision, kind, local_only=True)
            except Exception as e:  # noqa: BLE001
                error = e
    if error is not None:
        raise _not_found(repo_id, revision, flag, error) from error
    logger.info("%s %s -> %s", flag, value, path)
    return path
