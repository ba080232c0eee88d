"""Warm starts: begin a run from another model's trained weights (``rem-train --init-from``).

A source is an exported model folder (``rem-train --export``, ``save_pretrained``, or the
bundled ``rem_env/weights/<Game>``), a Hub repo id, a run folder (its last checkpoint) or a
checkpoint file. Each of the three parts -- tokenizer, world model, actor-critic -- can be taken
or left (``--init-parts``); a part is taken whole, and only if every tensor has the size the run's
preset builds (otherwise a clear error names the tensors that differ), with one exception: a
run whose world model has more RetNet layers (``--world-model-layers``) takes a shallower
source's layers as its first ones and starts the added layers as the identity (their output
projections are zero), so that the deeper model begins as exactly the source's function; and a
run whose world model has a frame conv (``--world-model-frame-conv``, not in REM) takes a source
without one, its frame conv starting at zero (the same function again).
Optimizer states and the schedule are not taken: the run starts at epoch 0 with fresh
optimizers. The start contexts of a model come along with its world model (they are tokens of
its tokenizer).

The run records where its weights came from, and the source's own record, so that a chain of
runs across working sessions (each warm-started from the last one's export) keeps its whole
lineage (``training.json`` of the export, and the model card).

Example:
    ``rem-train --game Breakout --preset cpu --out runs/b2 --init-from models/breakout
    --init-parts tokenizer,world_model``
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rem_env import REMConfig

__all__ = [
    "PARTS",
    "WarmStart",
    "WarmStartError",
    "apply_warm_start",
    "architecture_options",
    "lineage_of",
    "read_warm_start",
]

PARTS = ("tokenizer", "world_model", "actor_critic")
"""The parts a warm start can take."""

LAYER_KEY = re.compile(r"^decoder\.layers\.(\d+)\.")
"""World-model state keys of the RetNet decoder's layers (the layer index is group 1)."""

IDENTITY_ZEROED = ("retention.out_proj.", "linear2.")
"""Parameters of an added layer that start at zero: both residual branches then add nothing."""

FRAME_CONV = "frame_conv."
"""World-model state keys of the frame conv (not in REM), which a source may lack."""

FRAME_CONV_EVENTS = ("frame_conv.events.", "frame_conv.event_out.")
"""The frame conv's event layers (``frame_conv_events``), which a source's frame conv may lack."""
FRAME_CONV_COPY = ("frame_conv.copy_gate.",)
"""The frame conv's copy gate (``frame_conv_copy``), which a source's frame conv may lack."""
FRAME_CONV_COMPLETION = ("frame_conv.completion.", "frame_conv.completion_out.")
"""The frame conv's completion (``frame_conv_completion``), which a source's frame conv may
lack."""
FRAME_CONV_PARTS = {
    "event layers": FRAME_CONV_EVENTS,
    "copy gate": FRAME_CONV_COPY,
    "completion": FRAME_CONV_COMPLETION,
}
"""The parts of a frame conv that a source's frame conv may lack, by name."""
EVENT_READER = "event_reader."
"""The event reader (``event_reader_width``), which a source's world model may lack."""
EVENT_WINDOW = "event_window."
"""The event window (``event_window_frames``), which a source's world model may lack."""

LINEAGE_FILE = "training.json"
"""The export's record of its training (``lineage`` lists the runs it was warm-started from)."""


class WarmStartError(ValueError):
    """A warm-start source that cannot be read, lacks a part, or does not fit the run."""


