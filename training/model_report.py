"""Write what was measured about an exported model into its model card and manifest.

``python -m rem_train.model_report MODEL_FOLDER --fidelity DIR --dream-to-real DIR`` reads the
folder's ``training.json`` (written by ``rem-train``), the output of ``rem-env fidelity`` and of
``python -m rem_train.dream_to_real`` (``--dream-to-real`` once per PPO seed) and, with
``--events FILE``, the JSON of ``rem-env events --out FILE``; copies the fidelity figures into the
folder, records the fidelity in ``manifest.json`` and rewrites ``README.md`` with a section for
each: how the model was trained, its fidelity, its episode ends and rewards under simple policies
beside the game's, and the dream-to-real result (each seed and their mean). The weights are not
touched.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from rem_env.checkpoint import CONFIG_NAME, MANIFEST_NAME, MODEL_CARD_NAME
from rem_env.config import REMConfig
from rem_env.dream import temperature_words
from rem_env.events import EventRates, event_table
from rem_env.fidelity import FidelityReport
from rem_env.manifest import ProtocolManifest
from rem_env.model_card import render_model_card
from rem_train.dream_to_real import seeds_table
from rem_train.dream_to_real import table as dream_to_real_table

__all__ = [
    "describe_machine",
    "dream_to_real_section",
    "events_section",
    "main",
    "training_section",
    "write_model_report",
]

FIDELITY_FIGURES = ("fidelity_curve.png", "fidelity_strip.png")
"""Figures of ``rem-env fidelity`` copied into the model folder."""


def describe_machine() -> str:
    """This machine in words: CPU count, architecture, torch threads and version."""
    return (
        f"{os.cpu_count()} CPU cores ({platform.machine()}), {torch.get_num_threads()} torch "
        f"threads, torch {torch.__version__}, no GPU"
        if not torch.cuda.is_available()
        else f"{torch.cuda.get_device_name()} GPU, torch {torch.__version__}"
    )


def training_section(record: dict[str, Any], machine: str) -> str:
    """The "How it was trained" section from ``training.json``."""
    lines = ["## How it was trained", ""]
    if "command" in record:
        lines += ["```bash", str(record["command"]), "```", ""]
    if "note" in record:
        lines += [str(record["note"]), ""]
    wall = record.get("wall_time_s")
    lines += [
        f"- preset: `{record.get('preset', 'unknown')}`",
        f"- real env steps: {record.get('env_steps', 'unknown')}, epochs: "
        f"{record.get('epochs', 'unknown')}",
        f"- wall time: {wall / 60:.1f} min" if isinstance(wall, (int, float)) else "- wall time: ?",
        f"- machine: {machine}",
        f"- LPIPS in the tokenizer loss: {record.get('lpips', 'unknown')}",
    ]
    evaluation = record.get("evaluation")
    if evaluation:
        scores = evaluation["scores"]
        lines.append(
            f"- its own actor-critic on the real game (REM's test protocol, temperature 0.5): "
            f"{evaluation['mean']:.2f} ± {evaluation['std']:.2f} over {len(scores)} episodes"
        )
    for change in record.get("config_changes", []):  # what resumes changed, in order
        lines.append(
            f"- resumed after epoch {change['after_epoch']} with: {', '.join(change['changes'])}"
        )
    lines += _lineage_lines(record)
    return "\n".join(lines)


def _lineage_lines(record: dict[str, Any]) -> list[str]:
    """Where a warm-started run's weights came from, oldest run first."""
    init = record.get("init_from")
    if not init:
        return []
    lines = [
        "",
        f"Warm-started (`--init-from`) from `{init['source']}`, taking its "
        f"{', '.join(init['parts'])}. The runs behind those weights, oldest first:",
        "",
    ]
    for i, step in enumerate(record.get("lineage", []), 1):
        facts = ", ".join(f"{k}: `{v}`" for k, v in step.items())
        lines.append(f"{i}. {facts}")
    return lines


