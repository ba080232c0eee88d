"""Tests of rem_train.replay: masks, padding, uniform windows, crash safety, resume, full disk."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

import rem_train.replay as replay_module
from rem_train.replay import ReplayBuffer, ReplayWriteError, frames_to_tensor

SHAPE = (2, 2, 3)


def _obs(value: int) -> np.ndarray:
    return np.full(SHAPE, value % 256, dtype=np.uint8)


def _fill(buf: ReplayBuffer, lengths: list[int], first_value: int = 0) -> None:
    """Appends episodes of the given lengths; step values count up from first_value."""
    value = first_value
    for length in lengths:
        for t in range(length):
            buf.append(_obs(value), value % 4, float(value), terminated=t == length - 1)
            value += 1


@pytest.fixture
def buf(tmp_path: Path) -> ReplayBuffer:
    b = ReplayBuffer(tmp_path / "buf", obs_shape=SHAPE, fsync=False)
    yield b
    b.close()


def test_episodes_and_flags(buf: ReplayBuffer) -> None:
    _fill(buf, [3, 5])
    buf.append(_obs(8), 1, 0.0, terminated=False, truncated=True)
    assert buf.num_steps == 9 and len(buf) == 9
    assert buf.episode_lengths.tolist() == [3, 5, 1]
    ep = buf.episode(1)
    assert ep.obs[:, 0, 0, 0].tolist() == [3, 4, 5, 6, 7]
    assert ep.terminated.tolist() == [False] * 4 + [True]
    assert ep.rewards.dtype == np.float32 and ep.actions.dtype == np.int64
    assert buf.episode(-1).truncated.tolist() == [True]
    with pytest.raises(IndexError):
        buf.episode(3)
    with pytest.raises(TypeError, match="uint8"):
        buf.append(np.zeros(SHAPE, np.float32), 0, 0.0, False)
    with pytest.raises(ValueError, match="shape"):
        buf.append(np.zeros((3, 3, 3), np.uint8), 0, 0.0, False)


def test_right_padded_segments(buf: ReplayBuffer) -> None:
    _fill(buf, [4])  # values 0..3; windows start 0 or 1 (len - 3)
    batch = buf.sample_segments(200, 6, np.random.default_rng(0), pad="right")
    assert batch.obs.shape == (200, 6, *SHAPE) and batch.obs.dtype == np.uint8
    starts = set()
    for b in range(200):
        n = int(batch.mask[b].sum())
        assert batch.mask[b].tolist() == [True] * n + [False] * (6 - n)
        first = int(batch.obs[b, 0, 0, 0, 0])
        starts.add(first)
        assert n == 4 - first
        assert batch.obs[b, :n, 0, 0, 0].tolist() == list(range(first, 4))
        assert (batch.obs[b, n:] == 0).all() and (batch.actions[b, n:] == 0).all()
        assert (batch.rewards[b, n:] == 0).all() and not batch.ends[b, n:].any()
        assert batch.ends[b, n - 1]  # the episode's last step is its end
        assert batch.rewards[b, :n].tolist() == [float(v) for v in range(first, 4)]
    assert starts == {0, 1}


def test_left_padded_segments(buf: ReplayBuffer) -> None:
    _fill(buf, [5], first_value=10)  # values 10..14; window ends 3, 4, 5
    batch = buf.sample_segments(300, 4, np.random.default_rng(1), pad="left")
    ends = Counter()
    for b in range(300):
        n = int(batch.mask[b].sum())
        assert batch.mask[b].tolist() == [False] * (4 - n) + [True] * n
        last = int(batch.obs[b, -1, 0, 0, 0])
        ends[last] += 1
        assert batch.obs[b, 4 - n :, 0, 0, 0].tolist() == list(range(last - n + 1, last + 1))
        assert (batch.obs[b, : 4 - n] == 0).all()
        assert n == min(4, last - 10 + 1)
    assert set(ends) == {12, 13, 14}


def test_windows_are_uniform_over_episodes(buf: ReplayBuffer) -> None:
    # Episodes of 3, 12 and 2 steps: 1 + 10 + 0 windows; each window equally likely.
    _fill(buf, [3, 12, 2])
    rng = np.random.default_rng(2)
    n = 22_000
    batch = buf.sample_segments(n, 10, rng, pad="right")
    firsts = Counter(batch.obs[:, 0, 0, 0, 0].tolist())
    assert set(firsts) == {0, *range(3, 13)}  # never the 2-step episode (values 15, 16)
    for count in firsts.values():
        assert abs(count - n / 11) < 5 * np.sqrt(n / 11)
    frames = buf.sample_frames(17_000, rng)
    counts = Counter(frames.obs[:, 0, 0, 0].tolist())
    assert len(counts) == 17
    assert all(abs(c - 1000) < 200 for c in counts.values())


def test_sampling_is_seedable_and_errors(buf: ReplayBuffer) -> None:
    with pytest.raises(ValueError, match="empty"):
        buf.sample_frames(2, np.random.default_rng(0))
    _fill(buf, [2])
    with pytest.raises(ValueError, match="at least 3"):
        buf.sample_segments(2, 10, np.random.default_rng(0), pad="right")
    with pytest.raises(ValueError, match="pad"):
        buf.sample_segments(2, 10, np.random.default_rng(0), pad="middle")  # type: ignore[arg-type]
    _fill(buf, [6, 7], first_value=2)
    a = buf.sample_segments(8, 5, np.random.default_rng(3), pad="left")
    b = buf.sample_segments(8, 5, np.random.default_rng(3), pad="left")
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_tail_segment_and_torch(buf: ReplayBuffer) -> None:
    empty = buf.tail_segment(3)
    assert not empty.mask.any() and empty.obs.shape == (1, 3, *SHAPE)
    _fill(buf, [4])
    buf.append(_obs(50), 0, 0.0, terminated=False)
    buf.append(_obs(51), 0, 0.0, terminated=False)
    tail = buf.tail_segment(3)
    assert tail.mask.tolist() == [[False, True, True]]
    assert tail.obs[0, 1:, 0, 0, 0].tolist() == [50, 51]
    t = tail.to_torch()
    assert t.obs.dtype == torch.uint8 and t.mask.dtype == torch.bool
    assert t.actions.dtype == torch.int64 and t.rewards.dtype == torch.float32
    x = frames_to_tensor(t.obs)
    assert x.shape == (1, 3, 3, 2, 2) and x.max() <= 1.0
    assert buf.sample_frames(2, np.random.default_rng(0)).frames().shape == (2, 3, 2, 2)


def test_reopen_resumes_and_starts_a_new_episode(tmp_path: Path) -> None:
    root = tmp_path / "buf"
    with ReplayBuffer(root, obs_shape=SHAPE, fsync=False) as buf:
        _fill(buf, [3])
        buf.append(_obs(9), 0, 0.0, terminated=False)  # an unfinished episode
        with pytest.raises(RuntimeError, match="already open"):
            ReplayBuffer(root, obs_shape=SHAPE)
    with ReplayBuffer(root, obs_shape=SHAPE, fsync=False) as buf:
        assert buf.num_steps == 4 and buf.episode_lengths.tolist() == [3, 1]
        buf.append(_obs(10), 0, 0.0, terminated=False)
        assert buf.episode_lengths.tolist() == [3, 1, 1]
    with pytest.raises(ValueError, match="shape"):
        ReplayBuffer(root, obs_shape=(4, 4, 3))
    with pytest.raises(ValueError, match="closed"):
        buf.append(_obs(0), 0, 0.0, terminated=False)


def test_partial_and_corrupt_tail_is_dropped(tmp_path: Path) -> None:
    root = tmp_path / "buf"
    with ReplayBuffer(root, obs_shape=SHAPE, fsync=False) as buf:
        _fill(buf, [3, 2])
        size = buf._record_size
    data = root / "transitions.bin"
    with open(data, "ab") as f:
        f.write(b"\x01" * (size // 2))  # half a record
    with ReplayBuffer(root, obs_shape=SHAPE, fsync=False) as buf:
        assert buf.num_steps == 5
    assert data.stat().st_size == 5 * size
    raw = bytearray(data.read_bytes())
    raw[-6] ^= 0xFF  # corrupt the last complete record's payload
    data.write_bytes(bytes(raw))
    with ReplayBuffer(root, obs_shape=SHAPE, fsync=False) as buf:
        assert buf.num_steps == 4 and buf.episode_lengths.tolist() == [3, 1]


def test_full_disk_keeps_the_store_consistent(
    buf: ReplayBuffer, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fill(buf, [3])
    real_pwrite = os.pwrite

    def half_then_fail(fd: int, data: memoryview, offset: int) -> int:
        if len(data) > 10:
            real_pwrite(fd, bytes(data[: len(data) // 2]), offset)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(replay_module.os, "pwrite", half_then_fail)
    with pytest.raises(ReplayWriteError, match="No space left") as info:
        buf.append(_obs(3), 0, 0.0, terminated=False)
    assert info.value.errno == errno.ENOSPC
    assert buf.num_steps == 3
    assert (buf.root / "transitions.bin").stat().st_size == 3 * buf._record_size
    monkeypatch.setattr(replay_module.os, "pwrite", real_pwrite)
    buf.append(_obs(3), 0, 0.0, terminated=True)  # space freed: it works again
    assert buf.episode_lengths.tolist() == [3, 1]  # the failed step did not open an episode
    root = buf.root
    buf.close()
    with ReplayBuffer(root, obs_shape=SHAPE) as again:
        assert again.episode(1).obs[0, 0, 0, 0] == 3 and again.num_steps == 4


_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    import rem_train.replay as replay

    buf = replay.ReplayBuffer(sys.argv[1], obs_shape=(64, 64, 3), fsync=False)
    if sys.argv[2] == "mid_record":
        real_pwrite = os.pwrite

        def pwrite_then_die(fd, data, offset):
            if buf.num_steps == 300:  # the 301st record: write half of it, then get killed
                real_pwrite(fd, bytes(data[: len(data) // 2]), offset)
                os.kill(os.getpid(), signal.SIGKILL)
            return real_pwrite(fd, data, offset)

        replay.os.pwrite = pwrite_then_die
    i = 0
    while True:
        buf.append(np.full((64, 64, 3), i % 251, np.uint8), i % 7, float(i), i % 13 == 12)
        print(i, flush=True)
        i += 1
    """
)


