"""``rem-train`` (also ``python -m rem_train``): REM's training run from the command line.

Every field of :class:`rem_train.config.TrainConfig` is an option (``--world-model.lr 3e-4``),
documented in ``--help`` with its ``atari100k`` default; the preset fills in whatever is not
given. Shortcuts: ``--epochs``, ``--seed``.

Under ``torchrun --nproc_per_node=N`` the run is data-parallel over N processes (see
:mod:`rem_train.distributed`); no option changes.

A run is continued with ``--resume RUN``, and extended with ``--resume RUN --epochs N`` (N above
the run's ``common.epochs``; ``--common.collect-epochs M`` likewise extends real-data collection).
A resume may also change the fields of :data:`TUNABLE` (phase starts, learning rates, the
moving-patch, episode-end, dreamed-heads and dreamed-observation weights, the scripted and parked
players' shares of collection, the actor-critic's dream temperatures). Ctrl-C stops a run like
SIGTERM does, at a step boundary, resumable (exit status 130; a second Ctrl-C quits at once). One
run is trained by one ``rem-train`` at a time.

Example:
    ``rem-train --game Breakout --preset smoke --out runs/smoke`` then, after a crash,
    ``rem-train --resume runs/smoke``; on 4 GPUs,
    ``torchrun --nproc_per_node=4 -m rem_train --preset atari100k --device cuda --out runs/b``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shlex
import signal
import sys
import threading
import types
import typing
from pathlib import Path
from typing import Any

from rem_env.checkpoint import CONFIG_NAME as MODEL_CONFIG_NAME
from rem_env.cli import folder_write_problem
from rem_train.config import PHASES, PRESETS, TrainConfig
from rem_train.config_options import parse_bool
from rem_train.distributed import DistContext, backend_for, cleanup, init_from_env, run_on_main
from rem_train.trainer import Trainer, TrainingStoppedError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no run lock (the replay buffer still has one)
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "build_config",
    "export_problem",
    "extend_run",
    "lock_run",
    "main",
    "parse_bool",
    "parser",
]

INTERRUPTED = 130
"""Exit status after Ctrl-C (128 + SIGINT)."""
STOPPED = 143
"""Exit status after SIGTERM (128 + SIGTERM)."""
EXTENDABLE = ("common.epochs", "common.collect_epochs")
"""Fields that ``--resume`` may raise: a run is extended by more epochs (of collection)."""
TUNABLE = (
    "tokenizer.start_after_epoch",
    "world_model.start_after_epoch",
    "actor_critic.start_after_epoch",
    "world_model.moving_weight",
    "world_model.moving_from",
    "world_model.end_weight",
    "world_model.dreamed_heads_weight",
    "world_model.dreamed_heads_match",
    "world_model.dreamed_steps",
    "world_model.dreamed_obs_weight",
    "collect.scripted_share",
    "collect.scripted_serve_wait",
    "collect.parked_share",
    "tokenizer.lr",
    "world_model.lr",
    "actor_critic.lr",
    "actor_critic.dream_temperature",
    "actor_critic.dream_event_temperature",
    "actor_critic.real_history",
)
"""Fields that ``--resume`` may set to any valid value, for the epochs still to train (recorded
in the run's ``config_changes.jsonl`` and its export's ``training.json``)."""


def _tunable_options() -> str:
    """The options of :data:`TUNABLE` as ``--resume``'s help names them."""
    names = ["--" + name.replace("_", "-") for name in TUNABLE]
    return ", ".join(names[:-1]) + " and " + names[-1]


_PROCESS_OPTIONS = ("out", "resume", "export", "max_minutes")
"""Options of this process, not of the run (not in its config.json; free to change on resume)."""

_SHORTCUTS = {
    "epochs": "common.epochs",
    "seed": "common.seed",
    "init_from": "common.init_from",
    "init_parts": "common.init_parts",
}


