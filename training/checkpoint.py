"""Checkpoints of a training run: weights, optimizer and RNG states in one atomic safetensors file.

A checkpoint is ONE file, ``checkpoints/last.safetensors`` (rewritten after every epoch) plus
numbered copies ``epoch_XXXX.safetensors`` every ``common.checkpoint_every`` epochs. Tensors
(module weights, optimizer moments, torch RNG states) are safetensors entries; everything else
(epoch, optimizer hyperparameters, python/numpy RNG states, counters) is JSON in the file's
metadata. Writes go to a temporary file that is renamed over the old one, so a crash leaves
either the old or the new checkpoint, never a torn one. No pickles.

The run folder itself is checked here too (:func:`prepare_run_dir`): a folder holds one run,
identified by its ``config.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from rem_train.config import TrainConfig

__all__ = [
    "CONFIG_FILE",
    "Checkpoint",
    "capture_rng",
    "load_checkpoint",
    "prepare_run_dir",
    "restore_rng",
    "rng_fingerprint",
    "save_checkpoint",
    "seed_everything",
]

CONFIG_FILE = "config.json"
LAST = "last.safetensors"


class Checkpoint(NamedTuple):
    """What :func:`load_checkpoint` returns."""

    epoch: int
    """Last completed epoch."""
    modules: dict[str, dict[str, Tensor]]
    """State dicts by module name."""
    optimizers: dict[str, dict[str, Any]]
    """Optimizer state dicts by name (ready for ``load_state_dict``)."""
    rng: dict[str, Any]
    """RNG states (see :func:`capture_rng`)."""
    extra: dict[str, Any]
    """Free-form JSON (counters, wall time)."""


def seed_everything(seed: int) -> np.random.Generator:
    """Seeds python, numpy (global) and torch (CPU, CUDA); returns the run's numpy Generator."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def capture_rng(rng: np.random.Generator) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Every RNG state: JSON parts and tensor parts (torch CPU and each CUDA device)."""
    legacy = np.random.get_state()
    state = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy_global": [legacy[0], legacy[1].tolist(), *legacy[2:]],
        "numpy_generator": rng.bit_generator.state,
    }
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    return state, tensors