def dream_to_real_section(
    dirs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
) -> str:
    """The "Trained in the dream, scored on the real game" section.

    Args:
        dirs: Output folder(s) of ``python -m rem_train.dream_to_real`` for this model; with
            several (one per PPO seed) the section shows each seed and their mean.

    Returns:
        The section, in markdown.

    Raises:
        ValueError: If ``dirs`` is empty, a run scored an agent trained before (``--agent``:
            its card is that of the run that trained it), or the runs differ in dream steps,
            dreams batched, frames stacked, dream temperature or how the real games start.
    """
    paths = [Path(dirs)] if isinstance(dirs, (str, os.PathLike)) else [Path(d) for d in dirs]
    if not paths:
        raise ValueError("no dream-to-real folder given")
    reports = [json.loads((p / "dream_to_real.json").read_text()) for p in paths]
    first = reports[0]
    for path, report in zip(paths, reports, strict=True):
        if "agent_file" in report:
            raise ValueError(
                f"{path} scored {report['agent_file']}, an agent trained before (--agent): give "
                "the dream-to-real folder of the run that trained it"
            )
        report.setdefault("dream_temperature", 1.0)  # reports written before it was an option
        report.setdefault("dream_event_temperature", report["dream_temperature"])  # likewise
        report.setdefault("noop_max", 1)  # reports written before it was an option
    for path, report in zip(paths[1:], reports[1:], strict=True):
        for key in (
            "dream_steps",
            "dream_envs",
            "frame_stack",
            "dream_temperature",
            "dream_event_temperature",
            "noop_max",
        ):
            if report[key] != first[key]:
                raise ValueError(
                    f"{path} has {key} {report[key]} but {paths[0]} has {first[key]}: the card "
                    "averages runs of the same protocol only"
                )
    minutes = " and ".join(f"{r['train_seconds'] / 60:.1f}" for r in reports)
    runs = "" if len(reports) == 1 else f", once for each of {len(reports)} PPO seeds"
    temperatures = (first["dream_temperature"], first["dream_event_temperature"])
    temperature = (
        "" if temperatures == (1.0, 1.0) else f", temperature {temperature_words(*temperatures)}"
    )
    lines = [
        "## Trained in the dream, scored on the real game",
        "",
        f"PPO (`CnnPolicy`, {first['frame_stack']} stacked frames) trained "
        f"{first['dream_steps']:,} steps only inside this dream{runs} "
        f"({first['dream_envs']} dreams batched{temperature}; {minutes} min), then scored on the "
        f"real game: "
        f"{first['protocol']}.",
        "",
        "```bash",
        *(r["command"] for r in reports),
        "```",
        "",
        dream_to_real_table(first) if len(reports) == 1 else seeds_table(reports),
    ]
    return "\n".join(lines)


def events_section(path: str | os.PathLike[str]) -> str:
    """The "Episode ends and rewards under simple policies" section.

    Args:
        path: The JSON file of ``rem-env events --out`` (a list, one entry per policy; a single
            entry of the command's first format is read too).

    Raises:
        ValueError: If the file holds no entry.
    """
    data = json.loads(Path(path).read_text())
    entries = data if isinstance(data, list) else [data]
    if not entries:
        raise ValueError(f"{path} holds no policy's counts")
    rates = [EventRates.from_dict(entry) for entry in entries]
    return "\n".join(
        [
            "## Episode ends and rewards under simple policies",
            "",
            "`rem-env events`: the same action sequences played in dreams and in the real game "
            "(REM's training preprocessing: a lost life ends an episode). A dream that pays a "
            "behaviour more than the game does, or ends fewer of its lives, is one an agent "
            "trained in it learns to repeat."
            + "".join(
                f" The second table checks the game's own rule (rewards come with {r.rule[0]}, "
                f"and no {r.rule[1]}) on the real frames, their reconstructions by this "
                "model's tokenizer and the dreamed frames."
                for r in rates[:1]
                if r.rule is not None
            ),
            "",
            event_table(rates),
        ]
    )