def _converter(annotation: Any) -> Any:
    """argparse type of a field annotation (``int``, ``float``, ``bool``, ``str``, ``X | None``)."""
    hints = {"int": int, "float": float, "bool": parse_bool, "str": str}
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
        "-m rem_train --preset smoke --out runs/ddp` (CPU, gloo) or `torchrun --nproc_per_node=4 "
        "-m rem_train --device cuda ...` (one GPU per process, NCCL). The batch sizes are global "
        "(split over the processes; each must divide evenly); rank 0 collects, evaluates and "
        "writes the run folder; --resume works with any number of processes.",
    )
    p.add_argument("--out", type=Path, help="run folder (new, or with --resume the run to go on)")
    p.add_argument(
        "--resume",
        type=Path,
        help="continue the killed or stopped run in this folder; with --epochs N (above its "
        "epochs) extend it, and with --common.collect-epochs M collect real data longer; "
        f"{_tunable_options()} may change for the epochs still to train (other options must "
        "match the run's)",
    )
    p.add_argument(
        "--export",
        type=Path,
        help="also export the final model to this folder (new, empty, or a model folder to "
        "replace; checked before training)",
    )
    p.add_argument(
        "--max-minutes",
        type=float,
        metavar="MINUTES",
        help="time budget of this process: after the first epoch that ends this many minutes "
        "after the start, stop there and export the model as it is (--resume goes on later); "
        "0 with --resume: export the run's last epoch now, training nothing (default: none)",
    )
    p.add_argument(
        "--epochs",
        type=int,
        help="shortcut for --common.epochs (with --resume: extend the run) (default: the preset's)",
    )
    p.add_argument("--seed", type=int, help="shortcut for --common.seed (default: the preset's, 1)")
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
        if name in _PROCESS_OPTIONS:
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
        minutes = args.get("max_minutes")
        if minutes is not None and not minutes >= 0:
            raise ValueError(f"--max-minutes must be >= 0, got {minutes:g}")
        if minutes == 0 and resume is None:
            raise ValueError(
                "--max-minutes 0 exports a run's model as it is, training nothing: give the run "
                "with --resume RUN (and --export FOLDER for a copy elsewhere)"
            )
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
            given = {k: v for k, v in args.items() if k not in _PROCESS_OPTIONS}
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
        status = _train(
            config, out, resume is not None, argv, args.get("export"), ctx, args.get("max_minutes")
        )
    except KeyboardInterrupt:  # a second Ctrl-C, or one before training began
        cleanup(wait=False)
        print("rem-train: interrupted", file=sys.stderr)
        return INTERRUPTED
    except BaseException:
        cleanup(wait=False)  # the other ranks may never reach the barrier
        raise
    cleanup()
    return status


def export_problem(export: Path, run_dir: Path) -> str | None:
    """Why the final model cannot be exported to ``export``, or None; checked before training.

    The rules of :func:`rem_env.checkpoint.save_pretrained`: a new folder, an empty one, or a
    saved model to replace; and its parent must be writable (the files are written beside it,
    then swapped in). The run folder itself (or one holding it) is refused: it would be
    replaced by the model.
    """
    export = export.expanduser()
    if export.exists():
        if not export.is_dir():
            return f"--export {export} is a file; name a folder"
        inside = run_dir.resolve()
        if export.resolve() == inside or export.resolve() in inside.parents:
            return f"--export {export} holds the run folder {run_dir}; name another folder"
        if any(export.iterdir()) and not (export / MODEL_CONFIG_NAME).is_file():
            return (
                f"--export {export} is a non-empty folder that holds no saved model, and the "
                "export would replace it; name a new or empty folder (or a model folder to "
                "overwrite)"
            )
    problem = folder_write_problem(export.parent)
    return None if problem is None else f"cannot export to {export}: {problem}"


def lock_run(run_dir: Path, new: bool = False) -> int | None:
    """Locks the run folder until the returned descriptor is closed (or the process ends).

    Every ``rem-train`` holds it from its start: one continuing the run (``--resume``), and one
    starting a new run (``new``), which makes the folder first. Two new runs on one ``--out``
    at once would otherwise both find it empty and both train into it.

    Returns:
        The locked descriptor; None where nothing can be locked (no ``fcntl``, a file system
        without locks, or, for a new run, a folder that cannot be made: the run's checks then
        say why).

    Raises:
        ValueError: If another process holds the run (a ``rem-train`` on it, or its replay
            buffer open elsewhere).
    """
    if fcntl is None:
        return None
    if new:
        busy = (
            f"{run_dir} is in use by another rem-train right now (it is starting or training a "
            "run there); choose another --out, or wait for it to end and continue its run with "
            f"--resume {run_dir}"
        )
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError:
            return None
        if not run_dir.is_dir():
            return None
    else:
        busy = (
            f"{run_dir} is being trained by another process right now; wait for it to end, or "
            f"stop it (Ctrl-C or SIGTERM: it stops at a step boundary), then --resume {run_dir} "
            "again"
        )
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ValueError(busy) from None
    except OSError:  # a file system without locks: go on unlocked
        os.close(fd)
        return None
    replay = run_dir / "replay" / "transitions.bin"  # locked by whoever trains (ReplayBuffer)
    if replay.is_file():
        probe = os.open(replay, os.O_RDONLY)
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ValueError(busy) from None
        except OSError:  # no locks on this file system: the folder's lock above must do
            pass
        finally:
            os.close(probe)  # closing releases the probe's lock
    return fd


