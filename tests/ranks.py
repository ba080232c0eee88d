"""Starts the processes of a multi-rank test from a fork server that has imported torch once.

``torch.multiprocessing.spawn`` starts each rank as a new interpreter, which imports torch,
rem_env and rem_train again, and torch._dynamo when it builds its first optimizer (together
8-10 s of CPU a process, more on a busy machine). A ``forkserver``
start imports them once, in the server (one per test process, kept for the session), and forks
every rank from it: each rank is still a fresh process that has not run a torch operation (no
OpenMP or gloo threads inherited), and it still creates, uses and leaves its own process group.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from typing import Any

from torch.multiprocessing import start_processes

PRELOAD = ["torch", "torch._dynamo", "rem_env", "rem_train.trainer", "rem_train.distributed"]
"""Modules the fork server imports before it forks its first process."""


def run_ranks(fn: Callable[..., None], args: tuple[Any, ...], nprocs: int) -> None:
    """``fn(rank, *args)`` in ``nprocs`` processes forked from the fork server; waits for all and
    raises if one failed (as ``torch.multiprocessing.spawn`` does)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([*PRELOAD, fn.__module__])  # used when the server starts
    start_processes(fn, args=args, nprocs=nprocs, join=True, start_method="forkserver")
