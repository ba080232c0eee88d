"""Replay buffer records are checked against their CRC-32, not only the tail record."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rem_train.replay import ReplayBuffer, ReplayCorruptError

SHAPE = (4, 4, 3)


def _fill(buf: ReplayBuffer, lengths: list[int], first_value: int = 0) -> None:
    value = first_value
    for length in lengths:
        for t in range(length):
            buf.append(np.full(SHAPE, value, np.uint8), value % 4, 1.0, terminated=t == length - 1)
            value += 1


def _flip(root: Path, record: int, byte: int, record_size: int) -> None:
    """Flips one bit of byte ``byte`` of record ``record`` (negative: from its end)."""
    path = root / "transitions.bin"
    with open(path, "r+b") as file:
        offset = record * record_size + (byte % record_size)
        file.seek(offset)
        value = file.read(1)[0]
        file.seek(offset)
        file.write(bytes([value ^ 0x10]))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    with ReplayBuffer(tmp_path / "buf", obs_shape=SHAPE, fsync=False) as buf:
        _fill(buf, [6, 5, 7])
    return tmp_path / "buf"


RECORD_SIZE = int(np.prod(SHAPE)) + 4 + 4 + 1 + 4  # obs, action, reward, flags, CRC-32


@pytest.mark.parametrize(
    ("what", "byte"),
    [("obs", 5), ("action", -13), ("reward", -9), ("flags", -5)],
)
@pytest.mark.parametrize("read_only", [False, True])
def test_a_bit_flip_in_a_middle_record_is_reported_with_path_and_index(
    root: Path, what: str, byte: int, read_only: bool
) -> None:
    _flip(root, 8, byte, RECORD_SIZE)
    with pytest.raises(ReplayCorruptError, match=r"record 8 of .*transitions\.bin") as info:
        ReplayBuffer(root, obs_shape=SHAPE, read_only=read_only)
    assert info.value.index == 8 and info.value.path == root / "transitions.bin"
    assert isinstance(info.value, ValueError)


def test_the_failed_open_released_the_folder(root: Path) -> None:
    _flip(root, 3, 0, RECORD_SIZE)
    for _ in range(2):
        with pytest.raises(ReplayCorruptError, match="record 3 "):
            ReplayBuffer(root, obs_shape=SHAPE)


def test_verify_false_opens_a_damaged_buffer_anyway(root: Path) -> None:
    _flip(root, 8, 5, RECORD_SIZE)
    with ReplayBuffer(root, obs_shape=SHAPE, verify=False) as buf:
        assert buf.num_steps == 18
        with pytest.raises(ReplayCorruptError, match="record 8 "):
            buf.verify()


def test_verify_finds_damage_done_after_open(root: Path) -> None:
    with ReplayBuffer(root, obs_shape=SHAPE, read_only=True) as buf:
        buf.verify()
        _flip(root, 17, 1, RECORD_SIZE)
        with pytest.raises(ReplayCorruptError, match="record 17 "):
            buf.verify()
        buf.verify(stop=17)  # the records before it are intact


def test_refresh_checks_the_records_the_writer_appended(root: Path) -> None:
    with ReplayBuffer(root, obs_shape=SHAPE, fsync=False) as writer:
        view = ReplayBuffer(root, obs_shape=SHAPE, read_only=True)
        _fill(writer, [4, 4], first_value=100)
        _flip(root, 20, 2, RECORD_SIZE)  # a new record, not the last one
        with pytest.raises(ReplayCorruptError, match="record 20 "):
            view.refresh()
        assert view.num_steps == 18  # nothing of the bad refresh was taken in
        view.close()


def test_a_corrupt_last_record_is_still_dropped_as_a_crash_artefact(root: Path) -> None:
    _flip(root, 17, 3, RECORD_SIZE)
    with ReplayBuffer(root, obs_shape=SHAPE) as buf:
        assert buf.num_steps == 17
