"""The ``README.md`` model card written beside saved weights, with Hub YAML metadata."""

from __future__ import annotations

import math
from collections.abc import Iterable

from rem_env.config import REMConfig, WorldModelConfig
from rem_env.manifest import ProtocolManifest

__all__ = ["format_number", "render_model_card"]

NOT_MEASURED = "not measured"

# What each file a model folder may hold is, in the order the card lists them.
FILE_WORDS = {
    "model.safetensors": "weights",
    "start_contexts.safetensors": "dream openings",
    "config.json": "model sizes",
    "manifest.json": "protocol, versions, figures",
    "actor_critic.safetensors": "the trained actor-critic's weights",
    "actor_critic.json": "its sizes",
    "training.json": "how it was trained, with its lineage",
    "tokenizer_pretraining.json": "the settings of its last tokenizer pretraining",
    "fidelity_curve.png": "fidelity over the imagined steps",
    "fidelity_strip.png": "real frames beside dreamed ones",
}
SAVED_FILES = ("model.safetensors", "start_contexts.safetensors", "config.json", "manifest.json")


def render_model_card(
    config: REMConfig,
    manifest: ProtocolManifest,
    repo_id: str | None,
    extra: str = "",
    files: Iterable[str] = SAVED_FILES,
) -> str:
    """The model card: YAML front matter the Hub reads, then what is known about the model.

    Args:
        config: The model's configuration.
        manifest: Its protocol manifest.
        repo_id: Where it is (or will be) published, for the usage snippet; None for a folder.
        extra: Markdown sections put before "Software" (how it was trained, measured figures).
        files: The names of the folder's files, for the "Files" section (the card itself is
            left out); by default those :meth:`~rem_env.REMModel.save_pretrained` writes.

    Example:
        >>> from rem_env import REMConfig
        >>> from rem_env.manifest import ProtocolManifest
        >>> card = render_model_card(
        ...     REMConfig.preset("tiny", 4, "Breakout"), ProtocolManifest("Breakout"), "me/rem"
        ... )
        >>> card.splitlines()[:3]
        ['---', 'library_name: rem-env', 'license: mit']
    """
    game = manifest.game or config.game
    tags = ["reinforcement-learning", "world-models", "atari", "rem"]
    if game:
        tags.append(game)
    lines = ["---", "library_name: rem-env", "license: mit", "tags:"]
    lines += [f"- {tag}" for tag in tags]
    lines += ["---", "", f"# REM world model{f' of {game}' if game else ''}", ""]
    side = config.tokenizer.patch_size
    tokenizer = "VQ-VAE tokenizer"
    if config.tokenizer.kind == "patch":
        tokenizer = f"a tokenizer of fixed {side}x{side} patches fitted by k-means (not in REM)"
        if config.tokenizer.row_offset:
            tokenizer = (
                f"a tokenizer of fixed {side}x{side} patches fitted by k-means on a grid "
                f"{config.tokenizer.row_offset} rows above the frame (not in REM)"
            )
    parts = _parts_not_in_rem(config.world_model)
    lines += [
        f"A token-based world model ({tokenizer} + RetNet with Parallel Observation "
        f"Prediction{parts}) that runs as a batched Gymnasium dream environment with "
        "[rem-env](https://github.com/rem-env/rem-env).",
        "",
        "## Usage",
        "",
        "```python",
        "import gymnasium as gym",
        "import rem_env",
        "",
    ]
    source = repo_id or "path/to/this/folder"
    if game:
        lines.append(f'env = gym.make("REM-{game}-v0", model="{source}")')
    lines += [f'model = rem_env.REMModel.from_pretrained("{source}")', "```", ""]

    training, evaluation = manifest.training, manifest.evaluation
    fidelity = NOT_MEASURED
    if evaluation.fidelity_psnr is not None:
        horizon = evaluation.fidelity_horizon
        fidelity = f"{evaluation.fidelity_psnr:.2f} dB PSNR" + (
            f" over {horizon} steps" if horizon else ""
        )
    lines += [
        "## Figures",
        "",
        "| | |",
        "|---|---|",
        f"| real environment steps | {_known(training.env_steps)} |",
        f"| training epochs | {_known(training.epochs)} |",
        f"| mean return | {_known(evaluation.mean_return)} |",
        f"| human-normalised score | {_known(evaluation.human_normalized_score)} |",
        f"| evaluation episodes | {_known(evaluation.episodes)} |",
        f"| dream fidelity | {fidelity} |",
        "",
        "## Protocol",
        "",
    ]
    protocol = manifest.protocol
    if protocol is None:
        lines.append("Not recorded.")
    else:
        lines += [
            f"- environment: `{protocol.env_id}` (gymnasium: `{protocol.gymnasium_env_id}`)",
            f"- frameskip {protocol.frameskip}, sticky actions "
            f"{protocol.repeat_action_probability}, up to {protocol.noop_max} no-ops at reset",
            f"- terminal on life loss: {protocol.terminal_on_life_loss}",
            f"- frames {protocol.frame_size}x{protocol.frame_size} RGB, "
            f"{protocol.num_actions} actions"
            + (f" ({', '.join(protocol.action_meanings)})" if protocol.action_meanings else ""),
        ]
    if extra:
        lines += ["", extra.strip()]
    versions = manifest.versions
    lines += [
        "",
        "## Software",
        "",
        f"ale-py {_known(versions.ale_py)}, gymnasium {_known(versions.gymnasium)}, "
        f"torch {_known(versions.torch)}, rem-env {_known(versions.rem_env)}.",
        "",
        "## Files",
        "",
        _files_line(files),
        "",
    ]
    return "\n".join(lines)


