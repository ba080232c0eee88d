"""The thread policy of dream steps (rem_env.threads) and DreamVectorEnv's ``threads=``."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest
import torch

from rem_env import DreamEnv, DreamVectorEnv, REMConfig, REMModel
from rem_env import threads as threads_module
from rem_env.threads import SAMPLE_SECONDS, StepThreads


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


class FakeMachine:
    """Two CPUs whose /proc/stat counters, wall clock and own CPU time the test advances."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tasks = path.parent / "task"
        self.ticks = [0, 0]  # busy ticks of cpu0 and cpu1 (100 per second)
        self.wall = 1000.0
        self.own = 0.0
        self.waited = 0.0  # seconds this process's threads waited for a CPU
        self.write()

    def write(self) -> None:
        total = sum(self.ticks)
        lines = [f"cpu  {total} 0 0 999 0 0 0 0 0 0"]
        lines += [f"cpu{i} {t} 0 0 999 0 0 0 0 0 0" for i, t in enumerate(self.ticks)]
        self.path.write_text("\n".join([*lines, "intr 1 2 3", "procs_running 2"]) + "\n")
        for tid, share in ((11, 0.5), (12, 0.5)):  # two threads, the wait shared between them
            (self.tasks / str(tid)).mkdir(parents=True, exist_ok=True)
            ns = round(self.waited * share * 1e9)
            (self.tasks / str(tid) / "schedstat").write_text(f"123 {ns} 7\n")

    def run(
        self, seconds: float, own_cores: float, other_cores: float, waiting: float = 0.0
    ) -> None:
        """Advances the clock: this process used ``own_cores``, others ``other_cores``, and
        this process's threads waited ``waiting`` cores' worth of time for a CPU."""
        self.wall += seconds
        self.own += own_cores * seconds
        self.waited += waiting * seconds
        busy = round((own_cores + other_cores) * seconds * 100)
        self.ticks[0] += busy // 2
        self.ticks[1] += busy - busy // 2
        self.write()


@pytest.fixture
def machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeMachine:
    fake = FakeMachine(tmp_path / "stat")
    clock = types.SimpleNamespace(monotonic=lambda: fake.wall, process_time=lambda: fake.own)
    monkeypatch.setattr(threads_module, "time", clock)
    monkeypatch.setattr(threads_module, "_allowed_cpus", lambda: {0, 1})
    monkeypatch.setattr(threads_module.os, "sysconf", lambda name: 100)
    return fake


def test_a_fixed_count_applies_inside_the_step_only(two_threads) -> None:
    policy = StepThreads(1)
    with policy.running() as count:
        assert count == 1 == torch.get_num_threads()
    assert torch.get_num_threads() == 2
    with pytest.raises(RuntimeError), policy.running():
        raise RuntimeError("a failing step")
    assert torch.get_num_threads() == 2  # put back on errors too


@pytest.mark.parametrize("bad", [0, -1, 1.5, "two", True, None])
def test_bad_thread_counts_are_refused(bad) -> None:
    with pytest.raises(ValueError, match="threads must be 'auto' or a positive int"):
        StepThreads(bad)


def test_auto_gives_a_busy_neighbours_core_up_and_takes_it_back(two_threads, machine) -> None:
    policy = StepThreads("auto", stat_path=machine.path, tasks_path=machine.tasks)
    assert policy.count() == 2  # no reading yet: torch's count
    machine.run(SAMPLE_SECONDS, own_cores=1.0, other_cores=0.05)  # quiet: idle hum only
    assert policy.count() == 2
    assert policy.others == pytest.approx(0.05, abs=0.05)
    machine.run(SAMPLE_SECONDS, own_cores=1.2, other_cores=0.8)  # one busy neighbour
    assert policy.count() == 1
    with policy.running():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    machine.run(SAMPLE_SECONDS / 10, own_cores=1.0, other_cores=0.0)
    assert policy.count() == 1  # not read again before SAMPLE_SECONDS went by
    machine.run(SAMPLE_SECONDS, own_cores=1.0, other_cores=0.0)  # the neighbour left
    assert policy.count() == 2


def test_auto_gives_a_thread_up_when_its_threads_queue_for_cpus(two_threads, machine) -> None:
    policy = StepThreads("auto", stat_path=machine.path, tasks_path=machine.tasks)
    policy.count()
    # Two threads spinning at each other's barriers hide a neighbour that got little CPU...
    machine.run(SAMPLE_SECONDS, own_cores=1.8, other_cores=0.2, waiting=0.6)
    assert policy.count() == 1
    assert policy.waiting == pytest.approx(0.6)
    machine.run(SAMPLE_SECONDS, own_cores=1.0, other_cores=1.0)  # ...that one thread reveals
    assert policy.count() == 1
    machine.run(SAMPLE_SECONDS, own_cores=1.0, other_cores=0.0, waiting=0.05)
    assert policy.count() == 2


def test_auto_keeps_torchs_count_without_kernel_counters(two_threads, tmp_path: Path) -> None:
    policy = StepThreads("auto", stat_path=tmp_path / "missing", tasks_path=tmp_path / "none")
    assert policy.count() == 2 and policy.count() == 2
    assert policy.others is None


def test_dream_env_steps_on_the_threads_it_was_given(two_threads, monkeypatch) -> None:
    model = REMModel(REMConfig.preset("tiny", num_actions=4))
    seen: list[int] = []
    inner = model.imagine_step

    def recording(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return inner(*args, **kwargs)

    monkeypatch.setattr(model, "imagine_step", recording)
    envs = DreamVectorEnv(model, num_envs=2, obs_type="tokens", threads=1)
    envs.reset(seed=0)
    envs.step(np.zeros(2, dtype=np.int64))
    assert seen == [1] and torch.get_num_threads() == 2
    envs.close()
    auto = DreamVectorEnv(model, num_envs=2, obs_type="tokens")
    assert auto.step_threads.threads == "auto"
    with pytest.raises(ValueError, match="threads must be"):
        DreamVectorEnv(model, num_envs=2, threads=0)
    single = DreamEnv(model, obs_type="tokens", threads=1)
    assert single.vector_env.step_threads.threads == 1
