"""How long a test waits for a subprocess before it calls it hung.

A guard against hangs, never a measure of speed: far above what any of the suite's subprocesses
takes on a 2-core machine whose cores are busy with other work (the slowest, a data-parallel
training run, takes under a minute quiet), so that load cannot fail a test, while a deadlock
still fails it instead of stalling the run until CI's own limit.
"""

HANG_GUARD_S = 900
"""Seconds a test waits for one subprocess (or one event of it) before failing as hung."""