@pytest.mark.parametrize("how", ["mid_record", "external"])
def test_sigkill_loses_no_completed_transition(tmp_path: Path, how: str) -> None:
    root = tmp_path / "buf"
    repo = Path(__file__).resolve().parents[1]
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(root), how],
        stdout=subprocess.PIPE,
        text=True,
        cwd=repo,
        env={**os.environ, "PYTHONPATH": str(repo)},
    )
    try:
        completed = -1
        for line in child.stdout:  # type: ignore[union-attr]
            completed = int(line)
            if how == "external" and completed >= 300:
                os.kill(child.pid, signal.SIGKILL)  # while it keeps writing
                break
    finally:
        child.kill()
        assert child.wait() == -signal.SIGKILL
        child.stdout.close()  # type: ignore[union-attr]
    data = root / "transitions.bin"
    if how == "mid_record":
        assert completed == 299
        record = replay_module._record_dtype((64, 64, 3)).itemsize
        assert data.stat().st_size == 300 * record + record // 2  # a half record on disk
    with ReplayBuffer(root, obs_shape=(64, 64, 3)) as buf:
        assert buf.num_steps >= completed + 1
        if how == "mid_record":
            assert buf.num_steps == 300
        n = buf.num_steps
        episodes = [buf.episode(e) for e in range(buf.num_episodes)]
        obs = np.concatenate([ep.obs[:, 0, 0, 0] for ep in episodes])
        rewards = np.concatenate([ep.rewards for ep in episodes])
        assert rewards.tolist() == [float(i) for i in range(n)]
        assert obs.tolist() == [i % 251 for i in range(n)]
        assert (buf.episode_lengths[:-1] == 13).all()


