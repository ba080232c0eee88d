"""Replay buffer of real episodes, stored on disk as they are collected, with segment sampling.

Storage: one append-only file ``transitions.bin`` of fixed-size records (observation, action,
reward, flags, CRC-32), next to ``meta.json``. A record is the observation at step t, the action
taken after it, the reward received and whether the episode ended there (the final observation
after an end is not stored). A flag marks the first record of each episode, so the episode index
is rebuilt from the file on open. Every append is one ``write`` (optionally ``fsync``'ed); on open,
a partial or corrupt tail record is truncated away, so after a crash (SIGKILL, power loss with
``fsync=True``) every completed transition is still there. A failed write (full disk) truncates
the file back to the last complete record and raises :class:`ReplayWriteError`.

Every other record's CRC-32 is checked once, in one pass when the buffer is opened and, for a
read-only view, when :meth:`ReplayBuffer.refresh` takes in new records: a damaged record (a disk
or copy error) raises :class:`ReplayCorruptError` naming the file and the record, instead of
being trained on. :meth:`ReplayBuffer.verify` checks again on demand. (Checking each record as
it is sampled would add about half to the cost of sampling; the pass at open costs about 35 us
per 64x64x3 record: 0.7 s for 20k steps.)

One process writes (it locks the folder); others may open it ``read_only`` and call
:meth:`ReplayBuffer.refresh` to see what the writer appended since (the data-parallel ranks > 0).

Sampling is uniform over every valid window (REM_SPEC 7), with a padding mask:

* single frames for the tokenizer (:meth:`ReplayBuffer.sample_frames`);
* right-padded segments for the world model (``pad="right"``: starts 0..len-min_real);
* left-padded segments for the actor-critic (``pad="left"``: window ends min_real..len).
"""

from __future__ import annotations

import contextlib
import json
import os
import zlib
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np

from rem_train.batches import (
    Episode,
    FrameBatch,
    SegmentBatch,
    TensorSegmentBatch,
    frames_to_tensor,
)

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "Episode",
    "FrameBatch",
    "ReplayBuffer",
    "ReplayCorruptError",
    "ReplayWriteError",
    "SegmentBatch",
    "StepLabels",
    "TensorSegmentBatch",
    "frames_to_tensor",
]

FORMAT_NAME = "rem-env-replay"
FORMAT_VERSION = 1
_DATA_FILE = "transitions.bin"
_META_FILE = "meta.json"
_TERMINATED, _TRUNCATED, _START = 1, 2, 4


_VERIFY_CHUNK = 8 * 2**20  # bytes read at a time when checking records


class ReplayWriteError(OSError):
    """Appending to the replay buffer failed (e.g. the disk is full); the store is unchanged."""


class ReplayCorruptError(ValueError):
    """A stored record does not match its CRC-32: the file was damaged after it was written.

    Attributes:
        path: The data file.
        index: The first damaged record (0-based; the records before it are intact).
    """

    def __init__(self, path: Path, index: int) -> None:
        self.path = path
        self.index = index
        super().__init__(
            f"record {index} of {path} is corrupt: its CRC-32 does not match its content (a "
            f"disk or copy error; records 0..{index - 1} are intact). Restore the buffer from a "
            "backup, or open it with verify=False to use it as it is"
        )


def _record_dtype(obs_shape: tuple[int, ...]) -> np.dtype:
    """The packed little-endian record layout."""
    return np.dtype(
        [
            ("obs", np.uint8, obs_shape),
            ("action", "<i4"),
            ("reward", "<f4"),
            ("flags", "u1"),
            ("crc", "<u4"),
        ]
    )


class StepLabels(NamedTuple):
    """Per-record labels of a replay: (N,) int64 actions, float32 rewards, bool terminated
    flags, and the record number of the first record of each record's episode."""

    actions: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    episode_first: np.ndarray