def extend_run(run_dir: Path, config: TrainConfig) -> list[str]:
    """Writes ``config``'s epochs (of collection) and tunable fields into the run's config.json.

    Only when fields of :data:`EXTENDABLE` and :data:`TUNABLE` are all that differ (besides
    ``device``, which a resume may change); otherwise the run is left as it is, for the
    Trainer to refuse. Returns the changes made, e.g. ``["common.epochs 5 -> 8"]``.

    Raises:
        ValueError: If an :data:`EXTENDABLE` field would go down (a run is extended, never
            shortened).
    """
    path = run_dir / "config.json"
    saved = TrainConfig.from_dict(json.loads(path.read_text()))
    diff = saved.differences(config)
    if not diff or not set(diff) <= {*EXTENDABLE, *TUNABLE}:
        return []  # nothing to change, or more differs: the Trainer says what
    changes, data = [], saved.to_dict()
    for name in diff:
        section, leaf = name.split(".")
        old, new = getattr(getattr(saved, section), leaf), getattr(getattr(config, section), leaf)
        if name in EXTENDABLE and new < old:
            option = "--epochs" if leaf == "epochs" else "--common.collect-epochs"
            raise ValueError(
                f"cannot resume {run_dir} with {option} {new}: the run has {name} = {old}, and a "
                "run can be extended, not shortened (stop it early with Ctrl-C or SIGTERM)"
            )
        data[section][leaf] = new
        changes.append(f"{name} {old} -> {new}")
    updated = TrainConfig.from_dict(data)  # all at once: fields may only be valid together
    for phase in PHASES:  # a phase scheduled after the old end would now start: say so
        start = getattr(updated, phase).start_after_epoch
        if saved.common.epochs <= start < updated.common.epochs:
            option = f"--{phase.replace('_', '-')}.start-after-epoch"
            print(
                f"rem-train: note: the extended run trains its {phase.replace('_', ' ')} from "
                f"epoch {start + 1} on ({phase}.start_after_epoch = {start}; {option} N "
                "moves it)",
                file=sys.stderr,
            )
    tmp = path.with_suffix(".extend.tmp")
    tmp.write_text(json.dumps(updated.to_dict(), indent=2) + "\n")
    os.replace(tmp, path)
    return changes


def _refuse(problem: str | None) -> None:
    if problem is not None:
        raise ValueError(problem)


def _train(
    config: TrainConfig,
    out: Path,
    resume: bool,
    argv: list[str],
    export: Path | None,
    ctx: DistContext,
    max_minutes: float | None = None,
) -> int:
    """Builds the trainer and runs it on this rank; returns the exit status."""
    where = f" (rank {ctx.rank})" if ctx.is_distributed else ""
    lock = None
    made = not resume and ctx.is_main and not Path(out).exists()  # by this process, if locked
    try:
        if export is not None:  # rank 0 writes the export: it checks, all ranks learn
            run_on_main(lambda: _refuse(export_problem(Path(export), Path(out))), ctx)
        lock = run_on_main(lambda: lock_run(Path(out), new=not resume), ctx)
        extended: list[str] = []
        if resume:
            extended = run_on_main(lambda: extend_run(Path(out), config), ctx)
            if extended:
                print(f"rem-train: resuming {out} with {', '.join(extended)}", file=sys.stderr)
        trainer = Trainer(
            config, out, resume=resume, command=shlex.join(["rem-train", *argv]), dist_ctx=ctx
        )
        if extended:
            run_on_main(lambda: trainer.record_config_changes(extended), ctx)
    except ValueError as err:
        print(f"rem-train: error{where}: {err}", file=sys.stderr)
        if lock is not None:
            if made:  # a new run that did not start leaves no empty folder behind
                with contextlib.suppress(OSError):
                    Path(out).rmdir()
            os.close(lock)
        return 2
    interrupted: list[int] = []

    def stop_on_ctrl_c(signum: int, frame: Any) -> None:
        """First Ctrl-C: stop like SIGTERM, resumable; a second one quits at once."""
        interrupted.append(signum)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        trainer._request_stop(signum, frame)
        if ctx.is_main:
            print("\nrem-train: stopping at the next step (Ctrl-C again: now)", file=sys.stderr)

    # Only where Python's own Ctrl-C handler is in place (not in threads, not where SIGINT is
    # ignored, as in background jobs).
    handle = (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    )
    previous = signal.signal(signal.SIGINT, stop_on_ctrl_c) if handle else None
    try:
        exported = trainer.run(export_to=export, max_minutes=max_minutes)
    except TrainingStoppedError as stopped:
        if interrupted:
            message = str(stopped).replace("by SIGTERM", "by Ctrl-C")
            print(f"rem-train{where}: interrupted: {message}", file=sys.stderr)
            return INTERRUPTED
        print(f"rem-train{where}: {stopped}", file=sys.stderr)
        return STOPPED
    finally:
        if handle:
            signal.signal(signal.SIGINT, previous)
        if lock is not None:
            os.close(lock)
    if ctx.is_main:
        print(f"done: model in {exported}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
