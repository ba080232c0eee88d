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
from typing import IO, Any

import torch
from torch import Tensor

__all__ = ["METRICS_FILE", "RunLog", "log_line", "read_metrics"]

METRICS_FILE = "metrics.jsonl"


class RunLog:
    """Writes a run's log lines, per-epoch records and TensorBoard scalars/images.

    Args:
        run_dir: The run folder.
        tensorboard: Try to log to ``run_dir/tensorboard``.
        stream: Where printed lines go (stdout).
        enabled: False makes every method a no-op (the data-parallel ranks > 0: rank 0 logs).
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        tensorboard: bool = True,
        stream: Any = None,
        enabled: bool = True,
    ):
        self.run_dir = Path(run_dir)
        self.stream = sys.stdout if stream is None else stream
        self.enabled = enabled
        self.writer: Any = None
        if not enabled:
            return
        _drop_torn_line(self.run_dir / METRICS_FILE)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self.info("TensorBoard logging off: `pip install tensorboard` to enable it")
            else:
                self.writer = SummaryWriter(str(self.run_dir / "tensorboard"))

    def info(self, line: str) -> None:
        """Prints one line (flushed, so a log file follows the run live)."""
        if self.enabled:
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

    def epoch(self, record: dict[str, Any], epochs: int) -> None:
        """Logs a completed epoch: its summary line, TensorBoard scalars and ``metrics.jsonl``.

        Args:
            record: The epoch's record (``epoch``, ``env_steps``, ``timings`` and one dict of
                means per phase that ran, ``eval`` when evaluated).
            epochs: Epochs of the whole run.
        """
        if not self.enabled:
            return
        parts = [f"epoch {record['epoch']}/{epochs}", f"env steps {record['env_steps']}"]
        scalars: dict[str, float] = {}
        for name in ("collect", "tokenizer", "world_model", "actor_critic"):
            for key, value in record.get(name, {}).items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    scalars[f"{name}/{key}"] = float(value)
            if name in record and "total" in record[name]:
                parts.append(f"{name} {record[name]['total']:.4f}")
        if "eval" in record:
            ev = record["eval"]
            parts.append(f"eval {ev['mean']:.1f} (HNS {ev['human_normalized']:.3f})")
            scalars["eval/mean_return"] = ev["mean"]
            scalars["eval/human_normalized"] = ev["human_normalized"]
        for name, check in record.get("objects", {}).items():
            if check["predicted"] is not None:
                parts.append(
                    f"{name} next frame {check['predicted']:.3f} "
                    f"(tokenizer {check['reconstruction']:.3f}; its patch {check['patch_nll']:.2f}"
                    " nats)"
                )
            for key in ("reconstruction", "predicted", "predicted_anywhere", "patch_accuracy",
                        "patch_nll", "predicted_roughly", "steady_predicted",
                        "extrapolated"):  # fmt: skip
                if check[key] is not None:
                    scalars[f"objects/{name}_{key}"] = check[key]
        for name, check in record.get("events", {}).items():
            if name == "reward" and check["precision"] is not None and check["events"]:
                parts.append(
                    f"rewards on real frames P/R {check['precision']:.2f}/{check['recall']:.2f}"
                )
            for key in ("nll", "base_nll", "precision", "recall", "likeliest_precision",
                        "likeliest_recall"):  # fmt: skip
                if check[key] is not None:
                    scalars[f"events/{name}_{key}"] = check[key]
        for name, seconds in record["timings"].items():
            scalars[f"time/{name}"] = seconds
        timings = ", ".join(f"{k} {v:.1f}s" for k, v in record["timings"].items())
        parts.append(f"{sum(record['timings'].values()):.1f}s ({timings})")
        self.info(" | ".join(parts))
        self.scalars(scalars, record["epoch"])
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


def _drop_torn_line(path: Path) -> None:
    """Truncates a partial last line left by a killed run, so the next record starts clean."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def log_line(handle: IO[str], record: dict[str, Any]) -> None:
    """Appends ``record`` to ``handle`` as one JSON line (flushed) and prints it.

    Example:
        >>> import io
        >>> out = io.StringIO()
        >>> log_line(out, {"step": 1})
        {"step": 1}
        >>> out.getvalue()
        '{"step": 1}\\n'
    """
    line = json.dumps(record)
    handle.write(line + "\n")
    handle.flush()
    print(line, flush=True)


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