def architecture_options(config: dict[str, Any]) -> list[str]:
    """The ``rem-train`` options whose run builds a model of this ``config.json``'s shape.

    A run warm-started whole from a model (``--init-from``) needs a model of the same sizes: a
    patch tokenizer (``--model patch``, its grid and its number of codes), its RetNet's layers,
    and the parts not in REM (frame conv, event reader, event window) with their settings.
    Everything else -- the width of the RetNet, the codes of a VQ-VAE -- comes from the run's
    preset and ``--model``.

    Args:
        config: A model folder's ``config.json``, as a dict.

    Example:
        >>> from rem_env import REMConfig
        >>> config = REMConfig.preset("tiny", num_actions=4).to_dict()
        >>> config["world_model"] |= {"frame_conv_layers": 2, "event_window_frames": 8}
        >>> " ".join(architecture_options(config))  # doctest: +NORMALIZE_WHITESPACE
        '--world-model-layers 2 --world-model-frame-conv 2 --world-model-frame-conv-width 128
        --world-model-frame-conv-events false --world-model-frame-conv-copy false
        --world-model-frame-conv-frames 2 --world-model-frame-conv-pixels false
        --world-model-frame-conv-completion 0 --world-model-event-window 8
        --world-model-event-window-reads-next false --world-model-event-window-change-width 0'
    """

    from rem_train.config import PATCH_TOKENIZER  # it imports this module

    def flag(value: Any) -> str:
        return str(value).lower() if isinstance(value, bool) else str(value)

    full = REMConfig.from_dict(config).to_dict()  # older files leave defaults out
    world_model, tokenizer = full["world_model"], full["tokenizer"]
    options = ["--model", "patch"] if tokenizer["kind"] == "patch" else []
    if tokenizer["row_offset"]:
        options += ["--patch-row-offset", flag(tokenizer["row_offset"])]
    if tokenizer["kind"] == "patch" and tokenizer["vocab_size"] != PATCH_TOKENIZER.vocab_size:
        options += ["--patch-vocab-size", flag(tokenizer["vocab_size"])]
    options += ["--world-model-layers", flag(world_model["num_layers"])]
    if world_model["frame_conv_layers"]:
        options += ["--world-model-frame-conv", flag(world_model["frame_conv_layers"])]
        for name in ("width", "events", "copy", "frames", "pixels", "completion"):
            value = world_model[f"frame_conv_{name}"]
            if name == "pixels":  # the config keeps the patch size, the option a switch
                value = bool(value)
            options += [f"--world-model-frame-conv-{name}", flag(value)]
    if world_model["event_reader_width"]:
        options += ["--world-model-event-reader", flag(world_model["event_reader_width"])]
    if world_model["event_window_frames"]:
        options += ["--world-model-event-window", flag(world_model["event_window_frames"])]
        for name in ("reads_next", "change_width"):
            option = f"--world-model-event-window-{name.replace('_', '-')}"
            options += [option, flag(world_model[f"event_window_{name}"])]
    return options


@dataclass
class WarmStart:
    """Weights read from a source, by part.

    Attributes:
        source: The source as given.
        states: ``{part: state_dict}`` of the parts the source has (model parts are keyed as in
            :class:`rem_env.REMModel`'s submodules; ``world_model`` also carries the start
            contexts ``start_tokens`` / ``start_actions``).
        lineage: The source's own training record and the runs it came from, oldest first.
        row_offset: Rows its patch tokenizer's grid starts above the frame (None: not known,
            a checkpoint outside its run folder).
    """

    source: str
    states: dict[str, dict[str, Tensor]]
    lineage: list[dict[str, Any]] = field(default_factory=list)
    row_offset: int | None = None


def parse_parts(text: str) -> tuple[str, ...]:
    """``"tokenizer,world_model"`` -> ``("tokenizer", "world_model")``; ``"all"`` -> PARTS.

    Example:
        >>> parse_parts("tokenizer, world-model")
        ('tokenizer', 'world_model')
    """
    if text.strip() == "all":
        return PARTS
    parts = tuple(p.strip().replace("-", "_") for p in text.split(",") if p.strip())
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise WarmStartError(
            f"init_parts: unknown part(s) {unknown or [text]}; choose from {', '.join(PARTS)} "
            "(comma-separated) or 'all'"
        )
    return parts


