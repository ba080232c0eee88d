"""Data-parallel training with ``torch.distributed``, launched by ``torchrun``.

``torchrun --nproc_per_node=N`` starts N processes and sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK`` in each; :func:`init_from_env` reads them and joins the process group (NCCL for a
CUDA device, one GPU per local rank; gloo on the CPU). Each rank trains its own copy of the
modules on its own rows of the global batch (:func:`rank_slice`). After the backward pass,
:func:`average_gradients` replaces every gradient by its mean over the ranks, so with losses that
are means over equally sized per-rank batches every rank takes the same step as one process on
the whole batch, and the parameters stay bit-identical (:func:`check_in_sync` verifies it). A
loss whose normaliser differs between ranks (a masked mean) is weighted by the rank's share of
the global count first (:func:`global_share`). This explicit all-reduce works for any number of
forward calls per backward (the actor-critic's burn-in and imagined rollout); :func:`wrap`
(``DistributedDataParallel``) is the alternative for loops with one forward per backward.

Work that only rank 0 does (acting in the real game, evaluation, writing files) goes through
:func:`run_on_main`: the other ranks wait and learn whether it failed.

Without ``WORLD_SIZE`` (or with 1) everything here is a no-op: one process, no process group.
"""

from __future__ import annotations

import gc
import hashlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = [
    "DEFAULT_TIMEOUT",
    "DistContext",
    "any_rank",
    "average_gradients",
    "average_metrics",
    "backend_for",
    "broadcast_modules",
    "check_batch_sizes",
    "check_in_sync",
    "cleanup",
    "global_share",
    "init_from_env",
    "init_process_group",
    "rank_device",
    "rank_seed",
    "rank_slice",
    "run_on_main",
    "share_from_main",
    "wrap",
]

T = TypeVar("T")

DEFAULT_TIMEOUT = timedelta(hours=4)
"""How long a collective waits: the other ranks wait in one while rank 0 collects and evaluates,
which can take far longer than torch's default 10 (NCCL) or 30 (gloo) minutes."""


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


# ----------------------------------------------------------------------------- setup


def backend_for(device: str | torch.device) -> str:
    """``"nccl"`` for a CUDA device, ``"gloo"`` otherwise.

    Example:
        >>> backend_for("cuda"), backend_for("cpu")
        ('nccl', 'gloo')
    """
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def rank_device(device: str | torch.device, ctx: DistContext) -> torch.device:
    """The device of this rank: ``cuda`` becomes ``cuda:<local_rank>`` with several ranks.

    Example:
        >>> rank_device("cuda", DistContext(rank=3, world_size=4, local_rank=1))
        device(type='cuda', index=1)

    Raises:
        ValueError: If several ranks are given one numbered CUDA device (each needs its own).
    """
    device = torch.device(device)
    if not ctx.is_distributed or device.type != "cuda":
        return device
    if device.index is not None:
        raise ValueError(
            f"with {ctx.world_size} ranks give --device cuda, not {device}: each rank uses the "
            "GPU of its local rank (cuda:LOCAL_RANK); choose GPUs with CUDA_VISIBLE_DEVICES"
        )
    return torch.device("cuda", ctx.local_rank)


def init_process_group(
    ctx: DistContext,
    backend: str | None = None,
    init_method: str = "env://",
    timeout: timedelta = DEFAULT_TIMEOUT,
) -> DistContext:
    """Joins the process group of ``ctx`` (nothing to do for one process); returns ``ctx``.

    Args:
        ctx: This process's rank and the world size.
        backend: ``"nccl"`` or ``"gloo"`` (default: NCCL when CUDA is available, else gloo).
            With NCCL the current CUDA device becomes ``cuda:<local_rank>``.
        init_method: How the ranks meet (``env://`` reads ``MASTER_ADDR`` and ``MASTER_PORT``
            as set by torchrun; ``file:///tmp/x`` or ``tcp://127.0.0.1:PORT`` also work).
        timeout: How long a collective may wait for the other ranks.
    """
    if ctx.is_distributed and not dist.is_initialized():
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(ctx.local_rank)
        dist.init_process_group(
            backend,
            init_method=init_method,
            rank=ctx.rank,
            world_size=ctx.world_size,
            timeout=timeout,
        )
    return ctx


