"""Charts of the benchmark results: PNG line plots drawn with Pillow from the scripts' JSON.

Nothing is measured here. The script reads what ``benchmarks/imagination.py`` and
``benchmarks/dream_env.py`` wrote (a ``"metadata"`` dict and a ``"records"`` list each) and draws
env-steps/s on a logarithmic axis:

* ``benchmark-imagination.png``: against the batch size, one line per path (POP or
  token-by-token) and mode (tokens only, or decoded RGB frames);
* ``benchmark-dream-env.png``: against the number of envs, one line per observation type of
  ``DreamVectorEnv`` and one for ale-py's real Breakout vector env when the run measured it.

The title line under each chart gives the device, threads, torch version and preset from the
metadata, and a footnote names the JSON file the points come from.

How to run
----------
From the repository root, after running the benchmarks (their JSON goes to
``benchmarks/results/`` by default)::

    python benchmarks/plot.py                       # writes docs/assets/benchmark-*.png
    python benchmarks/plot.py --out-dir /tmp/plots --imagination-json my-run.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_IMAGINATION_JSON = ROOT / "benchmarks" / "results" / "imagination.json"
DEFAULT_DREAM_ENV_JSON = ROOT / "benchmarks" / "results" / "dream_env.json"
DEFAULT_OUT_DIR = ROOT / "docs" / "assets"
IMAGINATION_PNG = "benchmark-imagination.png"
DREAM_ENV_PNG = "benchmark-dream-env.png"

SIZE = (1000, 600)
"""(width, height) in pixels of every PNG written."""
SCALE = 2
"""Charts are drawn at SCALE times SIZE, then downsampled: Pillow's lines are not anti-aliased."""

# The imagination script's labels, repeated: importing it would pull in torch (this needs Pillow).
PATH_LABELS = {
    "pop": "POP",
    "int8": "POP int8",
    "bf16": "POP bf16",
    "compile": "POP compiled",
    "bf16-compile": "POP bf16 compiled",
    "token": "token-by-token",
}
PATH_COLORS = {"pop": "#0072B2", "int8": "#009E73", "bf16": "#CC79A7", "token": "#D55E00"}
OBS_COLORS = {"rgb": "#0072B2", "tokens": "#009E73", "latent": "#E69F00"}
OTHER_COLORS = ("#CC79A7", "#56B4E9", "#F0E442")
ALE_COLOR = "#000000"
GRID, AXIS, MUTED = "#E3E3E3", "#444444", "#6E6E6E"
Y_LABEL = "env-steps/s (log scale)"

IMAGINATION_KEYS = ("path", "mode")
DREAM_ENV_KEYS = ("env", "obs_type")


@dataclass(frozen=True)
class Series:
    """One line of a chart.

    Attributes:
        label: Legend text.
        points: (x, env-steps/s) pairs, sorted by x; both positive (the axes are logarithmic).
        color: A Pillow colour, e.g. ``"#0072B2"``.
        dashed: Draw the line dashed instead of solid.
    """

    label: str
    points: tuple[tuple[float, float], ...]
    color: str
    dashed: bool = False


@dataclass(frozen=True)
class Chart:
    """Everything drawn on one PNG.

    Attributes:
        title: First line, bold-sized.
        subtitle: Second line: the run's device, threads and versions.
        x_label: Caption of the x axis (the y axis is always env-steps/s).
        series: The lines, in legend order.
        footnote: Small grey text at the bottom right: where the numbers come from.
    """

    title: str
    subtitle: str
    x_label: str
    series: tuple[Series, ...]
    footnote: str


# ------------------------------------------------------------------------------------- reading


