"""How many CPU threads a dream step runs on: torch's, or fewer beside busy neighbours.

A dream step on a CPU is some 400 operator calls, about half of them parallel regions that
every intra-op thread must join before the next call starts. When another process keeps a core
busy, the thread that shares that core waits for the scheduler at every region: a one-dream
step that takes 30 ms on a quiet 2-core machine took 1.4 s beside one busy process. A
:class:`StepThreads` in ``"auto"`` mode reads how much CPU the rest of the machine used
(``/proc/stat`` minus this process's own CPU time) and how long this process's threads waited
for a CPU (``/proc/self/task/*/schedstat``), and runs the step on the cores that were left
free: all of torch's threads on a quiet machine, fewer beside busy neighbours, one at the
least. Where ``/proc/stat`` cannot be read (not Linux), ``"auto"`` keeps torch's count.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import torch

__all__ = ["AUTO", "SAMPLE_SECONDS", "StepThreads", "Threads"]

AUTO = "auto"
Threads = int | Literal["auto"]
"""A thread count for dream steps, or ``"auto"``."""

SAMPLE_SECONDS = 0.25
"""Least wall time between two readings of the machine's load (``/proc/stat`` counts in 10 ms
ticks: a quarter second of two cores is 50 of them)."""

MARGIN = 0.3
"""CPU (in cores) that other processes may use before ``"auto"`` gives a thread up: the hum of
an idle desktop does not cost a thread; one busy process does."""

WAIT_SHARE = 0.25
"""Share of the wall time this process's threads may spend waiting for a CPU before ``"auto"``
gives a thread up: more means the machine is oversubscribed (its threads' own spinning can
hide a neighbour's demand from ``/proc/stat``)."""

_PROC_STAT = Path("/proc/stat")
_TASKS = Path("/proc/self/task")
_BUSY_FIELDS = (0, 1, 2, 5, 6)  # user, nice, system, irq, softirq (steal and idle are not work)


class StepThreads:
    """Chooses, step by step, the intra-op thread count of dream steps.

    Args:
        threads: ``"auto"`` (torch's thread count, less the cores that other processes kept
            busy since the last reading, and one less than last time if this process's threads
            queued for a CPU for over ``WAIT_SHARE`` of it) or a positive int (that many
            threads during each step, whatever the machine does).
        stat_path: The kernel's CPU counters (a test points it elsewhere).
        tasks_path: The folder of this process's threads and their scheduler statistics.

    The count applies inside :meth:`running` only: torch's own setting is put back after each
    step, so the rest of the program keeps the threads it had.

    Example:
        >>> import torch
        >>> policy = StepThreads(1)
        >>> with policy.running() as threads:
        ...     threads == torch.get_num_threads() == 1
        True
    """

    def __init__(
        self, threads: Threads = AUTO, *, stat_path: Path = _PROC_STAT, tasks_path: Path = _TASKS
    ) -> None:
        if threads != AUTO and (
            isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
        ):
            raise ValueError(f"threads must be 'auto' or a positive int, got {threads!r}")
        self.threads: Threads = threads
        self._stat_path = stat_path
        self._tasks_path = tasks_path
        self._tick = 1.0 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01
        self._last: tuple[float, float, float, float] | None = None  # wall, busy, own, waited
        self._free: int | None = None  # cores left free at the last reading
        self._others: float | None = None
        self._waiting: float | None = None
        self._used = 0  # the count given for the steps since the last reading

    @contextlib.contextmanager
    def running(self) -> Iterator[int]:
        """Runs the body on :meth:`count` threads; yields that count."""
        wanted = self.count()
        before = torch.get_num_threads()
        if wanted == before:
            yield wanted
            return
        torch.set_num_threads(wanted)
        try:
            yield wanted
        finally:
            torch.set_num_threads(before)

    def count(self) -> int:
        """The thread count for the next step (in ``"auto"`` mode, reads the load when due)."""
        if self.threads != AUTO:
            return int(self.threads)
        requested = torch.get_num_threads()
        self._sample()
        self._used = requested if self._free is None else max(1, min(requested, self._free))
        return self._used

    @property
    def others(self) -> float | None:
        """Cores other processes kept busy over the last reading's interval (None: none yet)."""
        return self._others

    @property
    def waiting(self) -> float | None:
        """Share of the last reading's interval that this process's threads spent waiting for a
        CPU, summed over threads (None: no reading yet)."""
        return self._waiting

    def _sample(self) -> None:
        now = time.monotonic()
        if self._last is not None and now - self._last[0] < SAMPLE_SECONDS:
            return
        cpus = _allowed_cpus()
        busy = self._busy_seconds(cpus)
        if busy is None:
            return
        own = time.process_time()
        waited = self._waited_seconds()
        if self._last is not None:
            wall, busy_before, own_before, waited_before = self._last
            seconds = now - wall
            others = max(0.0, (busy - busy_before) - (own - own_before)) / seconds
            self._others = others
            cores = len(cpus) if cpus else os.cpu_count() or 1
            free = cores - max(0, math.ceil(others - MARGIN))
            self._waiting = (waited - waited_before) / seconds
            if self._waiting > WAIT_SHARE and self._used > 1:
                free = min(free, self._used - 1)  # our threads queued for a CPU: too many
            self._free = max(1, free)
        self._last = (now, busy, own, waited)

    def _busy_seconds(self, cpus: set[int] | None) -> float | None:
        """CPU seconds spent working on the given CPUs (all when None) since boot."""
        try:
            lines = self._stat_path.read_text().splitlines()
        except OSError:
            return None
        total = 0
        for line in lines:
            name, _, rest = line.partition(" ")
            if not name.startswith("cpu") or name == "cpu":
                continue
            if cpus is not None and int(name[3:]) not in cpus:
                continue
            fields = rest.split()
            total += sum(int(fields[i]) for i in _BUSY_FIELDS if i < len(fields))
        return total * self._tick

    def _waited_seconds(self) -> float:
        """Seconds this process's threads spent runnable but waiting for a CPU (0 where the
        kernel does not say)."""
        total = 0
        try:
            tasks = list(self._tasks_path.iterdir())
        except OSError:
            return 0.0
        for task in tasks:
            try:
                total += int((task / "schedstat").read_text().split()[1])
            except (OSError, IndexError, ValueError):
                continue  # a thread that ended, or no scheduler statistics
        return total / 1e9


def _allowed_cpus() -> set[int] | None:
    """The CPUs this process may run on (None where the OS does not say)."""
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return None
