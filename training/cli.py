"""``rem-train`` (also ``python -m training``): REM's training run from the command line.

Every field of :class:`training.config.TrainConfig` is an option (``--world-model.lr 3e-4``),
documented in ``--help`` with its ``atari100k`` default; the preset fills in whatever is not
given. Shortcuts: ``--epochs``, ``--seed``.

Under ``torchrun --nproc_per_node=N`` the run is data-parallel over N processes (see
:mod:`training.distributed`); no option changes.

Example:
    ``rem-train --game Breakout --preset smoke --out runs/smoke`` then, after a crash,
    ``rem-train --resume runs/smoke``; on 4 GPUs,
    ``torchrun --nproc_per_node=4 -m training --preset atari100k --device cuda --out runs/b``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import types
import typing
from pathlib import Path
from typing import Any

from training.config import PRESETS, TrainConfig
from training.distributed import DistContext, backend_for, cleanup, init_from_env
from training.trainer import Trainer, TrainingStoppedError

__all__ = ["build_config", "main", "parser"]

_SHORTCUTS = {
    "epochs": "common.epochs",
    "seed": "common.seed",
    "init_from": "common.init_from",
    "init_parts": "common.init_parts",
}


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _converter(annotation: Any) -> Any:
    """argparse type of a field annotation (``int``, ``float``, ``bool``, ``str``, ``X | None``)."""
    hints = {"int": int, "float": float, "bool": _parse_bool, "str": str}
    if isinstance(annotation, str):
        base = annotation.replace(" | None", "")
        optional = base != annotation
        convert = hints[base]
    else:  # pragma: no cover - annotations are strings under `from __future__ import annotations`
        args = typing.get_args(annotation)
        optional = isinstance(annotation, types.UnionType) and type(None) in args
        convert = hints[
            (next(a for a in args if a is not type(None)) if optional else annotation).__name__
        ]
    if not optional:
        return convert
    return lambda text: None if text.lower() == "none" else convert(text)


def _fields() -> list[tuple[str, dataclasses.Field[Any]]]:
    """(dotted name, field) of every leaf field of TrainConfig."""
    out = []
    for f in dataclasses.fields(TrainConfig):
        factory: Any = f.default_factory
        if factory is not dataclasses.MISSING:  # a section: one option per field
            for sub in dataclasses.fields(factory):
                out.append((f"{f.name}.{sub.name}", sub))
        else:
            out.append((f.name, f))
    return out


def parser() -> argparse.ArgumentParser:
    """The argument parser (every config field, with its documentation)."""
    p = argparse.ArgumentParser(
        prog="rem-train",
        description="Train REM (tokenizer, world model, actor-critic in imagination) on an "
        "Atari 100K game. Defaults shown are the atari100k preset's.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        argument_default=argparse.SUPPRESS,
        epilog="Data-parallel training: launch with torchrun, e.g. `torchrun --nproc_per_node=2 "
        "-m training --preset smoke --out runs/ddp` (CPU, gloo) or `torchrun --nproc_per_node=4 "
        "-m training --device cuda ...` (one GPU per process, NCCL). The batch sizes are global "
        "(split over the processes; each must divide evenly); rank 0 collects, evaluates and "
        "writes the run folder; --resume works with any number of processes.",
    )
    p.add_argument("--out", type=Path, help="run folder (new, or with --resume the run to go on)")
    p.add_argument("--resume", type=Path, help="continue the killed or stopped run in this folder")
    p.add_argument("--export", type=Path, help="also export the final model to this folder")
    p.add_argument("--epochs", type=int, help="shortcut for --common.epochs")
    p.add_argument("--seed", type=int, help="shortcut for --common.seed")
    p.add_argument(
        "--init-from",
        metavar="FOLDER_OR_HUB_REPO_ID",
        help="shortcut for --common.init-from: start from this model's (or run's) weights",
    )
    p.add_argument(
        "--init-parts",
        metavar="PARTS",
        help="shortcut for --common.init-parts (tokenizer,world_model,actor_critic or all)",
    )
    defaults = PRESETS["atari100k"].to_dict()
    groups: dict[str, argparse._ArgumentGroup] = {}
    for name, f in _fields():
        section = name.split(".")[0] if "." in name else "run"
        group = groups.setdefault(section, p.add_argument_group(section))
        default = defaults
        for part in name.split("."):
            default = default[part]
        option = "--" + name.rstrip("_").replace("_", "-")  # lambda_ -> --actor-critic.lambda
        help_text = f"{f.metadata.get('doc', '')} (default: {default})"
        group.add_argument(
            option, dest=name, type=_converter(f.type), metavar=_metavar(f), help=help_text
        )
    return p


def _metavar(f: dataclasses.Field[Any]) -> str:
    return str(f.type).replace(" | None", "|None").upper()


def build_config(args: dict[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    """The config from parsed options: the preset (or ``base``) with the given fields replaced.

    Raises:
        ValueError: On an unknown preset or game, or an invalid value.
    """
    args = dict(args)
    for short, full in _SHORTCUTS.items():
        if short in args:
            args[full] = args.pop(short)
    if base is None:
        base = TrainConfig.from_preset(
            args.get("preset", "atari100k"), args.get("game", "Breakout")
        )
    data = base.to_dict()
    for name, value in args.items():
        if name in ("out", "resume", "export"):
            continue
        target = data
        *sections, leaf = name.split(".")
        for section in sections:
            target = target[section]
        target[leaf] = value
    return TrainConfig.from_dict(data)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``rem-train``; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    args = vars(parser().parse_args(argv))
    resume = args.get("resume")
    out = args.get("out")
    try:
        if resume is not None:
            if out is not None and Path(out) != Path(resume):
                raise ValueError("--out and --resume name different folders; give only --resume")
            config_path = Path(resume) / "config.json"
            if not config_path.is_file():
                raise ValueError(
                    f"cannot resume {resume}: it holds no run (config.json is missing)"
                )
            saved = TrainConfig.from_dict(json.loads(config_path.read_text()))
            # Options given with --resume go on top of the run's own config (or of a preset
            # named again); the Trainer refuses a result that differs from the saved run.
            given = {k: v for k, v in args.items() if k not in ("resume", "out", "export")}
            named = "preset" in given or "game" in given
            config = build_config(given, base=None if named else saved)
            out = resume
        else:
            if out is None:
                raise ValueError("--out is required (the run folder), or --resume RUN_DIR")
            config = build_config(args)
        ctx = init_from_env(backend_for(config.device))
    except ValueError as err:
        print(f"rem-train: error: {err}", file=sys.stderr)
        return 2
    try:
        status = _train(config, out, resume is not None, argv, args.get("export"), ctx)
    except BaseException:
        cleanup(wait=False)  # the other ranks may never reach the barrier
        raise
    cleanup()
    return status


def _train(
    config: TrainConfig,
    out: Path,
    resume: bool,
    argv: list[str],
    export: Path | None,
    ctx: DistContext,
) -> int:
    """Builds the trainer and runs it on this rank; returns the exit status."""
    where = f" (rank {ctx.rank})" if ctx.is_distributed else ""
    try:
        trainer = Trainer(
            config, out, resume=resume, command=shlex.join(["rem-train", *argv]), dist_ctx=ctx
        )
    except ValueError as err:
        print(f"rem-train: error{where}: {err}", file=sys.stderr)
        return 2
    try:
        exported = trainer.run(export_to=export)
    except TrainingStoppedError as stopped:
        print(f"rem-train{where}: {stopped}", file=sys.stderr)
        return 143
    if ctx.is_main:
        print(f"done: model in {exported}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