def test_failed_open_releases_the_folder(tmp_path: Path) -> None:
    root = tmp_path / "buf"
    root.mkdir()
    (root / "transitions.bin").write_bytes(b"")
    with pytest.raises(ValueError, match=r"no meta\.json"):
        ReplayBuffer(root, obs_shape=SHAPE)
    other = tmp_path / "other"
    with ReplayBuffer(other, obs_shape=SHAPE) as buf:
        _fill(buf, [2])
        flags_at = buf._record_size - 5  # the flags byte of record 0
    raw = bytearray((other / "transitions.bin").read_bytes())
    raw[flags_at] = 0  # record 0 no longer starts an episode
    (other / "transitions.bin").write_bytes(bytes(raw))
    for _ in range(2):  # the same error twice: the failed open released the lock
        with pytest.raises(ValueError, match="corrupt"):
            ReplayBuffer(other, obs_shape=SHAPE)


def test_read_only_views_follow_the_writer(buf: ReplayBuffer) -> None:
    """Data-parallel ranks > 0: no lock, no writes, refresh() takes in what the writer appended."""
    with pytest.raises(ValueError, match="no replay buffer"):
        ReplayBuffer(buf.root.parent / "missing", obs_shape=SHAPE, read_only=True)
    _fill(buf, [4, 3])
    buf.append(_obs(50), 1, 0.0, terminated=False)  # an open episode
    views = [ReplayBuffer(buf.root, obs_shape=SHAPE, read_only=True) for _ in range(2)]
    view = views[0]
    assert (view.num_steps, view.episode_lengths.tolist()) == (8, [4, 3, 1])
    with pytest.raises(ValueError, match="read-only"):
        view.append(_obs(0), 0, 0.0, terminated=False)
    buf.append(_obs(51), 2, 1.0, terminated=True)  # closes the open episode
    _fill(buf, [5], first_value=60)
    with open(buf.root / "transitions.bin", "ab") as f:  # a record still being written
        f.write(b"\0" * 7)
    assert view.num_steps == 8 and view.refresh() == 14
    assert view.episode_lengths.tolist() == buf.episode_lengths.tolist() == [4, 3, 2, 5]
    rng = [np.random.default_rng(3) for _ in range(2)]
    for a, b in zip(
        view.sample_segments(6, 4, rng[0], pad="left"),
        buf.sample_segments(6, 4, rng[1], pad="left"),
        strict=True,
    ):
        assert np.array_equal(a, b)
    assert buf.refresh() == 14  # the writer just says how many it holds
    for v in views:
        v.close()


def test_rows_read_a_part_of_the_same_global_batch(buf: ReplayBuffer) -> None:
    """Ranks draw the global batch from one shared generator state and read their own rows."""
    _fill(buf, [6, 9, 4])
    whole = buf.sample_segments(8, 5, np.random.default_rng(7), pad="right")
    parts = [
        buf.sample_segments(8, 5, np.random.default_rng(7), pad="right", rows=slice(r, r + 4))
        for r in (0, 4)
    ]
    for name, value in whole._asdict().items():
        assert np.array_equal(np.concatenate([getattr(p, name) for p in parts]), value), name
    frames = buf.sample_frames(6, np.random.default_rng(1)).obs
    assert np.array_equal(
        buf.sample_frames(6, np.random.default_rng(1), slice(2, 4)).obs, frames[2:4]
    )