def init_from_env(backend: str | None = None, timeout: timedelta = DEFAULT_TIMEOUT) -> DistContext:
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
    return init_process_group(ctx, backend, timeout=timeout)


def cleanup(wait: bool = True) -> None:
    """Leaves the process group, if one was joined.

    Leaving a gloo group could abort a rank after all its work was done (SIGABRT, "terminate
    called without an active exception", about one run in three on a 2-core VM), at exit, most
    likely when an object still holding the group (a ``DistributedDataParallel`` wrapper in a
    reference cycle) was destroyed after it. Collecting garbage first, while the group still
    exists, stopped it (0 aborts in 60 runs). With ``wait`` (a rank that finished normally) the
    ranks then meet in a barrier before leaving together. A rank leaving on an error passes
    ``wait=False``, so that it does not wait for ranks that may never come.
    """
    if dist.is_initialized():
        gc.collect()
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def wrap(module: nn.Module, ctx: DistContext) -> nn.Module:
    """``module`` in ``DistributedDataParallel`` with several ranks, else ``module`` itself.

    For a loop with one forward per backward (the trainer's tokenizer and world-model phases;
    the actor-critic phase uses :func:`average_gradients`). The module must already be on its
    device (``cuda:<local_rank>`` or the CPU). DDP
    makes every rank start from rank 0's parameters and buffers.
    """
    if not ctx.is_distributed:
        return module
    device = next(module.parameters()).device
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids)


# ----------------------------------------------------------------------------- batches and RNG


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


def check_batch_sizes(sizes: dict[str, int], ctx: DistContext) -> None:
    """Checks that every named global batch size splits evenly over the ranks.

    Example:
        >>> check_batch_sizes({"world-model.batch-size": 6}, DistContext(0, 3))

    Raises:
        ValueError: Naming the first option that does not divide by the number of ranks.
    """
    for name, size in sizes.items():
        if size % ctx.world_size != 0:
            raise ValueError(
                f"--{name} {size} is the global batch of all {ctx.world_size} ranks and must be "
                f"a multiple of {ctx.world_size}; change it or --nproc_per_node"
            )


def rank_seed(seed: int, rank: int, epoch: int) -> int:
    """Seed of rank ``rank``'s torch RNG in ``epoch`` (ranks > 0; rank 0 keeps the run's stream).

    Derived with numpy's ``SeedSequence((seed, rank, epoch))``, so every rank's stream is
    independent of the others' and a resumed run re-creates it without a checkpoint.

    Example:
        >>> rank_seed(1, 1, 3) == rank_seed(1, 1, 3) != rank_seed(1, 2, 3)
        True
    """
    return int(np.random.SeedSequence((seed, rank, epoch)).generate_state(1)[0])


# ----------------------------------------------------------------------------- collectives


