"""Process-group set-up and the gradient synchronisation used by the trainer.

Why no `DistributedDataParallel`: CRaFT needs two gradients (g_act, g_ret) per step, each accumulated
over micro-batches and averaged across ranks before the projection. DDP's reducer fires on every
backward (twice per micro-batch here) and only knows one gradient. Instead, every rank accumulates
locally and the trainer all-reduces ALL trainable gradients once per optimizer step, in a few large
coalesced buckets. That also makes accumulation free of per-micro-batch communication and rules out
upstream's bug class where a module called around the wrapper never had its gradients synced.

The mean over ranks of each rank's mean over its G micro-batches (each a mean over its samples) is the
mean over the global batch because every micro-batch has the same size: the data stream gives rank r the
r-th equal slice of every global batch (vla/datasets/pipeline.py), so the result does not depend on the
world size or the accumulation split.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

# Elements per all-reduce bucket (fp32: 100 MB). A handful of buckets per step keeps the number of
# collectives constant while bounding the temporary memory of the flattened copy.
BUCKET_NUMEL = 25_000_000


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device_flag: str) -> DistInfo:
    """Initialise torch.distributed when launched by torchrun (nccl on CUDA, gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_flag == "cuda" or (device_flag == "auto" and torch.cuda.is_available())
    if device_flag == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda requested but CUDA is not available")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        log.info("initialised process group: rank %d / %d (%s)", rank, world_size, dist.get_backend())
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def cleanup_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def _buckets(tensors: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    buckets: list[list[torch.Tensor]] = [[]]
    size = 0
    for t in tensors:
        if size and size + t.numel() > BUCKET_NUMEL:
            buckets.append([])
            size = 0
        buckets[-1].append(t)
        size += t.numel()
    return [b for b in buckets if b]


def all_reduce_mean_(tensors: list[torch.Tensor], info: DistInfo) -> None:
    """In-place mean over ranks of a list of tensors, coalesced into a few flat buckets.

    Tensors are grouped by dtype; each bucket is one flat copy + one all_reduce + one scatter back.
    """
    if not info.distributed or not tensors:
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for group in by_dtype.values():
        for bucket in _buckets(group):
            flat = torch.cat([t.reshape(-1) for t in bucket])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            flat.div_(info.world_size)
            offset = 0
            for t in bucket:
                n = t.numel()
                t.copy_(flat[offset : offset + n].view_as(t))
                offset += n


def broadcast_parameters_(params: list[torch.Tensor], info: DistInfo) -> None:
    """Make every rank start from rank 0's values (what DDP does at construction)."""
    if not info.distributed:
        return
    for bucket in _buckets(params):
        flat = torch.cat([p.detach().reshape(-1) for p in bucket])
        dist.broadcast(flat, src=0)
        offset = 0
        with torch.no_grad():
            for p in bucket:
                n = p.numel()
                p.copy_(flat[offset : offset + n].view_as(p))
                offset += n


def gather_objects(obj, info: DistInfo) -> list:
    """All ranks' `obj` on every rank (used for per-rank RNG states in checkpoints)."""
    if not info.distributed:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out