def load_results(
    path: Path, x_key: str, keys: Sequence[str]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Reads a benchmark JSON file: its metadata and its records.

    Args:
        path: The JSON a benchmark script wrote.
        x_key: The record field plotted on the x axis.
        keys: Further fields every record must have.

    Raises:
        ValueError: The file is missing or not JSON, has no ``records`` list, or a record lacks
            a field or has an x or env-steps/s that is not a positive number (both axes are
            logarithmic).
    """
    if not path.is_file():
        raise ValueError(f"{path} not found: run the benchmark script first, or pass its JSON")
    try:
        payload = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    records = payload.get("records") if isinstance(payload, dict) else None
    if not isinstance(records, list) or not records:
        raise ValueError(f"{path} has no 'records' list; is it a benchmark script's output?")
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise ValueError(f"{path}: record {i} is not a JSON object")
        missing = [key for key in (x_key, "env_steps_per_s", *keys) if key not in record]
        if missing:
            raise ValueError(f"{path}: record {i} lacks {', '.join(missing)}")
        for key in (x_key, "env_steps_per_s"):
            value = record[key]
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"{path}: record {i} has {key}={value!r}, not a positive number")
    metadata = payload.get("metadata")
    return (metadata if isinstance(metadata, dict) else {}), records


def collect(
    records: Iterable[dict[str, Any]], x_key: str, group_key: Callable[[dict[str, Any]], Hashable]
) -> dict[Any, list[tuple[float, float]]]:
    """Groups records as {group: [(x, env-steps/s), ...]} sorted by x, in first-seen order."""
    groups: dict[Any, list[tuple[float, float]]] = {}
    for record in records:
        point = (float(record[x_key]), float(record["env_steps_per_s"]))
        groups.setdefault(group_key(record), []).append(point)
    return {group: sorted(points) for group, points in groups.items()}


def run_line(meta: dict[str, Any]) -> str:
    """The subtitle: device, threads, torch version, preset and date of the run."""
    device = str(meta.get("device", "?"))
    if meta.get("device_name"):
        device += f" ({meta['device_name']})"
    threads = f"{meta.get('threads', '?')} thread" + ("" if meta.get("threads") == 1 else "s")
    if meta.get("cpu_count"):
        threads += f" ({meta['cpu_count']} CPUs)"
    parts = [device, threads, f"torch {meta.get('torch_version', '?')}"]
    parts.append(f"{meta.get('preset', '?')} preset, random weights")
    date = meta.get("date") or meta.get("time")
    if date:
        parts.append(str(date)[:10])
    return "  |  ".join(parts)


def imagination_chart(meta: dict[str, Any], records: list[dict[str, Any]], source: str) -> Chart:
    """Env-steps/s against batch size, one line per (path, mode) of ``imagination.py``."""
    groups = collect(records, "batch_size", lambda r: (r["path"], r["mode"]))
    series = tuple(
        Series(
            label=f"{PATH_LABELS.get(path, path)} {mode}",
            points=tuple(points),
            color=PATH_COLORS.get(path, OTHER_COLORS[i % len(OTHER_COLORS)]),
            dashed=mode != "tokens",
        )
        for i, ((path, mode), points) in enumerate(groups.items())
    )
    revision = f", git {meta['git_revision']}" if meta.get("git_revision") else ""
    return Chart(
        title="Imagination: one batched REMModel.imagine_step (rgb adds decoding to frames)",
        subtitle=run_line(meta),
        x_label="batch size (dreams stepped together)",
        series=series,
        footnote=f"data: {source}{revision}",
    )


def dream_env_chart(meta: dict[str, Any], records: list[dict[str, Any]], source: str) -> Chart:
    """Env-steps/s against number of envs: one line per dream obs type, one for real ALE."""

    def variant(r: dict[str, Any]) -> str:
        names = (r.get("quantize", "none"), r.get("autocast", "none"))
        return " ".join(v for v in names if v != "none")

    groups = collect(records, "num_envs", lambda r: (r["env"], r["obs_type"], variant(r)))
    series = []
    for i, ((env, obs_type, kind), points) in enumerate(groups.items()):
        if env == "ale":
            label, color = "real ALE Breakout-v5 vector env", ALE_COLOR
        else:
            label = f"{env} {obs_type}" + (f" {kind}" if kind else "")
            color = OBS_COLORS.get(obs_type, OTHER_COLORS[i % len(OTHER_COLORS)])
        dashed = env == "ale" or bool(kind)
        series.append(Series(label, tuple(points), color, dashed=dashed))
    command = meta.get("command")
    if isinstance(command, list):
        command = " ".join(map(str, command))
    title = "Dream env: DreamVectorEnv steps"
    if any(env == "ale" for env, *_ in groups):
        title += " beside ale-py's real Breakout"
    return Chart(
        title=title,
        subtitle=run_line(meta),
        x_label="number of envs N",
        series=tuple(series),
        footnote=f"data: {source}" + (f" ({command})" if command else ""),
    )


# ------------------------------------------------------------------------------------- drawing


def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled font at ``size`` pixels (the same on every machine)."""
    return ImageFont.load_default(size=size)


def log_ticks(low: float, high: float) -> list[float]:
    """Values 1, 2 and 5 times a power of ten within [low, high]; powers of ten only if many."""
    decades = range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
    for mantissas in ((1, 2, 5), (1,)):
        ticks = [m * 10.0**k for k in decades for m in mantissas if low <= m * 10.0**k <= high]
        if len(ticks) <= 9:
            break
    return ticks


def tick_label(value: float) -> str:
    """1000 -> '1,000', 0.5 -> '0.5'."""
    return f"{value:,.0f}" if value >= 1 else f"{value:g}"


def padded_log_range(values: Sequence[float], pad: float, base: float) -> tuple[float, float]:
    """(low, high) in log ``base`` covering ``values``, widened by ``pad`` of the span each side."""
    low, high = (math.log(min(values), base), math.log(max(values), base))
    span = max(high - low, 1.0)
    return low - pad * span, high + pad * span


def draw_line(
    draw: ImageDraw.ImageDraw,
    points: Sequence[tuple[float, float]],
    color: str,
    width: int,
    dash: tuple[float, float] | None,
) -> None:
    """A polyline, solid or with ``dash = (on, off)`` lengths (phase carried across corners)."""
    if dash is None:
        draw.line(points, fill=color, width=width, joint="curve")
        return
    dash_on, gap = dash
    phase = 0.0
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        length = math.hypot(x1 - x0, y1 - y0)
        pos = 0.0
        while pos < length:
            period = phase % (dash_on + gap)
            on = period < dash_on
            step = min((dash_on - period) if on else (dash_on + gap - period), length - pos)
            if on:
                a, b = pos / length, (pos + step) / length
                segment = [(x0 + (x1 - x0) * t, y0 + (y1 - y0) * t) for t in (a, b)]
                draw.line(segment, fill=color, width=width)
            pos += step
            phase += step


def draw_marker(draw: ImageDraw.ImageDraw, x: float, y: float, color: str, radius: int) -> None:
    """A filled circle with a white rim."""
    box = (x - radius, y - radius, x + radius, y + radius)
    draw.ellipse(box, fill=color, outline="white", width=max(1, radius // 3))


def render(chart: Chart) -> Image.Image:
    """Draws ``chart`` as an RGB image of :data:`SIZE` pixels."""
    s = SCALE
    width, height = SIZE[0] * s, SIZE[1] * s
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    title_font, text_font, small_font = font(19 * s), font(13 * s), font(11 * s)
    line_width, radius = 3 * s, 5 * s
    plot_dash, legend_dash = (6 * line_width, 3 * line_width), (2.5 * line_width, 2 * line_width)

    xs = [x for series in chart.series for x, _ in series.points]
    ys = [y for series in chart.series for _, y in series.points]
    x_low, x_high = padded_log_range(xs, 0.06, 2)
    y_low, y_high = padded_log_range(ys, 0.08, 10)
    y_ticks = log_ticks(10**y_low, 10**y_high)
    x_ticks = sorted(set(xs))

    # Layout: title block on top, legend on the right, tick labels and axis caption bottom/left.
    legend_width = max(draw.textlength(series.label, font=text_font) for series in chart.series)
    legend_width += 74 * s
    tick_width = max(draw.textlength(tick_label(v), font=text_font) for v in y_ticks)
    left = 24 * s + 13 * s + 14 * s + tick_width
    right = width - legend_width - 30 * s
    top, bottom = 96 * s, height - 78 * s

    def to_px(x: float, y: float) -> tuple[float, float]:
        px = left + (math.log2(x) - x_low) / (x_high - x_low) * (right - left)
        py = bottom - (math.log10(y) - y_low) / (y_high - y_low) * (bottom - top)
        return px, py

    draw.text((24 * s, 18 * s), chart.title, fill="black", font=title_font)
    draw.text((24 * s, 50 * s), chart.subtitle, fill=MUTED, font=text_font)

    for value in y_ticks:
        _, py = to_px(x_ticks[0], value)
        draw.line([(left, py), (right, py)], fill=GRID, width=s)
        draw.text((left - 8 * s, py), tick_label(value), fill=AXIS, font=text_font, anchor="rm")
    for value in x_ticks:
        px, _ = to_px(value, ys[0])
        draw.line([(px, top), (px, bottom)], fill=GRID, width=s)
        draw.text((px, bottom + 8 * s), tick_label(value), fill=AXIS, font=text_font, anchor="mt")
    draw.rectangle((left, top, right, bottom), outline=AXIS, width=s)

    center = (left + right) / 2
    draw.text((center, bottom + 32 * s), chart.x_label, fill="black", font=text_font, anchor="mt")
    caption = Image.new("L", (int(draw.textlength(Y_LABEL, font=text_font)) + 4, 18 * s), 0)
    ImageDraw.Draw(caption).text((2, 0), Y_LABEL, fill=255, font=text_font)
    caption = caption.rotate(90, expand=True)
    y_caption = int((top + bottom - caption.height) / 2)
    image.paste(Image.new("RGB", caption.size, "black"), (20 * s, y_caption), caption)

    for series in chart.series:
        pixels = [to_px(x, y) for x, y in series.points]
        if len(pixels) > 1:
            draw_line(draw, pixels, series.color, line_width, plot_dash if series.dashed else None)
        for px, py in pixels:
            draw_marker(draw, px, py, series.color, radius)

    for i, series in enumerate(chart.series):
        y = top + 12 * s + i * 26 * s
        x0 = right + 20 * s
        dash = legend_dash if series.dashed else None
        draw_line(draw, [(x0, y), (x0 + 44 * s, y)], series.color, line_width, dash)
        draw_marker(draw, x0 + 22 * s, y, series.color, radius)
        draw.text((x0 + 54 * s, y), series.label, fill="black", font=text_font, anchor="lm")

    draw.text(
        (width - 12 * s, height - 10 * s), chart.footnote, fill=MUTED, font=small_font, anchor="rd"
    )
    return image.resize(SIZE, Image.Resampling.LANCZOS)


# ---------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parses the command line."""
    parser = argparse.ArgumentParser(
        description="Draws PNG charts from the JSON of benchmarks/imagination.py and "
        "benchmarks/dream_env.py (measures nothing).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--imagination-json", type=Path, default=DEFAULT_IMAGINATION_JSON)
    parser.add_argument("--dream-env-json", type=Path, default=DEFAULT_DREAM_ENV_JSON)
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR, help="where PNGs go")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Reads both JSON files and writes both PNGs; returns the exit status.

    Raises:
        SystemExit: An input file is missing or malformed (the message says which).
    """
    args = parse_args(argv)
    try:
        imagination = load_results(args.imagination_json, "batch_size", IMAGINATION_KEYS)
        dream_env = load_results(args.dream_env_json, "num_envs", DREAM_ENV_KEYS)
    except ValueError as err:
        raise SystemExit(f"benchmarks/plot.py: {err}") from err
    charts = {
        IMAGINATION_PNG: imagination_chart(*imagination, args.imagination_json.name),
        DREAM_ENV_PNG: dream_env_chart(*dream_env, args.dream_env_json.name),
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name, chart in charts.items():
        render(chart).save(args.out_dir / name, optimize=True)
        print(f"wrote {args.out_dir / name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