def restore_rng(
    state: dict[str, Any], tensors: dict[str, Tensor], rng: np.random.Generator
) -> None:
    """Restores what :func:`capture_rng` captured (``rng`` in place)."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    legacy = state["numpy_global"]
    np.random.set_state((legacy[0], np.array(legacy[1], dtype=np.uint32), *legacy[2:]))
    rng.bit_generator.state = state["numpy_generator"]
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])


def rng_fingerprint(rng: np.random.Generator) -> str:
    """A short hash of the current torch, numpy and python RNG states (for logs and tests)."""
    state, tensors = capture_rng(rng)
    digest = hashlib.sha256(json.dumps(state, sort_keys=True).encode())
    digest.update(tensors["rng.torch"].numpy().tobytes())
    return digest.hexdigest()[:16]


def _flatten_optimizer(
    name: str, state: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Optimizer state dict -> (JSON part, tensors keyed ``opt.name.idx.key``)."""
    tensors: dict[str, Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for index, entry in state["state"].items():
        plain[str(index)] = {}
        for key, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"opt.{name}.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                plain[str(index)][key] = value
    return {"param_groups": state["param_groups"], "plain": plain}, tensors


def _unflatten_optimizer(
    name: str, meta: dict[str, Any], tensors: dict[str, Tensor]
) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in meta["plain"].items()}
    prefix = f"opt.{name}."
    for key, value in tensors.items():
        if key.startswith(prefix):
            index, field = key[len(prefix) :].split(".", 1)
            state.setdefault(int(index), {})[field] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    folder: str | os.PathLike[str],
    epoch: int,
    modules: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    rng: np.random.Generator,
    extra: dict[str, Any],
    keep_numbered: bool = False,
) -> Path:
    """Atomically writes ``folder/last.safetensors`` (and ``epoch_XXXX.safetensors`` if asked).

    Returns:
        The path of ``last.safetensors``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, Tensor] = {}
    for name, module in modules.items():
        for key, value in module.state_dict().items():
            tensors[f"module.{name}.{key}"] = value.detach().cpu().contiguous()
    opt_meta = {}
    for name, optimizer in optimizers.items():
        opt_meta[name], opt_tensors = _flatten_optimizer(name, optimizer.state_dict())
        tensors.update(opt_tensors)
    rng_state, rng_tensors = capture_rng(rng)
    tensors.update(rng_tensors)
    meta = {"epoch": epoch, "optimizers": opt_meta, "rng": rng_state, "extra": extra}
    tmp = folder / f".{LAST}.tmp-{os.getpid()}"
    try:
        save_file(tensors, str(tmp), metadata={"rem_train": json.dumps(meta)})
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
    except OSError as error:  # e.g. a full disk: the previous checkpoint is untouched
        tmp.unlink(missing_ok=True)
        raise OSError(
            error.errno,
            f"could not write the checkpoint in {folder} ({error.strerror or error}); the "
            "previous checkpoint is intact. Free disk space and resume with --resume",
        ) from error
    if keep_numbered:  # a hard link: same bytes, no second write
        numbered = folder / f"epoch_{epoch:04d}.safetensors"
        numbered.unlink(missing_ok=True)
        os.link(tmp, numbered)
    os.replace(tmp, folder / LAST)
    return folder / LAST


def load_checkpoint(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> Checkpoint:
    """Reads a checkpoint written by :func:`save_checkpoint` (a file or its folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / LAST
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    with safe_open(str(path), framework="pt", device=str(device)) as f:
        meta = json.loads(f.metadata()["rem_train"])
        tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open API)
    modules: dict[str, dict[str, Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("module."):
            name, param = key[len("module.") :].split(".", 1)
            modules.setdefault(name, {})[param] = value
    optimizers = {
        name: _unflatten_optimizer(name, part, tensors) for name, part in meta["optimizers"].items()
    }
    rng_tensors = {k: v.cpu() for k, v in tensors.items() if k.startswith("rng.")}
    rng = {"state": meta["rng"], "tensors": rng_tensors}
    return Checkpoint(meta["epoch"], modules, optimizers, rng, meta["extra"])


def prepare_run_dir(out: str | os.PathLike[str], config: TrainConfig, resume: bool) -> Path:
    """Checks (and creates) the run folder; writes ``config.json`` for a new run.

    Raises:
        ValueError: If ``out`` holds another run, holds this run without ``resume``, is a
            non-empty folder that is not a run, is a file or cannot be written (a read-only
            place, a file in its path), or (with ``resume``) is not a run or was made with a
            different config (``device`` may differ).
    """
    out = Path(out)
    config_path = out / CONFIG_FILE
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file, not a run folder; choose another --out")
    if resume:
        if not config_path.is_file():
            raise ValueError(f"cannot resume {out}: it holds no run ({CONFIG_FILE} is missing)")
        saved = TrainConfig.from_dict(json.loads(config_path.read_text()))
        diff = saved.differences(config)
        if diff:
            raise ValueError(
                f"cannot resume {out}: it was made with a different config (differs in "
                f"{', '.join(diff)}); resume with the run's own config (only --epochs and "
                "--common.collect-epochs may be raised, to extend it) or use a new --out"
            )
        return out
    if config_path.is_file():
        saved = TrainConfig.from_dict(json.loads(config_path.read_text()))
        if not saved.differences(config):
            raise ValueError(
                f"{out} already holds this run; pass --resume {out} to continue it, or choose "
                "another --out"
            )
        raise ValueError(
            f"{out} already holds a different run (differs in "
            f"{', '.join(saved.differences(config))}); choose another --out"
        )
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is a non-empty folder that holds no run; choose another --out")
    tmp = config_path.with_suffix(".tmp")
    try:
        out.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        os.replace(tmp, config_path)
    except OSError as err:
        raise ValueError(
            f"cannot make the run folder {out} ({err.strerror or err}"
            + (f": {err.filename}" if err.filename else "")
            + "); choose another --out"
        ) from err
    return out