def write_model_report(
    folder: str | os.PathLike[str],
    fidelity_dir: str | os.PathLike[str] | None = None,
    dream_to_real_dirs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    machine: str | None = None,
    events: str | os.PathLike[str] | None = None,
) -> Path:
    """Rewrites ``README.md`` (and the fidelity of ``manifest.json``) of an exported model.

    Args:
        folder: A model folder exported by ``rem-train`` (with ``training.json``).
        fidelity_dir: Output folder of ``rem-env fidelity`` for this model.
        dream_to_real_dirs: Output folder(s) of ``python -m rem_train.dream_to_real``, one per
            PPO seed.
        machine: Where it was trained, in words (default: this machine).
        events: The JSON file of ``rem-env events --out`` for this model.

    Returns:
        The path of the model card.
    """
    folder = Path(folder)
    config = REMConfig.from_dict(json.loads((folder / CONFIG_NAME).read_text()))
    manifest = ProtocolManifest.from_dict(json.loads((folder / MANIFEST_NAME).read_text()))
    record_path = folder / "training.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    sections = [training_section(record, machine or describe_machine())]
    if fidelity_dir is not None:
        data = json.loads((Path(fidelity_dir) / "fidelity.json").read_text())
        fields = {f.name for f in dataclasses.fields(FidelityReport)}
        report = FidelityReport(**{k: v for k, v in data.items() if k in fields})
        for name in FIDELITY_FIGURES:
            if (Path(fidelity_dir) / name).is_file():
                shutil.copyfile(Path(fidelity_dir) / name, folder / name)
        mean_psnr = sum(report.psnr) / len(report.psnr)
        evaluation = dataclasses.replace(
            manifest.evaluation, fidelity_psnr=round(mean_psnr, 2), fidelity_horizon=report.horizon
        )
        manifest = dataclasses.replace(manifest, evaluation=evaluation)
        sections.append(
            "\n".join(
                [
                    "## Fidelity to the real game",
                    "",
                    f"`rem-env fidelity`: {data.get('games', '?')} real games played by "
                    f"{data.get('agent', '?')}, the same actions dreamed from the same real "
                    f"contexts (a dream every few real steps, sampled at temperature "
                    f"{temperature_words(report.temperature, report.event_temperature)}).",
                    "",
                    report.summary_table(),
                    "",
                    "![fidelity over the horizon](fidelity_curve.png)",
                    "",
                    "Real frames (upper row of each pair) and the dream of the same actions "
                    "(lower row), four steps a row:",
                    "",
                    "![real vs dream](fidelity_strip.png)",
                ]
            )
        )
    if events is not None:
        sections.append(events_section(events))
    if dream_to_real_dirs is not None:
        sections.append(dream_to_real_section(dream_to_real_dirs))
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")
    files = [path.name for path in folder.iterdir() if path.is_file()]
    card = render_model_card(config, manifest, None, extra="\n\n".join(sections), files=files)
    (folder / MODEL_CARD_NAME).write_text(card)
    return folder / MODEL_CARD_NAME


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rem_train.model_report``."""
    parser = argparse.ArgumentParser(
        prog="python -m rem_train.model_report",
        description="Rewrite an exported model's README.md (and manifest fidelity) with how it "
        "was trained, its fidelity (rem-env fidelity), its episode ends and rewards under simple "
        "policies (rem-env events) and its dream-to-real result.",
    )
    parser.add_argument("folder", help="model folder exported by rem-train")
    parser.add_argument("--fidelity", help="output folder of `rem-env fidelity`")
    parser.add_argument(
        "--dream-to-real",
        action="append",
        help="output folder of rem_train.dream_to_real (repeat it, one per PPO seed)",
    )
    parser.add_argument("--events", help="JSON file of `rem-env events --out`")
    parser.add_argument("--machine", help="where it was trained, in words (default: here)")
    args = parser.parse_args(argv)
    try:
        path = write_model_report(
            args.folder, args.fidelity, args.dream_to_real, args.machine, events=args.events
        )
    except (OSError, ValueError) as err:  # a missing file, a refused mix of reports: one line
        parser.error(str(err))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