def _comm_device() -> torch.device:
    """Where collective tensors live: the current GPU for NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def average_gradients(parameters: Iterable[nn.Parameter], ctx: DistContext) -> None:
    """Replaces each parameter's gradient by its mean over the ranks (call after backward).

    A parameter without a gradient on some rank counts as a zero gradient there (what one
    process would have computed on the union of the batches); one without a gradient on every
    rank keeps ``grad = None``. Gradients of one dtype travel in one flat all-reduce.
    """
    if not ctx.is_distributed:
        return
    by_dtype: dict[torch.dtype, list[nn.Parameter]] = {}
    for param in parameters:
        if param.requires_grad:
            by_dtype.setdefault(param.dtype, []).append(param)
    for dtype, params in by_dtype.items():
        device = params[0].device
        present = torch.tensor([p.grad is not None for p in params], dtype=dtype, device=device)
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
        flat = torch.cat([present, *(g.reshape(-1) for g in grads)])  # (P + numel,)
        dist.all_reduce(flat)
        flat.div_(ctx.world_size)
        anywhere = flat[: len(params)].tolist()  # one device sync, not one per parameter
        offset = len(params)
        for param, has_grad in zip(params, anywhere, strict=True):
            mean = flat[offset : offset + param.numel()].view_as(param)
            offset += param.numel()
            if param.grad is not None:
                param.grad.copy_(mean)
            elif has_grad > 0:
                param.grad = mean.clone()


def global_share(count: int, ctx: DistContext) -> float:
    """This rank's ``count`` over the sum of all ranks' counts (1.0 for one process).

    Weighting a rank's masked-mean loss by ``share * world_size`` before the averaged backward
    gives the gradient of the mean over the whole global batch's labels.
    """
    if not ctx.is_distributed:
        return 1.0
    total = torch.tensor([float(count)], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(total)
    return float(count) / total.item() if total.item() > 0 else 0.0


def average_metrics(metrics: dict[str, float], ctx: DistContext, weight: float) -> dict[str, float]:
    """``sum over ranks of weight * value`` for every metric (the same keys on every rank).

    With ``weight = 1 / world_size`` a metric that is a per-rank mean becomes the global mean;
    with :func:`global_share` weights a masked mean becomes the global masked mean.
    """
    if not ctx.is_distributed:
        return dict(metrics)
    keys = list(metrics)
    values = torch.tensor(
        [metrics[k] * weight for k in keys], dtype=torch.float64, device=_comm_device()
    )
    dist.all_reduce(values)
    return dict(zip(keys, values.tolist(), strict=True))


def any_rank(flag: bool, ctx: DistContext) -> bool:
    """True on every rank if ``flag`` is True on any rank (e.g. a SIGTERM seen by one)."""
    if not ctx.is_distributed:
        return flag
    value = torch.tensor([int(flag)], device=_comm_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def share_from_main(value: T, ctx: DistContext) -> T:
    """Rank 0's ``value`` on every rank (a small picklable object, e.g. an RNG state)."""
    if not ctx.is_distributed:
        return value
    box: list[Any] = [value if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def run_on_main(fn: Callable[[], T], ctx: DistContext) -> T | None:
    """Runs ``fn`` on rank 0 only, while the other ranks wait; returns its result on rank 0.

    Other ranks get None, or raise when ``fn`` raised on rank 0: a ``ValueError`` with the
    same message for a ``ValueError`` (a user error, reported the same everywhere), else a
    ``RuntimeError`` naming rank 0's exception.
    """
    if not ctx.is_distributed:
        return fn()
    if ctx.is_main:
        try:
            result = fn()
        except BaseException as error:
            share_from_main((type(error).__name__, str(error), isinstance(error, ValueError)), ctx)
            raise
        share_from_main(None, ctx)
        return result
    failed = share_from_main(None, ctx)
    if failed is None:
        return None
    name, message, user_error = failed
    if user_error:
        raise ValueError(message)
    raise RuntimeError(f"rank 0 failed with {name}: {message}")


def broadcast_modules(modules: Iterable[nn.Module], ctx: DistContext) -> None:
    """Copies rank 0's parameters and buffers into every rank's modules, in place."""
    if not ctx.is_distributed:
        return
    with torch.no_grad():
        for module in modules:
            for tensor in module.state_dict().values():
                dist.broadcast(tensor, src=0)


def _digest(module: nn.Module) -> str:
    """SHA-256 of a module's parameters and buffers, bit for bit."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        raw = tensor.detach().contiguous().reshape(-1).view(torch.uint8)  # (bytes,)
        digest.update(raw.cpu().numpy().tobytes())
    return digest.hexdigest()


def check_in_sync(module: nn.Module, name: str, ctx: DistContext) -> None:
    """Checks that ``module`` holds bit-identical parameters and buffers on every rank.

    Raises:
        RuntimeError: On every rank, if any two ranks differ.
    """
    if not ctx.is_distributed:
        return
    digests: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(digests, _digest(module))
    if len(set(digests)) != 1:
        raise RuntimeError(
            f"the {name} parameters differ between ranks after its phase (digests {digests}); "
            "the gradient all-reduce or an optimizer step was not the same on every rank"
        )