def _split_model_state(state: dict[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """An REMModel state_dict -> ``{"tokenizer": ..., "world_model": ...}``."""
    out: dict[str, dict[str, Tensor]] = {"tokenizer": {}, "world_model": {}}
    for key, value in state.items():
        if key.startswith("tokenizer."):
            out["tokenizer"][key[len("tokenizer.") :]] = value
        elif key.startswith("world_model."):
            out["world_model"][key[len("world_model.") :]] = value
        else:  # start contexts: tokens of the tokenizer, dreamed from by the world model
            out["world_model"][key] = value
    return out


def read_warm_start(source: str | os.PathLike[str]) -> WarmStart:
    """Reads every part a source has (see the module docstring for what a source can be).

    Raises:
        WarmStartError: If the source cannot be found or read.
    """
    text = os.fspath(source)
    path = Path(text).expanduser()
    checkpoint = None
    if path.is_file():
        checkpoint = path
    elif (path / "checkpoints" / "last.safetensors").is_file():
        checkpoint = path / "checkpoints" / "last.safetensors"
    if checkpoint is not None:
        from rem_train.checkpoint import load_checkpoint

        try:
            saved = load_checkpoint(checkpoint)
        except (OSError, KeyError, ValueError, RuntimeError) as err:
            raise WarmStartError(f"cannot read the checkpoint {checkpoint}: {err}") from err
        if "model" not in saved.modules:
            raise WarmStartError(f"{checkpoint} is not a rem-train checkpoint (no model)")
        states = _split_model_state(saved.modules["model"])
        if "actor_critic" in saved.modules:
            states["actor_critic"] = saved.modules["actor_critic"]
        lineage = lineage_of(path if path.is_dir() else None)
        record = {"source": text, "kind": "checkpoint", "epoch": saved.epoch}
        return WarmStart(text, states, [*lineage, record], _run_row_offset(checkpoint))

    from rem_env.actor_critic_files import ACTOR_CRITIC_WEIGHTS, actor_critic_file
    from rem_env.hub import ModelLoadError, load_pretrained

    try:
        model = load_pretrained(text, on_protocol_mismatch="warn")
    except (ModelLoadError, OSError, ValueError) as err:
        raise WarmStartError(f"--init-from {text!r}: {err}") from err
    states = _split_model_state(model.state_dict())
    folder = path if path.is_dir() else None
    weights = actor_critic_file(folder)
    if weights is not None:
        from safetensors.torch import load_file

        states["actor_critic"] = load_file(str(folder / ACTOR_CRITIC_WEIGHTS))  # type: ignore[operator]
    record = {"source": text, "kind": "model folder" if folder else "Hub repo"}
    lineage = [*lineage_of(folder), record]
    return WarmStart(text, states, lineage, model.config.tokenizer.row_offset)


def _run_row_offset(checkpoint: Path) -> int | None:
    """The patch grid's row offset of the run a checkpoint (RUN/checkpoints/*.safetensors) is
    from, read from the run's config (None where there is none)."""
    from rem_train.checkpoint import CONFIG_FILE
    from rem_train.config import TrainConfig  # it imports this module

    config = checkpoint.parent.parent / CONFIG_FILE
    if not config.is_file():
        return None
    try:
        return TrainConfig.from_dict(json.loads(config.read_text())).patch_row_offset
    except (ValueError, TypeError):  # not a run's config: not known
        return None


def export_with_lineage(
    model: Any,
    actor_critic: nn.Module | None,
    folder: Path,
    init_from: str,
    record: dict,
    joined: Sequence[dict[str, Any]] = (),
) -> Path:
    """Saves ``model`` (and ``actor_critic`` where given) as a model folder whose training
    record is ``record`` after the lineage of ``init_from`` (where that is a folder) and then
    ``joined``, the lineage of another part it took (a swapped-in tokenizer's fit).

    For the trainings that start from a model and change part of it (the frame conv's and the
    event reader's pretrainings). Returns ``folder``.
    """
    from rem_env.actor_critic_files import save_actor_critic

    model.save_pretrained(folder, manifest=model.manifest)
    if actor_critic is not None:
        save_actor_critic(actor_critic, folder)
    path = Path(init_from).expanduser()
    earlier = [*(lineage_of(path) if path.is_dir() else []), *joined]
    (folder / LINEAGE_FILE).write_text(json.dumps({"lineage": earlier, **record}, indent=2) + "\n")
    return folder


def lineage_of(folder: Path | None) -> list[dict[str, Any]]:
    """The training record of an export (or a run's export) and the lineage it carries."""
    if folder is None:
        return []
    for candidate in (folder / LINEAGE_FILE, folder / "export" / LINEAGE_FILE):
        if candidate.is_file():
            try:
                info = json.loads(candidate.read_text())
            except (OSError, ValueError):
                return []
            if not isinstance(info, dict):
                return []
            earlier = info.get("lineage", [])
            keys = (
                "command",
                "preset",
                "env_steps",
                "epochs",
                "tokenizer_steps",
                "frame_conv_steps",
                "event_reader_steps",
            )
            own = {k: info[k] for k in keys if k in info}
            return [*earlier, own] if own else list(earlier)
    return []


def apply_warm_start(
    warm: WarmStart,
    parts: tuple[str, ...],
    modules: dict[str, nn.Module],
) -> list[str]:
    """Loads the chosen parts into the run's modules, after checking every tensor's size.

    Args:
        warm: What :func:`read_warm_start` read.
        parts: Parts to take (each must be in the source).
        modules: ``{"tokenizer": ..., "world_model": ..., "actor_critic": ...}``; the world
            model entry is the whole REMModel (its start contexts are loaded too).

    Returns:
        Notes for the run's log (what was done besides loading), e.g. the layers added to a
        deeper world model.

    Raises:
        WarmStartError: If a part is missing from the source or a tensor differs in size.
    """
    problems: list[str] = []
    notes: list[str] = []
    added: dict[str, Tensor] = {}
    if {"tokenizer", "world_model"} & set(parts) and warm.row_offset is not None:
        ours = modules["world_model"].config.tokenizer.row_offset  # type: ignore[union-attr]
        if warm.row_offset != ours:
            problems.append(
                f"the source's patch grid starts {warm.row_offset} rows above the frame, this "
                f"run's {ours} (set --patch-row-offset {warm.row_offset})"
            )
    for part in parts:
        if part not in warm.states:
            raise WarmStartError(
                f"--init-from {warm.source!r} has no {part} (it has "
                f"{', '.join(sorted(warm.states))}); leave it out of --init-parts"
            )
        target = _target_state(part, modules)
        source = warm.states[part]
        if part == "world_model":
            conv = _added_frame_conv(source, target)
            if conv:
                had_conv = any(key.startswith(FRAME_CONV) for key in source)
                what = "a frame conv"
                if had_conv:
                    what = "the frame conv's " + " and ".join(_frame_conv_parts(conv))
                notes.append(f"world model: {what} added (at zero: the source's function)")
            wider = _widened_frame_conv({**source, **conv}, modules)
            if wider:
                frames = modules["world_model"].config.world_model.frame_conv_frames
                notes.append(
                    f"world model: the frame conv reads {frames} frames, more than the "
                    "source's (the older frames' channels at zero: the source's function)"
                )
                conv = {**conv, **wider}
            reader = _added_module(EVENT_READER, source, target)
            if reader:
                notes.append("world model: an event reader added (at zero: the source's function)")
            window = _added_module(EVENT_WINDOW, source, target)
            if window:
                notes.append("world model: an event window added (at zero: the source's function)")
            conv = {**conv, **reader, **window}
            added = {**conv, **_added_layers({**source, **conv}, target)}
            if set(added) - set(conv):
                have, want = _num_layers(source), _num_layers(target)
                notes.append(
                    f"world model: {want - have} RetNet layer(s) added after the source's "
                    f"{have} (layers {have}-{want - 1} of {want} start as the identity)"
                )
            source = {**source, **added}
        missing = sorted(set(target) - set(source))
        extra = sorted(set(source) - set(target))
        if missing or extra:
            problems.append(
                f"{part}: tensors missing in the source {missing[:4]}, unknown to this run "
                f"{extra[:4]}"
            )
            continue
        for key, value in target.items():
            have, want = tuple(source[key].shape), tuple(value.shape)
            if key.startswith("start_"):  # any number of start contexts
                have, want = have[1:], want[1:]
            if have != want:
                problems.append(
                    f"{part}.{key} is {tuple(source[key].shape)} in the source but "
                    f"{tuple(value.shape)} in this run"
                )
    if problems:
        raise WarmStartError(
            f"--init-from {warm.source!r} does not fit this run's model sizes: "
            + "; ".join(problems[:6])
            + (f" (and {len(problems) - 6} more)" if len(problems) > 6 else "")
            + ". Choose the preset (--preset / --model) the source was trained with, or leave "
            "the part out of --init-parts." + _shape_hint(warm.source)
        )
    with torch.no_grad():
        for part in parts:
            source = warm.states[part]
            if part == "world_model":
                model = modules["world_model"]
                model.world_model.load_state_dict(
                    {k: v for k, v in {**source, **added}.items() if not k.startswith("start_")}
                )
                model.set_start_contexts(source["start_tokens"], source["start_actions"])
            else:
                modules[part].load_state_dict(source)
    return notes


def _shape_hint(source: str) -> str:
    """For a model folder: the options that build its shape, as a sentence ("" otherwise)."""
    config = Path(source).expanduser() / "config.json"
    if not config.is_file():
        return ""
    try:
        options = architecture_options(json.loads(config.read_text()))
    except (ValueError, KeyError, TypeError):  # not a model's config.json: no hint
        return ""
    return f" The source's own shape is built by: {' '.join(options)}"


def _num_layers(state: dict[str, Tensor]) -> int:
    """RetNet decoder layers in a world model's state (0 if it has none)."""
    indices = {int(m.group(1)) for key in state if (m := LAYER_KEY.match(key))}
    return max(indices, default=-1) + 1


def _added_layers(source: dict[str, Tensor], target: dict[str, Tensor]) -> dict[str, Tensor]:
    """The layers a deeper run adds to a shallower source's world model, as the identity.

    Returns ``{key: tensor}`` for every tensor of the run's layers beyond the source's: the
    run's own initial values, with the output projection of the retention and the second
    feed-forward linear (weights and biases) zeroed, so that each added pre-LN layer returns its
    input. Empty when the source has at least as many layers (or any other tensor differs in
    name, which the size check then reports).
    """
    have, want = _num_layers(source), _num_layers(target)
    if not 0 < have < want:
        return {}
    added: dict[str, Tensor] = {}
    for key, value in target.items():
        match = LAYER_KEY.match(key)
        if match is None or int(match.group(1)) < have:
            continue
        added[key] = value.detach().clone()
        if key[match.end() :].startswith(IDENTITY_ZEROED):
            added[key].zero_()
    if set(target) - set(added) != set(source):
        return {}
    return added


def _added_frame_conv(source: dict[str, Tensor], target: dict[str, Tensor]) -> dict[str, Tensor]:
    """The run's own frame-conv tensors (output layers at zero) that the source lacks: the whole
    frame conv where the source has none, else its event layers, its copy gate and its
    completion where the source's has none."""
    prefixes: tuple[str, ...] = (FRAME_CONV,)
    if any(key.startswith(FRAME_CONV) for key in source):
        had = _frame_conv_parts(source)
        missing = [part for name, part in FRAME_CONV_PARTS.items() if name not in had]
        prefixes = tuple(prefix for part in missing for prefix in part)
    if not prefixes:
        return {}
    return {k: v.detach().clone() for k, v in target.items() if k.startswith(prefixes)}


def _widened_frame_conv(
    source: dict[str, Tensor], modules: dict[str, nn.Module]
) -> dict[str, Tensor]:
    """The run's frame-conv tensors loaded from a source's frame conv that reads fewer frames
    (:meth:`~rem_env.models.frame_conv.FrameConv.load_fewer_frames`; empty where the source's
    reads as many, or the two differ otherwise: the size check reports it)."""
    first = FRAME_CONV + "layers.0.weight"
    conv = modules["world_model"].world_model.frame_conv
    if conv is None or first not in source:
        return {}
    own = conv.layers[0].weight
    theirs = source[first]
    if theirs.shape[1] >= own.shape[1] or theirs.shape[0] != own.shape[0]:
        return {}
    widened = copy.deepcopy(conv)
    state = {k[len(FRAME_CONV) :]: v for k, v in source.items() if k.startswith(FRAME_CONV)}
    try:
        widened.load_fewer_frames(state)
    except ValueError:
        return {}
    return {FRAME_CONV + k: v for k, v in widened.state_dict().items()}


def _frame_conv_parts(state: dict[str, Tensor]) -> list[str]:
    """The names of :data:`FRAME_CONV_PARTS` that have tensors in ``state``."""
    return [
        name for name, prefixes in FRAME_CONV_PARTS.items()
        if any(key.startswith(prefixes) for key in state)
    ]  # fmt: skip


def _added_module(
    prefix: str, source: dict[str, Tensor], target: dict[str, Tensor]
) -> dict[str, Tensor]:
    """The run's own tensors of the module at ``prefix`` (an event reader or window, its output
    layer at zero) where the source has none."""
    if any(key.startswith(prefix) for key in source):
        return {}
    return {k: v.detach().clone() for k, v in target.items() if k.startswith(prefix)}


def _target_state(part: str, modules: dict[str, nn.Module]) -> dict[str, Tensor]:
    if part == "world_model":
        model: Any = modules["world_model"]
        state = {k: v for k, v in model.world_model.state_dict().items()}
        state["start_tokens"], state["start_actions"] = model.start_tokens, model.start_actions
        return state
    return modules[part].state_dict()
