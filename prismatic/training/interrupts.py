"""Stopping a run cleanly: Ctrl-C (SIGINT), preemption (SIGTERM), and the command that resumes it.

    SIGINT              the step in progress is abandoned; the run says where its last complete checkpoint
                        is and how to resume, and the process exits with 130 (`prismatic.cli.run_cli`)
    SIGTERM             default: the process dies (nothing is written; the last checkpoint stays intact).
                        With --save_on_sigterm True (SLURM sends SIGTERM some time before SIGKILL): the step in
                        progress finishes, a checkpoint is saved, exit code 143.

Under torchrun every rank gets the signal; with --save_on_sigterm the ranks agree on the step to stop at
(one tiny all-reduce per step), because saving is collective.
"""

from __future__ import annotations

import dataclasses
import logging
import shlex
import signal

import torch
import torch.distributed as dist

from prismatic.training.config import FinetuneConfig
from prismatic.training.distributed import DistInfo

log = logging.getLogger(__name__)

# Flags never repeated in a resume command: it resumes the latest checkpoint, and starting over is not resuming.
_NOT_REPEATED = ("resume", "resume_step", "overwrite", "resume_override_flags")


class TrainingInterrupted(KeyboardInterrupt):
    """The run stopped on a signal. `message` says where the last complete checkpoint is and how to resume;
    `exit_code` is 128 + the signal number (130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def _flag_value(value) -> str:
    if value is None:
        return "null"
    return str(value)


def resume_command(cfg: FinetuneConfig, world_size: int, omit: tuple[str, ...] = ()) -> str:
    """The command line that continues this run: every flag that differs from its default (except `omit`),
    plus --resume True."""
    defaults = FinetuneConfig.__dataclass_fields__
    args = []
    for f in dataclasses.fields(cfg):
        if f.name in _NOT_REPEATED or f.name in omit:
            continue
        value = getattr(cfg, f.name)
        default = defaults[f.name].default
        if value != default:
            args += [f"--{f.name}", _flag_value(value)]
    args += ["--resume", "True"]
    launcher = (["python"] if world_size == 1 else
                ["torchrun", "--standalone", "--nproc_per_node", str(world_size)])
    return " ".join(shlex.quote(a) for a in [*launcher, "vla-scripts/finetune.py", *args])


class StopRequest:
    """With `enabled`, SIGTERM sets a flag instead of killing the process; `requested()` says (identically on
    every rank) whether any rank got it. Restores the previous handler on `close()`."""

    def __init__(self, enabled: bool, info: DistInfo):
        self.enabled = enabled
        self.info = info
        self._got = False
        self._previous = None
        if enabled:
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        if not self._got:
            log.warning("SIGTERM received: finishing this step, then saving a checkpoint (--save_on_sigterm True)")
        self._got = True

    def requested(self) -> bool:
        if not self.enabled:
            return False
        if not self.info.distributed:
            return self._got
        flag = torch.tensor([1.0 if self._got else 0.0], device=self.info.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def close(self) -> None:
        if self.enabled and self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