class ReplayBuffer:
    """Episodes on disk, appended step by step, sampled as frames or padded segments.

    Opening an existing folder resumes it: every complete record is kept, a partial last record
    is dropped, and the next append starts a new episode (the environment that produced an
    unfinished episode is gone after a restart). Only one process may open a folder for writing
    at a time; any number may open it ``read_only`` (no lock, no writes) and :meth:`refresh` to
    see the records appended since.

    Args:
        root: Folder of the buffer; created if missing.
        obs_shape: Shape of one uint8 observation, (64, 64, 3) for REM.
        fsync: Flush every append to the device (survives power loss, not just process death).
        read_only: Open an existing buffer without locking or changing it (appends raise).
        verify: Check the CRC-32 of every stored record on open (one pass, ~35 us per 64x64x3
            record) and of the records each :meth:`refresh` takes in. False skips it, e.g. to
            read what is left of a damaged buffer.

    Raises:
        ValueError: If ``root`` holds a buffer of another format or observation shape, or (with
            ``read_only``) holds no buffer.
        ReplayCorruptError: If a stored record (not the last one, which is dropped as an
            interrupted write) does not match its CRC-32.
        RuntimeError: If another process has the folder open for writing.

    Example:
        >>> import tempfile, numpy as np
        >>> with tempfile.TemporaryDirectory() as d, ReplayBuffer(d, obs_shape=(2, 2, 3)) as buf:
        ...     for t in range(4):
        ...         buf.append(np.full((2, 2, 3), t, np.uint8), 1, 0.0, terminated=t == 3)
        ...     batch = buf.sample_segments(2, 5, np.random.default_rng(0), pad="right")
        ...     buf.num_steps, buf.num_episodes, batch.obs.shape, bool(batch.mask.sum(1).min() >= 3)
        (4, 1, (2, 5, 2, 2, 3), True)
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        obs_shape: tuple[int, ...] = (64, 64, 3),
        fsync: bool = True,
        read_only: bool = False,
        verify: bool = True,
    ) -> None:
        self.root = Path(root)
        self.obs_shape = tuple(int(s) for s in obs_shape)
        self.fsync = bool(fsync)
        self.read_only = bool(read_only)
        self._check_crcs = bool(verify)
        self._dtype = _record_dtype(self.obs_shape)
        self._record_size = self._dtype.itemsize
        self._fd = -1
        self._map: np.ndarray | None = None
        path = self.root / _DATA_FILE
        if self.read_only:
            if not (self.root / _META_FILE).is_file() or not path.is_file():
                raise ValueError(f"{self.root} holds no replay buffer to open read-only")
            self._check_or_write_meta()
            self._fd = os.open(path, os.O_RDONLY)
            self._num_steps, self._starts = 0, []
            self._open_episode = False
            try:
                self.refresh()
            except BaseException:
                self.close()
                raise
            return
        self.root.mkdir(parents=True, exist_ok=True)
        self._check_or_write_meta()
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise RuntimeError(
                        f"replay buffer {self.root} is already open (in this or another process); "
                        "close it there or use another folder"
                    ) from None
            self._num_steps = self._recover()
            if self._check_crcs:
                self._verify(0, self._num_steps)
            self._starts = self._read_starts()
        except BaseException:
            os.close(self._fd)
            self._fd = -1
            raise
        self._open_episode = False

    # ----------------------------------------------------------------- storage

    def _check_or_write_meta(self) -> None:
        meta_path = self.root / _META_FILE
        meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "obs_shape": self.obs_shape}
        if meta_path.exists():
            found = json.loads(meta_path.read_text())
            if found.get("format") != FORMAT_NAME or found.get("version") != FORMAT_VERSION:
                raise ValueError(
                    f"{meta_path} is not a version-{FORMAT_VERSION} {FORMAT_NAME} buffer: {found}"
                )
            if tuple(found.get("obs_shape", ())) != self.obs_shape:
                raise ValueError(
                    f"replay buffer {self.root} stores observations of shape "
                    f"{tuple(found['obs_shape'])}, not {self.obs_shape}"
                )
            return
        if (self.root / _DATA_FILE).exists():
            raise ValueError(f"{self.root} has {_DATA_FILE} but no {_META_FILE}; not a buffer")
        tmp = meta_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, meta_path)

    def _complete_records(self) -> tuple[int, int]:
        """(complete records before any partial or corrupt tail, file size in bytes)."""
        size = os.fstat(self._fd).st_size
        n = size // self._record_size
        while n > 0:
            raw = os.pread(self._fd, self._record_size, (n - 1) * self._record_size)
            if zlib.crc32(raw[:-4]) == int.from_bytes(raw[-4:], "little"):
                break
            n -= 1
        return n, size

    def _recover(self) -> int:
        """Drops a partial or corrupt tail; returns the number of complete records."""
        n, size = self._complete_records()
        if n * self._record_size != size:
            os.ftruncate(self._fd, n * self._record_size)
            os.fsync(self._fd)
        return n

    def _read_starts(self, first: int = 0) -> list[int]:
        """Episode starts among records ``first..num_steps-1``."""
        if self._num_steps == first:
            return []
        flags = self._records()["flags"][first:]
        starts = (first + np.flatnonzero(flags & _START)).tolist()
        if first == 0 and (not starts or starts[0] != 0):
            raise ValueError(f"{self.root / _DATA_FILE} is corrupt: no episode start at record 0")
        return starts

    def verify(self, start: int = 0, stop: int | None = None) -> None:
        """Checks the CRC-32 of records ``start..stop-1`` (default: all) as they are on disk.

        Raises:
            ReplayCorruptError: At the first record that does not match.
            ValueError: If the range is outside the stored records or the buffer is closed.
        """
        if self._fd < 0:
            raise ValueError(f"the replay buffer {self.root} is closed; reopen it")
        stop = self._num_steps if stop is None else stop
        if not 0 <= start <= stop <= self._num_steps:
            raise ValueError(
                f"need 0 <= start <= stop <= {self._num_steps} (the stored records), got "
                f"{start} and {stop}"
            )
        self._verify(start, stop)

    def _verify(self, start: int, stop: int) -> None:
        """Raises ReplayCorruptError at the first of records ``start..stop-1`` with a bad CRC."""
        size = self._record_size
        per_chunk = max(1, _VERIFY_CHUNK // size)
        for first in range(start, stop, per_chunk):
            count = min(per_chunk, stop - first)
            chunk = os.pread(self._fd, count * size, first * size)
            view = memoryview(chunk)
            for i in range(count):
                record = view[i * size : (i + 1) * size]
                if len(record) < size or zlib.crc32(record[:-4]) != int.from_bytes(
                    record[-4:], "little"
                ):
                    raise ReplayCorruptError(self.root / _DATA_FILE, first + i)

    def refresh(self) -> int:
        """Read-only view: takes in the records the writer appended since; returns the count.

        A record the writer is still writing is left for the next refresh. For the writer
        itself this just returns :attr:`num_steps`.

        Raises:
            ReplayCorruptError: If one of the new records does not match its CRC-32 (none of
                them is taken in).
        """
        if self._fd < 0:
            raise ValueError(f"the replay buffer {self.root} is closed; reopen it")
        if self.read_only:
            old = self._num_steps
            n, _ = self._complete_records()
            if n < old:
                raise ValueError(f"{self.root / _DATA_FILE} shrank from {old} to {n} records")
            if self._check_crcs:
                self._verify(old, n)
            self._num_steps = n
            self._starts.extend(self._read_starts(old))
        return self._num_steps

    def _records(self) -> np.ndarray:
        """A read-only memory map of the complete records, (num_steps,) structured."""
        if self._num_steps == 0:
            return np.zeros((0,), dtype=self._dtype)
        if self._map is None or len(self._map) != self._num_steps:
            self._map = np.memmap(
                self.root / _DATA_FILE, dtype=self._dtype, mode="r", shape=(self._num_steps,)
            )
        return self._map

    def append(
        self,
        obs: np.ndarray,
        action: int,
        reward: float,
        terminated: bool,
        truncated: bool = False,
    ) -> None:
        """Appends one transition to the current episode (a new one if none is open).

        Args:
            obs: (H, W, C) uint8 observation at this step.
            action: Action taken after it.
            reward: Reward received (raw, unclipped).
            terminated: The episode ended after this step (a life loss in train mode).
            truncated: The episode was cut (time limit) after this step.

        Either flag closes the episode; the next append starts a new one.

        Raises:
            TypeError: If ``obs`` is not uint8.
            ValueError: If ``obs`` has the wrong shape.
            ReplayWriteError: If the write failed (e.g. disk full); nothing was stored.
            ValueError: If the buffer was closed.
        """
        if self._fd < 0:
            raise ValueError(f"the replay buffer {self.root} is closed; reopen it to append")
        if self.read_only:
            raise ValueError(f"the replay buffer {self.root} was opened read-only; cannot append")
        obs = np.asarray(obs)
        if obs.dtype != np.uint8:
            raise TypeError(f"obs must be uint8, got {obs.dtype}")
        if obs.shape != self.obs_shape:
            raise ValueError(f"obs must have shape {self.obs_shape}, got {obs.shape}")
        flags = (0 if self._open_episode else _START) | (_TERMINATED if terminated else 0)
        flags |= _TRUNCATED if truncated else 0
        record = np.zeros((), dtype=self._dtype)
        record["obs"] = obs
        record["action"] = int(action)
        record["reward"] = float(reward)
        record["flags"] = flags
        raw = bytearray(record.tobytes())
        raw[-4:] = zlib.crc32(raw[:-4]).to_bytes(4, "little")
        offset = self._num_steps * self._record_size
        try:
            view = memoryview(raw)
            written = 0
            while written < len(raw):
                written += os.pwrite(self._fd, view[written:], offset + written)
            if self.fsync:
                os.fsync(self._fd)
        except OSError as error:
            with contextlib.suppress(OSError):  # else the next open drops the partial record
                os.ftruncate(self._fd, offset)
            raise ReplayWriteError(
                error.errno,
                f"could not append to the replay buffer {self.root} ({error.strerror or error}); "
                "nothing was stored. Free disk space and retry; the buffer stays usable",
            ) from error
        if flags & _START:
            self._starts.append(self._num_steps)
        self._num_steps += 1
        self._open_episode = not (terminated or truncated)

    def end_episode(self) -> None:
        """Closes the current episode without an end flag; the next append starts a new one."""
        self._open_episode = False

    def close(self) -> None:
        """Releases the file (and the folder lock). Idempotent."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._map = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def __enter__(self) -> ReplayBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- reading

    @property
    def num_steps(self) -> int:
        """Stored transitions."""
        return self._num_steps

    def __len__(self) -> int:
        return self._num_steps

    @property
    def num_episodes(self) -> int:
        """Stored episodes (the open one included)."""
        return len(self._starts)

    @property
    def episode_lengths(self) -> np.ndarray:
        """(num_episodes,) int64 lengths, oldest first."""
        bounds = np.array([*self._starts, self._num_steps], dtype=np.int64)
        return np.diff(bounds)

    def episode(self, index: int) -> Episode:
        """A copy of episode ``index`` (negative counts from the newest)."""
        n = self.num_episodes
        if not -n <= index < n:
            raise IndexError(f"episode {index} out of range; the buffer has {n} episodes")
        index %= n
        start = self._starts[index]
        stop = self._starts[index + 1] if index + 1 < n else self._num_steps
        rec = self._records()[start:stop]
        flags = rec["flags"]
        return Episode(
            np.array(rec["obs"]),
            rec["action"].astype(np.int64),
            rec["reward"].astype(np.float32),
            (flags & _TERMINATED) != 0,
            (flags & _TRUNCATED) != 0,
        )

    def step_labels(self, start: int = 0) -> StepLabels:
        """The labels of records ``start..`` (observations are not read).

        Example:
            >>> import tempfile
            >>> with tempfile.TemporaryDirectory() as d, ReplayBuffer(d, (2, 2, 3)) as buf:
            ...     for t in range(5):
            ...         buf.append(np.zeros((2, 2, 3), np.uint8), t, float(t == 1),
            ...                    terminated=t == 2)
            ...     labels = buf.step_labels(1)
            >>> labels.rewards.tolist(), labels.terminated.tolist(), labels.episode_first.tolist()
            ([1.0, 0.0, 0.0, 0.0], [False, True, False, False], [0, 0, 3, 3])
        """
        rec = self._records()
        flags = np.asarray(rec["flags"])
        starts = np.flatnonzero(flags & _START)
        first = np.repeat(starts, np.diff(np.append(starts, self._num_steps)))  # (n,)
        return StepLabels(
            rec["action"][start:].astype(np.int64),
            rec["reward"][start:].astype(np.float32),
            (flags[start:] & _TERMINATED) != 0,
            first[start:],
        )

    def observations_at(self, index: np.ndarray) -> np.ndarray:
        """(N, H, W, C) uint8 copies of the observations of records ``index`` (any order)."""
        return np.array(self._records()["obs"][np.asarray(index, dtype=np.int64)])

    def observations(self, start: int, stop: int) -> np.ndarray:
        """(N, H, W, C) uint8 copies of the observations of records ``start..stop-1``.

        Record numbers are those of :attr:`SegmentBatch.index`; ``stop`` is clipped to
        :attr:`num_steps`.
        """
        return np.array(self._records()["obs"][max(start, 0) : min(stop, self._num_steps)])

    def sample_frames(
        self, batch_size: int, rng: np.random.Generator, rows: slice = slice(None)
    ) -> FrameBatch:
        """Frames drawn uniformly (with replacement) from every stored step.

        ``rows`` reads only those rows of the drawn batch: data-parallel ranks draw the same
        global batch from one shared generator and each reads its own part.
        """
        if self._num_steps == 0:
            raise ValueError("the replay buffer is empty; collect some steps first")
        index = rng.integers(0, self._num_steps, size=batch_size)[rows]
        return FrameBatch(np.array(self._records()["obs"][index]))

    def sample_segments(
        self,
        batch_size: int,
        length: int,
        rng: np.random.Generator,
        pad: Literal["right", "left"],
        min_real: int = 3,
        rows: slice = slice(None),
    ) -> SegmentBatch:
        """Segments drawn uniformly over every valid window of every episode.

        ``pad="right"`` (world model): a window starts at s in 0..len-min_real and covers
        ``min(length, len - s)`` real steps, padded at the end. ``pad="left"`` (actor-critic
        burn-in): a window ends at e in min_real..len and covers steps ``max(0, e-length)..e-1``,
        padded at the front. Either way each window has at least ``min_real`` real steps, and an
        episode of length L offers ``L - min_real + 1`` windows (none if shorter).

        Args:
            batch_size: Segments B.
            length: Steps per segment T (10 for the world model, 21 for the actor-critic).
            rng: Source of randomness.
            pad: ``"right"`` or ``"left"``.
            min_real: Fewest real steps per window (3).
            rows: Read only these rows of the drawn batch (as in :meth:`sample_frames`).

        Raises:
            ValueError: On bad arguments or when no episode is long enough yet.
        """
        if pad not in ("right", "left"):
            raise ValueError(f"pad must be 'right' or 'left', got {pad!r}")
        if not 1 <= min_real <= length:
            raise ValueError(f"need 1 <= min_real <= length, got {min_real} and {length}")
        lengths = self.episode_lengths
        counts = np.maximum(lengths - min_real + 1, 0)
        total = int(counts.sum())
        if total == 0:
            raise ValueError(f"no episode has at least {min_real} steps yet; collect more")
        window = rng.integers(0, total, size=batch_size)[rows]
        cumulative = np.cumsum(counts)
        episode = np.searchsorted(cumulative, window, side="right")
        offset = window - (cumulative[episode] - counts[episode])
        starts = np.asarray(self._starts, dtype=np.int64)[episode]
        # First step of each window inside its episode; a left-padded window ends at
        # offset + min_real and may start before 0.
        first = offset if pad == "right" else offset + min_real - length
        steps = first[:, None] + np.arange(length)  # (B, T) positions inside the episode
        mask = (steps >= 0) & (steps < lengths[episode][:, None])
        return self._gather(starts[:, None] + steps, mask)

    def sample_episode_ends(
        self, batch_size: int, length: int, rng: np.random.Generator, lead: int = 0
    ) -> SegmentBatch:
        """The last ``length`` steps of episodes that ended (terminated), drawn uniformly with
        replacement; an episode shorter than ``length`` is padded at the front. With ``lead``
        the segments stop that many steps before the end instead (the end then is not in them).

        Where :meth:`sample_segments` gives each step the same chance, this gives each end the
        same chance as a whole segment: what comes before a lost life (in Breakout: the ball
        past the paddle, the frames without it, the end) is a few steps of a long episode. The
        ball passes the paddle about 10 steps before Breakout's end, so the last 10 steps show
        no ball; ``lead=6`` gives segments that show it leave.

        Raises:
            ValueError: If ``length`` is not positive, ``lead`` is negative or no stored episode
                has ended yet.

        Example:
            >>> import tempfile
            >>> with tempfile.TemporaryDirectory() as d, ReplayBuffer(d, (2, 2, 3)) as buf:
            ...     for t in range(7):  # an episode of 5 steps that ended, then one going on
            ...         buf.append(np.zeros((2, 2, 3), np.uint8), t, 0.0, terminated=t == 4)
            ...     batch = buf.sample_episode_ends(2, 3, np.random.default_rng(0))
            >>> batch.actions.tolist(), batch.ends.tolist()
            ([[2, 3, 4], [2, 3, 4]], [[False, False, True], [False, False, True]])
        """
        if length < 1:
            raise ValueError(f"length must be positive, got {length}")
        if lead < 0:
            raise ValueError(f"lead must be >= 0, got {lead}")
        starts = np.asarray(self._starts, dtype=np.int64)
        stops = np.append(starts[1:], self._num_steps)  # one past each episode's last step
        last = np.asarray(self._records()["flags"])[stops - 1] if self._num_steps else stops
        ended = np.flatnonzero((stops > starts) & (last & _TERMINATED != 0))
        if not len(ended):
            raise ValueError("no stored episode has ended yet; collect more")
        episode = ended[rng.integers(0, len(ended), size=batch_size)]
        index = stops[episode][:, None] - lead - length + np.arange(length)  # (B, T), global
        return self._gather(index, index >= starts[episode][:, None])

    def sample_episode_starts(
        self, batch_size: int, length: int, rng: np.random.Generator
    ) -> SegmentBatch:
        """The first ``length`` steps of stored episodes, drawn uniformly with replacement; an
        episode shorter than ``length`` (or one still going on) is padded at the end.

        Where :meth:`sample_segments` gives each step the same chance, this gives each
        episode's start the same chance as a whole segment: a new life's first frames (in
        Breakout: no ball until FIRE serves one) are a few steps of a long episode.

        Raises:
            ValueError: If ``length`` is not positive or nothing is stored yet.

        Example:
            >>> import tempfile
            >>> with tempfile.TemporaryDirectory() as d, ReplayBuffer(d, (2, 2, 3)) as buf:
            ...     for t in range(7):  # an episode of 5 steps, then one of 2 going on
            ...         buf.append(np.zeros((2, 2, 3), np.uint8), t, 0.0, terminated=t == 4)
            ...     batch = buf.sample_episode_starts(4, 3, np.random.default_rng(0))
            >>> sorted({tuple(row) for row in batch.actions.tolist()})
            [(0, 1, 2), (5, 6, 0)]
            >>> batch.mask.sum(axis=1).tolist()  # the episode of 2 steps: padded at the end
            [2, 2, 2, 3]
        """
        if length < 1:
            raise ValueError(f"length must be positive, got {length}")
        if not self._num_steps:
            raise ValueError("the replay buffer is empty; collect first")
        starts = np.asarray(self._starts, dtype=np.int64)
        stops = np.append(starts[1:], self._num_steps)  # one past each episode's last step
        stored = np.flatnonzero(stops > starts)
        episode = stored[rng.integers(0, len(stored), size=batch_size)]
        index = starts[episode][:, None] + np.arange(length)  # (B, T), global
        return self._gather(index, index < stops[episode][:, None])

    def tail_segment(self, length: int) -> SegmentBatch:
        """The last ``length`` steps of the newest episode as one left-padded segment (B=1).

        For burn-in while collecting. With an empty buffer every step is padding.
        """
        if length < 1:
            raise ValueError(f"length must be positive, got {length}")
        if not self._starts:
            index = np.zeros((1, length), dtype=np.int64)
            return self._gather(index, np.zeros((1, length), dtype=bool))
        start = self._starts[-1]
        first = self._num_steps - length
        index = (first + np.arange(length))[None]  # (1, T)
        return self._gather(index, index >= start)

    def _gather(self, index: np.ndarray, mask: np.ndarray) -> SegmentBatch:
        """Reads records at global ``index`` (B, T) where ``mask``; zeros elsewhere."""
        safe = np.where(mask, index, 0)
        if self._num_steps == 0:
            picked = np.zeros(safe.shape, dtype=self._dtype)
        else:
            picked = self._records()[safe.reshape(-1)].reshape(safe.shape)  # (B, T) structured
        m = mask
        obs_mask = m.reshape(m.shape + (1,) * len(self.obs_shape))  # (B, T, 1, 1, 1)
        return SegmentBatch(
            obs=np.where(obs_mask, picked["obs"], np.uint8(0)),  # (B, T, H, W, C)
            actions=np.where(m, picked["action"], 0).astype(np.int64),
            rewards=np.where(m, picked["reward"], 0.0).astype(np.float32),
            ends=m & ((picked["flags"] & _TERMINATED) != 0),
            mask=m.copy(),
            index=safe.astype(np.int64),
        )
