"""``gym.make_vec(..., vectorization_mode="async")``: forked workers must not deadlock in torch.

A parent whose torch has run a parallel op forks workers whose OpenMP pool is dead: before the
fix, their first parallel op hung forever (and the parent with them, in ``_check_spaces``). Each
case runs in a subprocess of its own session, with a hard timeout, so a regression fails instead
of hanging the test run, and the subprocess is killed with all its workers.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rem_env import REMConfig, REMModel
from rem_env.hub import save_pretrained

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="fork is POSIX-only")

TIMEOUT_S = 300
"""A case that has not ended by then is deadlocked: each takes under 10 s on a quiet 2-core
machine, so load cannot reach it (a shared guard of many minutes would let a deadlock of every
case outlast CI)."""

# The parent runs torch on 2 threads and runs a parallel op first: that is what poisons the
# OpenMP pool the forked workers inherit.
PRELUDE = """
import os, sys, time
import numpy as np
import torch
torch.set_num_threads(2)
x = torch.randn(512, 512)
(x @ x).sum()
import gymnasium as gym
import rem_env
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = REMModel(REMConfig.preset("tiny", num_actions=4, game="Breakout"))
    return save_pretrained(model, tmp_path_factory.mktemp("async") / "tiny")


def _run(code: str, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """Runs ``code`` in a new session; on timeout kills the session and fails the test."""
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    with subprocess.Popen(
        [sys.executable, "-c", PRELUDE + code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            pytest.fail(f"timed out after {timeout} s (deadlock?)\nstdout:\n{out}\nstderr:\n{err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize("obs_type", ["tokens", "rgb"])
def test_make_vec_async_with_fork_does_not_hang(folder: Path, obs_type: str) -> None:
    code = f"""
venv = gym.make_vec(
    "REM-Breakout-v0", num_envs=3, vectorization_mode="async", model={str(folder)!r},
    obs_type={obs_type!r},
)
assert venv.context is None  # the default start method: fork on Linux
obs, _ = venv.reset(seed=0)
for _ in range(3):
    obs, reward, terminated, truncated, _ = venv.step(np.zeros(3, dtype=np.int64))
venv.close()
print("ok", obs.shape, torch.get_num_threads())
"""
    result = _run(code)
    assert result.returncode == 0, result.stderr
    shape = "(3, 16)" if obs_type == "tokens" else "(3, 16, 16, 3)"
    # the parent keeps its 2 threads; only the forked workers run on one
    assert result.stdout.split("\n")[0] == f"ok {shape} 2", result.stdout


def test_make_vec_async_spawn_still_works(folder: Path) -> None:
    code = f"""
venv = gym.make_vec(
    "REM-Breakout-v0", num_envs=2, vectorization_mode="async", model={str(folder)!r},
    obs_type="tokens", vector_kwargs={{"context": "spawn"}},
)
obs, _ = venv.reset(seed=0)
venv.step(np.zeros(2, dtype=np.int64))
venv.close()
print("ok", obs.shape)
"""
    result = _run(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok (2, 16)"), result.stdout


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting to be reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            return file.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
def test_workers_exit_when_the_parent_is_killed(folder: Path) -> None:
    code = f"""
venv = gym.make_vec(
    "REM-Breakout-v0", num_envs=3, vectorization_mode="async", model={str(folder)!r},
    obs_type="tokens",
)
venv.reset(seed=0)
print(" ".join(str(p.pid) for p in venv.processes), flush=True)
time.sleep(600)
"""
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    with subprocess.Popen(
        [sys.executable, "-c", PRELUDE + code],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        start_new_session=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], TIMEOUT_S)
            if not ready:
                pytest.fail(f"no answer in {TIMEOUT_S} s (deadlock?)")
            line = proc.stdout.readline()  # the workers answered a reset
            workers = [int(pid) for pid in line.split()]
            assert len(workers) == 3, line
            proc.kill()
            proc.wait()
            for _ in range(300):  # up to 30 s for the workers to see the closed pipes
                if not any(_alive(pid) for pid in workers):
                    break
                time.sleep(0.1)
            left = [pid for pid in workers if _alive(pid)]
            assert not left, f"workers {left} outlived their killed parent"
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
