"""Logging of a training run: printed lines, ``metrics.jsonl`` and (if installed) TensorBoard.

``metrics.jsonl`` gets one JSON object per completed epoch (losses, scores, timings, step
counts); it is the machine-readable record tests and scripts read. TensorBoard is optional: when
``tensorboard`` is not installed the run says so once and logs everything else.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["METRICS_FILE", "RunLog", "read_metrics"]

METRICS_FILE = "metrics.jsonl"


class RunLog:
    """Writes a run's log lines, per-epoch records and TensorBoard scalars/images.

    Args:
        run_dir: The run folder.
        tensorboard: Try to log to ``run_dir/tensorboard``.
        stream: Where printed lines go (stdout).
    """

    def __init__(
        self, run_dir: str | os.PathLike[str], tensorboard: bool = True, stream: Any = None
    ):
        self.run_dir = Path(run_dir)
        self.stream = sys.stdout if stream is None else stream
        self.writer: Any = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self.info("TensorBoard logging off: `pip install tensorboard` to enable it")
            else:
                self.writer = SummaryWriter(str(self.run_dir / "tensorboard"))

    def info(self, line: str) -> None:
        """Prints one line (flushed, so a log file follows the run live)."""
        print(f"[rem-train] {line}", file=self.stream, flush=True)

    def scalars(self, values: dict[str, float], step: int) -> None:
        """Logs ``{"tokenizer/total": ...}`` scalars at ``step`` (the epoch)."""
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)

    def images(self, tag: str, images: Tensor, step: int) -> None:
        """Logs (N, 3, H, W) images in [0, 1] as one row."""
        if self.writer is not None:
            row = torch.cat(list(images.detach().float().clamp(0, 1).cpu()), dim=-1)  # (3, H, N*W)
            self.writer.add_image(tag, row, step)

    def epoch(self, record: dict[str, Any]) -> None:
        """Appends the epoch's record to ``metrics.jsonl`` (one line, flushed and fsynced)."""
        with open(self.run_dir / METRICS_FILE, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        """Closes TensorBoard's writer."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def read_metrics(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The per-epoch records of a run, oldest first (a torn last line is skipped)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