def _files_line(files: Iterable[str]) -> str:
    """``files`` named with what each is, known ones first in :data:`FILE_WORDS`' order.

    Example:
        >>> _files_line(["notes.txt", "config.json", "README.md"])
        '`config.json` (model sizes), `notes.txt`.'
    """
    names = set(files) - {"README.md"}
    known = [name for name in FILE_WORDS if name in names]
    other = sorted(names - set(known))
    return ", ".join([f"`{n}` ({FILE_WORDS[n]})" for n in known] + [f"`{n}`" for n in other]) + "."


def _known(value: object) -> str:
    """``value`` for the card: "not measured" for None, numbers at a readable precision."""
    if value is None:
        return NOT_MEASURED
    if isinstance(value, float):
        return format_number(value)
    return str(value)


def format_number(value: float, decimals: int = 3) -> str:
    """A measured figure for people: at most ``decimals`` decimals, no trailing zeros.

    Example:
        >>> format_number(-0.041666666666666664), format_number(2.625), format_number(12.0)
        ('-0.042', '2.625', '12')
        >>> format_number(-0.0001), format_number(float("nan"))
        ('0', 'nan')
    """
    if not math.isfinite(value):
        return str(value)
    text = f"{value:.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _parts_not_in_rem(world_model: WorldModelConfig) -> str:
    """ ", with a frame conv (not in REM), ..." for the world model's parts that REM lacks."""
    parts = []
    if world_model.frame_conv_layers:
        frames = world_model.frame_conv_frames
        conv = "a frame conv" + (f" of {frames} frames" if frames > 2 else "")
        if world_model.frame_conv_pixels:
            conv += " that reads the frames' pixels"
        if world_model.frame_conv_completion:
            conv += " and draws each frame in rounds (a completion)"
        parts.append(conv)
    if world_model.event_reader_width:
        parts.append("an event reader")
    if world_model.event_window_frames:
        window = f"an event window of {world_model.event_window_frames} frames"
        if world_model.event_window_reads_next:
            window += " that ends at each step's next frame"
        if world_model.event_window_change_width:
            window += " and reads the change of its last two frames"
        parts.append(window)
    return f", with {', '.join(parts)} (not in REM)" if parts else ""
