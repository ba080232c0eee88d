"""Data-parallel training with ``torch.distributed`` (DDP), launched by ``torchrun``.

``torchrun --nproc_per_node=N`` starts N processes and sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK`` in each; :func:`init_from_env` reads them and joins the process group (NCCL on
GPUs, gloo on CPU). Each rank trains a :func:`wrap`-ped copy of the module on its own part of the
global batch (:func:`rank_slice`); DDP averages the gradients, so with losses that are means over
equally sized per-rank batches every rank takes the same step as one process on the whole
batch. Files are written by rank 0 only (:attr:`DistContext.is_main`).

Without ``WORLD_SIZE`` (or with 1) everything here is a no-op: one process, no process group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["DistContext", "cleanup", "init_from_env", "init_process_group", "rank_slice", "wrap"]


@dataclass(frozen=True)
class DistContext:
    """Where this process stands among the ranks of a data-parallel run.

    Example:
        >>> ctx = DistContext(rank=1, world_size=2, local_rank=1)
        >>> ctx.is_main, ctx.is_distributed
        (False, True)
    """

    rank: int = 0
    """Global rank of this process (0 writes files)."""
    world_size: int = 1
    """Number of processes."""
    local_rank: int = 0
    """Rank on this machine (picks the GPU ``cuda:<local_rank>``)."""

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(
                f"need 0 <= rank < world_size, got rank {self.rank}, world size {self.world_size}"
            )

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only rank that writes checkpoints, logs and exports."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        """True with more than one process."""
        return self.world_size > 1


def init_process_group(
    ctx: DistContext, backend: str | None = None, init_method: str = "env://"
) -> DistContext:
    """Joins the process group of ``ctx`` (nothing to do for one process); returns ``ctx``.

    Args:
        ctx: This process's rank and the world size.
        backend: ``"nccl"`` or ``"gloo"`` (default: NCCL when CUDA is available, else gloo).
        init_method: How the ranks meet (``env://`` reads ``MASTER_ADDR`` and ``MASTER_PORT``
            as set by torchrun; ``file:///tmp/x`` or ``tcp://127.0.0.1:PORT`` also work).
    """
    if ctx.is_distributed and not dist.is_initialized():
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(
            backend, init_method=init_method, rank=ctx.rank, world_size=ctx.world_size
        )
    return ctx


def init_from_env(backend: str | None = None) -> DistContext:
    """The context from torchrun's ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``; joins the group.

    Raises:
        ValueError: If the variables are not integers or are inconsistent.
    """
    try:
        ctx = DistContext(
            rank=int(os.environ.get("RANK", "0")),
            world_size=int(os.environ.get("WORLD_SIZE", "1")),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        )
    except ValueError as err:
        raise ValueError(f"bad RANK / WORLD_SIZE / LOCAL_RANK from the launcher: {err}") from err
    return init_process_group(ctx, backend)


def cleanup() -> None:
    """Leaves the process group, if one was joined."""
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap(module: nn.Module, ctx: DistContext) -> nn.Module:
    """``module`` in ``DistributedDataParallel`` with several ranks, else ``module`` itself.

    The module must already be on its device (``cuda:<local_rank>`` or the CPU). DDP makes every
    rank start from rank 0's parameters and buffers.
    """
    if not ctx.is_distributed:
        return module
    device = next(module.parameters()).device
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids)


def rank_slice(global_batch: int, ctx: DistContext) -> slice:
    """This rank's rows of a global batch split in equal parts.

    Example:
        >>> rank_slice(8, DistContext(rank=1, world_size=2))
        slice(4, 8, None)

    Raises:
        ValueError: If the global batch does not split evenly (the averaged gradient would then
            weight the ranks' samples unequally).
    """
    if global_batch % ctx.world_size != 0:
        raise ValueError(
            f"the global batch size {global_batch} must be a multiple of the number of ranks "
            f"{ctx.world_size}; change the batch size or --nproc_per_node"
        )
    size = global_batch // ctx.world_size
    return slice(ctx.rank * size, (ctx.rank + 1) * size)
