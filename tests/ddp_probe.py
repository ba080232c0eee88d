"""``rem-train`` under torchrun with probes that record what each rank did (data-parallel tests).

Usage: ``torchrun --nproc_per_node=N tests/ddp_probe.py PROBE_DIR STOP_AFTER REM_TRAIN_ARGS...``

Each rank runs ``rem_train.cli.main(REM_TRAIN_ARGS)`` and then writes ``PROBE_DIR/rank<R>.json``:
a SHA-256 of all its parameters after every phase (``[phase, epoch, digest]``), the epochs whose
checkpoint it saved, the epochs it logged and main's exit status. With ``STOP_AFTER`` > 0, rank 0
alone acts as if it got SIGTERM after that epoch; the other ranks must stop with it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import rem_train.trainer as trainer_module
from rem_train.cli import main
from rem_train.run_log import RunLog

Trainer = trainer_module.Trainer


def _digest(trainer: Any) -> str:
    """SHA-256 of every parameter and buffer of the model and the actor-critic, bit for bit."""
    digest = hashlib.sha256()
    for module in (trainer.model, trainer.actor_critic):
        for name, tensor in module.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _after(name: str, record: dict[str, Any]) -> None:
    """Wraps the Trainer's phase ``name`` to record the parameters' digest after it."""
    original: Callable[..., Any] = getattr(Trainer, name)

    def phase(self: Any, epoch: int) -> Any:
        result = original(self, epoch)
        record["phases"].append([name, epoch, _digest(self)])
        return result

    setattr(Trainer, name, phase)


def run(probe_dir: Path, stop_after: int, args: list[str]) -> None:
    """Runs rem-train's main with the probes on; writes this rank's record."""
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    record: dict[str, Any] = {"phases": [], "saved": [], "logged": [], "rc": None}
    for name in ("train_tokenizer", "train_world_model", "train_actor_critic"):
        _after(name, record)

    save = trainer_module.save_checkpoint

    def save_checkpoint(folder: Any, epoch: int, *rest: Any, **kwargs: Any) -> Any:
        record["saved"].append(epoch)
        return save(folder, epoch, *rest, **kwargs)

    trainer_module.save_checkpoint = save_checkpoint

    log_epoch = RunLog.epoch

    def logged(self: RunLog, epoch_record: dict[str, Any], epochs: int) -> None:
        if self.enabled:
            record["logged"].append(epoch_record["epoch"])
        log_epoch(self, epoch_record, epochs)

    RunLog.epoch = logged  # type: ignore[method-assign]

    train_epoch = Trainer.train_epoch

    def epoch_then_stop(self: Any, epoch: int) -> Any:
        result = train_epoch(self, epoch)
        if epoch == stop_after and rank == 0:
            self.stop_requested = True  # as the SIGTERM handler does
        return result

    Trainer.train_epoch = epoch_then_stop  # type: ignore[method-assign]
    record["rc"] = main(args)
    (probe_dir / f"rank{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    run(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:])
