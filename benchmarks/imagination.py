"""Imagination throughput of a REM world model: POP versus token-by-token.

What it measures
----------------
Imagined env-steps per second = batch size / median wall time of one batched
``REMModel.imagine_step`` (``time.perf_counter``; on CUDA the device is synchronised before
the clock is read). Every cell of the grid

* batch size (``--batch-sizes``, default ``1 16 64 256``),
* path: ``pop`` (REM's Parallel Observation Prediction, one pass of 2K+1 tokens per step),
  ``int8`` (the same POP model with int8 RetNet layers, :func:`rem_env.quantization.
  quantize_model`; CPU only), ``bf16`` (the same POP model under ``torch.autocast`` with
  bfloat16, for GPUs), ``compile`` and ``bf16-compile`` (the POP step, float32 or under bf16
  autocast, through ``torch.compile(fullgraph=True)``; ``--compile-mode``, by default
  ``reduce-overhead`` on CUDA, which replays CUDA graphs, and ``default`` on CPU; at least 3
  warm-up steps, which compile) or ``token`` (the paper's "no POP" ablation,
  ``WorldModelConfig(pop=False)``, K sequential passes per step) at the same model sizes,
* mode: ``tokens`` (``imagine_step`` only) or ``rgb`` (``imagine_step``, then
  ``model.decode(step.obs_tokens)`` and conversion to uint8 HWC numpy frames on the host, the
  cost a user pays for an RGB observation); ``--modes`` picks them,

starts from the model's start contexts repeated to the batch size, runs ``--warmup`` untimed
steps, then up to ``--steps`` timed steps. The dream keeps stepping forward (positions grow),
as a real dream does. A slow cell stops after ``--max-seconds-per-cell`` of timed steps once it
has at least 3 of them. Models are in eval mode with random weights, float32, under
``torch.inference_mode()``. Torch keeps its default thread count unless ``--threads`` sets one;
each step runs under the dream env's thread policy (``--step-threads``, by default ``auto``:
:class:`rem_env.threads.StepThreads`, as ``DreamVectorEnv`` does; ``off`` runs the bare step).

``--neighbour`` measures the grid beside one busy process (``while True: pass``, started and
stopped by the script): ``--neighbour`` alone measures every cell quiet, then beside the
neighbour, and adds a table of both with the slowdown; ``--neighbour on`` measures beside it
only. Leave the process unpinned (no ``taskset``) to see what a user sees.

``--profile-steps N`` runs N more steps of each cell at the smallest and the largest batch size
under ``torch.profiler`` and prints the operators taking the most self time (on CUDA: GPU time;
the calls column counts the kernel launches) to stderr: where a step's time goes.

The header also gives an analytic count of the matmul FLOPs of one POP env-step (see
:func:`pop_step_flops`) and this machine's measured float32 matmul rate (the best ``torch.mm``
of two square matrices of 512, 1024 or 2048 rows, before any neighbour starts); the table gives
the GFLOP/s the POP tokens cells imply and their share of that rate.

How to run
----------
From the repository root, with the package installed (``pip install -e .``)::

    python benchmarks/imagination.py                                # paper sizes, CPU
    python benchmarks/imagination.py --max-seconds-per-cell 20      # cap slow cells
    python benchmarks/imagination.py --device cuda --steps 50
    python benchmarks/imagination.py --device cuda --paths pop bf16 bf16-compile  # CUDA graphs
    python benchmarks/imagination.py --batch-sizes 1 16 64 --modes tokens --neighbour
    python benchmarks/imagination.py --preset tiny --batch-sizes 1 2 --steps 2
    python benchmarks/imagination.py --device cuda --batch-sizes 64 4096 --profile-steps 3

The markdown table goes to stdout, progress to stderr, and every measurement to ``--json``
(default ``benchmarks/results/imagination.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import platform
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from neighbour import busy_neighbour, matmul_gflops

from rem_env import REMConfig, REMModel
from rem_env.models.sampling import StepNoise
from rem_env.models.world_model import NUM_REWARD_CLASSES
from rem_env.quantization import quantize_model
from rem_env.state import ImaginationState
from rem_env.threads import StepThreads

PATHS = ("pop", "int8", "bf16", "compile", "bf16-compile", "token")
MODES = ("tokens", "rgb")
PATH_LABELS = {
    "pop": "POP",
    "int8": "POP int8",
    "bf16": "POP bf16",
    "compile": "POP compiled",
    "bf16-compile": "POP bf16 compiled",
    "token": "token-by-token",
}
EXTRA_PATHS = ("int8", "bf16", "compile", "bf16-compile")
"""Paths that share the POP model and get their own columns beside it."""
COMPILE_WARMUP = 3
"""Least warm-up steps of a compiled path: the first call compiles, the second compiles again
with the (moving) position as a symbol, the third records CUDA graphs in reduce-overhead mode."""
MIN_TIMED_STEPS = 3
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "imagination.json"
NEIGHBOUR_CHOICES = ("off", "on", "both")


@dataclasses.dataclass(frozen=True)
class Record:
    """One measured cell of the grid."""

    device: str
    preset: str
    batch_size: int
    path: str
    mode: str
    env_steps_per_s: float
    ms_per_step: float
    steps_timed: int
    neighbour: bool = False
    """Measured beside one busy process."""


# ------------------------------------------------------------------------------------ arguments


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parses and validates the command line."""
    parser = argparse.ArgumentParser(
        description="Imagined env-steps per second of a REM world model: POP vs token-by-token, "
        "tokens-only vs RGB observations.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--preset", choices=("paper", "tiny"), default="paper")
    parser.add_argument("--num-actions", type=int, default=4)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 64, 256])
    parser.add_argument(
        "--paths",
        nargs="+",
        choices=PATHS,
        default=None,
        help="paths to measure (default: pop, token and int8 on CPU, bf16 on CUDA; int8 runs "
        "on the CPU only, bf16 anywhere but is slow on CPUs without bfloat16 units; compile and "
        "bf16-compile only when asked for)",
    )
    parser.add_argument(
        "--compile-mode",
        default=None,
        help="torch.compile mode of the compile paths (default: reduce-overhead on CUDA, "
        "default on CPU)",
    )
    parser.add_argument(
        "--compile-backend",
        default="inductor",
        help="torch.compile backend of the compile paths (eager: a quick check of the capture)",
    )
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's)"
    )
    parser.add_argument(
        "--step-threads",
        default="auto",
        help="thread policy around each step, as DreamVectorEnv(threads=...): auto, a count, "
        "or off (the bare step on torch's threads)",
    )
    parser.add_argument(
        "--neighbour",
        nargs="?",
        const="both",
        default="off",
        choices=NEIGHBOUR_CHOICES,
        help="measure beside one busy process the script starts and stops: 'both' (the value "
        "of a bare --neighbour) measures quiet, then busy; 'on' busy only",
    )
    parser.add_argument("--steps", type=int, default=10, help="timed steps per cell (at most)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    parser.add_argument(
        "--max-seconds-per-cell",
        type=float,
        default=30.0,
        help=f"stop timing a cell after this many seconds once it has {MIN_TIMED_STEPS} steps",
    )
    parser.add_argument(
        "--profile-steps",
        type=int,
        default=0,
        help="after timing each cell at the smallest and the largest batch size, run this many "
        "more steps under torch.profiler and print its operators, most self time first (on "
        "CUDA: GPU time), to stderr (0: no profile)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write results")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda was requested but torch.cuda.is_available() is False")
    if any(b < 1 for b in args.batch_sizes):
        parser.error(f"batch sizes must be positive, got {args.batch_sizes}")
    if args.steps < 1 or args.warmup < 0 or args.num_actions < 1:
        parser.error("need --steps >= 1, --warmup >= 0 and --num-actions >= 1")
    if args.max_seconds_per_cell <= 0:
        parser.error("--max-seconds-per-cell must be positive")
    if args.profile_steps < 0:
        parser.error("--profile-steps must be >= 0")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be >= 1")
    if args.step_threads not in ("auto", "off"):
        try:
            args.step_threads = int(args.step_threads)
        except ValueError:
            args.step_threads = 0
        if args.step_threads < 1:
            parser.error("--step-threads must be auto, off or a positive int")
    if args.paths is None:
        skip = "int8" if args.device == "cuda" else "bf16"
        args.paths = [p for p in PATHS if p != skip and "compile" not in p]
    if args.compile_mode is None:
        args.compile_mode = "reduce-overhead" if args.device == "cuda" else "default"
    if "int8" in args.paths and args.device == "cuda":
        parser.error("the int8 path runs on the CPU only")
    if "pop" not in args.paths:
        args.paths.insert(0, "pop")  # the table's reference column
    return args


# ---------------------------------------------------------------------------------------- model


def build_config(preset: str, num_actions: int, path: str) -> REMConfig:
    """The preset's config; ``path="token"`` switches POP off at the same sizes (``"int8"`` is
    the POP config, quantized after it is built)."""
    config = REMConfig.preset(preset, num_actions=num_actions)
    if path == "token":
        world_model = dataclasses.replace(config.world_model, pop=False)
        config = dataclasses.replace(config, world_model=world_model)
    return config


def build_model(config: REMConfig, device: torch.device, seed: int) -> REMModel:
    """A randomly initialised float32 model in eval mode on ``device``."""
    torch.manual_seed(seed)
    return REMModel(config).to(device=device, dtype=torch.float32).eval()


def pop_step_flops(config: REMConfig, batch_size: int = 1) -> float:
    """Analytic matmul FLOPs of one POP env-step (per dream, in a batch of ``batch_size``).

    Counts the products the step computes (2 FLOPs per multiply-add). A POP step pushes
    ``R = K + 1`` real tokens and ``P = K`` prediction tokens, ``T = R + P`` in all, through L
    layers. Every layer but the last projects q, k, v, g and the output of all T rows
    (``5 * 2 E^2`` each) and runs the feed-forward block on them (``2 * 2 E F``); in layer 0
    the prediction tokens' q, k, v, g are the same for every dream and are projected once per
    batch. The last layer computes k and v of all T rows but q, g, the output and the
    feed-forward block only of the ``Q = K + 1`` rows whose outputs are used (the action token
    and the prediction tokens). Retention per head and layer: ``q k^T`` and ``(.) v`` over
    (queries x T) pairs, the read of the previous state (queries x d^2) and the new state from
    the R real tokens (``R d^2``). Heads: the observation head (E -> E -> V) on the K
    prediction tokens, the reward and end heads on the action token. Elementwise work (norms,
    rotations, softmax, sampling) is not counted.
    """
    wm, tok = config.world_model, config.tokenizer
    k, e, f, v = tok.tokens_per_frame, wm.embed_dim, wm.ffn_dim, tok.vocab_size
    heads, d = wm.num_heads, wm.head_dim
    real, tail = k + 1, k
    rows, queries = real + tail, k + 1

    def retention(q: int) -> float:
        return heads * 2 * (2 * q * rows * d + q * d * d + real * d * d)

    layer = rows * 2 * (5 * e * e + 2 * e * f) + retention(rows)
    first_layer = layer - tail * 2 * 4 * e * e * (1 - 1 / batch_size)
    last_layer = 2 * (2 * e * e * rows + queries * (3 * e * e + 2 * e * f)) + retention(queries)
    layers = first_layer + (wm.num_layers - 2) * layer + last_layer
    obs_head = k * 2 * (e * e + e * v)
    small_heads = 2 * (e * e + e * NUM_REWARD_CLASSES) + 2 * (e * e + e * 2)
    return layers + obs_head + small_heads


# ------------------------------------------------------------------------------------- timing


def synchronize(device: torch.device) -> None:
    """Waits for queued device work (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def to_host_rgb(frames: torch.Tensor) -> Any:
    """(B, 3, H, W) frames in [0, 1] -> (B, H, W, 3) uint8 numpy array on the host."""
    return (frames.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).cpu().numpy()


def make_step(
    model: REMModel,
    batch_size: int,
    mode: str,
    device: torch.device,
    seed: int,
    autocast: torch.dtype | None = None,
    compile_options: dict[str, Any] | None = None,
    threads: StepThreads | None = None,
) -> Callable[[], None]:
    """A closure that advances one batched dream by one step each call (under
    ``torch.autocast`` with dtype ``autocast`` when given; through
    ``torch.compile(fullgraph=True, **compile_options)`` when those are given; on the threads
    that ``threads`` chooses, as the dream env runs its steps, when given)."""
    n = model.num_start_contexts
    idx = torch.arange(batch_size, device=device) % n
    state = model.start_state(model.start_tokens[idx], model.start_actions[idx])
    generator = torch.Generator(device=device).manual_seed(seed)
    num_actions = model.num_actions
    imagine_step = model.imagine_step
    k = model.world_model.tokens_per_obs
    if compile_options is not None:
        imagine_step = torch.compile(imagine_step, fullgraph=True, **compile_options)

    def step() -> None:
        nonlocal state
        actions = torch.randint(num_actions, (batch_size,), device=device, generator=generator)
        # The noise is drawn outside the step, as the dream env does, so a compiled step holds
        # no random generator (the same numbers StepNoise.draw would take).
        uniforms = torch.rand(batch_size, k + 2, device=device, generator=generator)  # (B, K+2)
        noise = StepNoise(uniforms[:, :k], uniforms[:, k], uniforms[:, k + 1])
        with (
            threads.running() if threads is not None else contextlib.nullcontext(),
            torch.autocast(device.type, dtype=autocast, enabled=autocast is not None),
        ):
            if compile_options is not None:
                # CUDA graphs (reduce-overhead) replay into memory they own: a new step begins
                # here, and the state that the next replay reads is copied out of that memory
                # (without both, the second replay overwrote the state it was reading).
                torch.compiler.cudagraph_mark_step_begin()
            out, state = imagine_step(state, actions, noise=noise)
            if compile_options is not None:
                state = _owned_copy(state)
            if mode == "rgb":
                to_host_rgb(model.decode(out.obs_tokens).float())

    return step


def _owned_copy(state: ImaginationState) -> ImaginationState:
    """The state's tensors copied into memory of their own (out of a CUDA graph's pool)."""
    previous, recent = state.previous_obs_tokens, state.recent_obs_tokens
    return dataclasses.replace(
        state,
        retention=tuple(r.clone() for r in state.retention),
        obs_tokens=state.obs_tokens.clone(),
        previous_obs_tokens=None if previous is None else previous.clone(),
        recent_obs_tokens=None if recent is None else recent.clone(),
    )


def time_cell(
    step: Callable[[], None],
    device: torch.device,
    warmup: int,
    max_steps: int,
    max_seconds: float,
) -> list[float]:
    """Runs ``warmup`` untimed steps, then returns the wall seconds of each timed step."""
    for _ in range(warmup):
        step()
    synchronize(device)
    min_steps = min(MIN_TIMED_STEPS, max_steps)
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < max_steps:
        begin = time.perf_counter()
        step()
        synchronize(device)
        end = time.perf_counter()
        times.append(end - begin)
        if len(times) >= min_steps and end - started >= max_seconds:
            break
    return times


PROFILE_ROWS = 15
"""Operators listed per profiled cell."""


def profile_cell(step: Callable[[], None], device: torch.device, steps: int) -> str:
    """``steps`` more steps under ``torch.profiler``: a table of the operators taking the most
    self time (on CUDA the GPU's, with the kernel launches counted in its calls column)."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profiler:
        for _ in range(steps):
            step()
        synchronize(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return profiler.key_averages().table(sort_by=key, row_limit=PROFILE_ROWS)


def measure(
    models: dict[str, REMModel],
    args: argparse.Namespace,
    device: torch.device,
    neighbour: bool = False,
) -> list[Record]:
    """Measures every (batch size, path, mode) cell (``neighbour``: marks the records as
    measured beside the busy process, which the caller runs)."""
    records = []
    for batch_size in args.batch_sizes:
        for path in args.paths:
            for mode in args.modes:
                autocast = torch.bfloat16 if path.startswith("bf16") else None
                compiled = path.endswith("compile")
                options = (
                    {"mode": args.compile_mode, "backend": args.compile_backend}
                    if compiled
                    else None
                )
                threads = None if args.step_threads == "off" else StepThreads(args.step_threads)
                step = make_step(
                    models[path], batch_size, mode, device, args.seed, autocast, options, threads
                )
                warmup = max(args.warmup, COMPILE_WARMUP) if compiled else args.warmup
                times = time_cell(step, device, warmup, args.steps, args.max_seconds_per_cell)
                median = statistics.median(times)
                record = Record(
                    device=str(device),
                    preset=args.preset,
                    batch_size=batch_size,
                    path=path,
                    mode=mode,
                    env_steps_per_s=batch_size / median,
                    ms_per_step=median * 1e3,
                    steps_timed=len(times),
                    neighbour=neighbour,
                )
                print(
                    f"{'busy ' if neighbour else ''}"
                    f"B={batch_size:<4} {PATH_LABELS[path]:<17} {mode:<6} "
                    f"{record.env_steps_per_s:10.1f} env-steps/s  {record.ms_per_step:9.2f} "
                    f"ms/step  ({record.steps_timed} steps"
                    + (
                        f"; {threads.count()} threads, others {threads.others or 0:.2f} cores, "
                        f"waited {threads.waiting or 0:.2f})"
                        if threads is not None
                        else ")"
                    ),
                    file=sys.stderr,
                    flush=True,
                )
                records.append(record)
                profiled = batch_size in (min(args.batch_sizes), max(args.batch_sizes))
                if args.profile_steps and profiled:
                    table = profile_cell(step, device, args.profile_steps)
                    print(
                        f"profile of {args.profile_steps} steps, B={batch_size} "
                        f"{PATH_LABELS[path]} {mode}:\n{table}",
                        file=sys.stderr,
                        flush=True,
                    )
    return records


# ------------------------------------------------------------------------------------- output


CPUINFO = Path("/proc/cpuinfo")


def cpu_model(cpuinfo: Path = CPUINFO) -> str | None:
    """The CPU model name from /proc/cpuinfo with its family and model numbers, when there is
    one (VMs often report a bare "AMD EPYC": the numbers tell CPU generations apart)."""
    if not cpuinfo.is_file():
        return None
    fields: dict[str, str] = {}
    for line in cpuinfo.read_text(errors="replace").splitlines():
        if not line.strip():
            break  # the first processor's block is enough
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name")
    if name is None:
        return None
    numbers = [f"{key} {fields[key]}" for key in ("cpu family", "model") if key in fields]
    return f"{name} ({', '.join(numbers)})" if numbers else name


def cpu_int8_features(cpuinfo: Path = CPUINFO) -> list[str]:
    """The CPU's vector features that decide int8 and float32 matmul speed (from /proc/cpuinfo
    flags): AVX2, AVX-512 and the VNNI / AMX int8 dot-product instructions."""
    if not cpuinfo.is_file():
        return []
    for line in cpuinfo.read_text(errors="replace").splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            wanted = ("avx2", "avx512f", "avx_vnni", "avx512_vnni", "amx_int8")
            return [flag for flag in wanted if flag in flags]
    return []


def git_revision() -> str | None:
    """``git describe --always --dirty`` of the checkout this script lives in, if any."""
    try:
        result = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def device_name(device: torch.device) -> str:
    """A readable name of the device being measured."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model() or platform.processor() or "unknown CPU"


def metadata(
    args: argparse.Namespace, device: torch.device, flops: float, matmul: float | None = None
) -> dict[str, Any]:
    """Context of a run, stored next to the measurements."""
    return {
        "device": str(device),
        "device_name": device_name(device),
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "cpu_features": cpu_int8_features(),
        "git_revision": git_revision(),
        "preset": args.preset,
        "num_actions": args.num_actions,
        "warmup": args.warmup,
        "max_steps": args.steps,
        "max_seconds_per_cell": args.max_seconds_per_cell,
        "seed": args.seed,
        "pop_flops_per_env_step": flops,
        "matmul_gflops": matmul,
        "neighbour": args.neighbour,
        "step_threads": args.step_threads,
        "paths": list(args.paths),
        "compile_mode": args.compile_mode,
        "compile_backend": args.compile_backend,
    }


def header(meta: dict[str, Any]) -> str:
    """One line describing the run."""
    return (
        f"device: {meta['device']} ({meta['device_name']}) | torch {meta['torch_version']} | "
        f"threads: {meta['threads']} | preset: {meta['preset']} | "
        f"POP step FLOPs (matmuls, analytic): {meta['pop_flops_per_env_step'] / 1e9:.3f} "
        "GFLOP per env-step at B=1"
        + (
            f" | float32 matmul rate (best torch.mm of squares): {meta['matmul_gflops']:.1f} "
            "GFLOP/s"
            if meta.get("matmul_gflops")
            else ""
        )
        + (f" | CPU features: {' '.join(meta['cpu_features'])}" if meta.get("cpu_features") else "")
    )


def _cell(record: Record) -> str:
    return f"{record.env_steps_per_s:,.1f} ({record.ms_per_step:,.2f} ms)"


def _ratio(pop: Record, token: Record) -> str:
    return f"{pop.env_steps_per_s / token.env_steps_per_s:.2f}x"


def markdown_table(
    records: Sequence[Record],
    flops: float | Mapping[int, float],
    matmul: float | None = None,
) -> str:
    """The results as a markdown table, one row per batch size.

    ``flops``: POP FLOPs per env-step (one number, or one per batch size), for the GFLOP/s
    column; ``matmul``: the machine's matmul GFLOP/s, for the column of its share.
    """
    by_key = {(r.batch_size, r.path, r.mode): r for r in records}
    paths = set(r.path for r in records)
    modes = [m for m in MODES if any(r.mode == m for r in records)]
    token = "token" in paths
    columns = ["batch size"]
    for mode in modes:
        first = "POP tokens: env-steps/s (ms/step)" if mode == "tokens" else f"POP {mode}"
        columns += [first, f"token-by-token {mode}", f"POP/token ({mode})"] if token else [first]
    if "tokens" in modes:
        columns.append("POP tokens GFLOP/s")
        if matmul:
            columns.append("share of matmul rate")
    for extra in EXTRA_PATHS:
        if extra in paths:
            columns += [f"{PATH_LABELS[extra]} {mode}" for mode in modes]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for batch_size in dict.fromkeys(r.batch_size for r in records):
        row = []
        for mode in modes:
            pop = by_key[batch_size, "pop", mode]
            row.append(_cell(pop))
            if token:
                tok = by_key[batch_size, "token", mode]
                row += [_cell(tok), _ratio(pop, tok)]
        if "tokens" in modes:
            per_step = flops if isinstance(flops, (int, float)) else flops[batch_size]
            rate = by_key[batch_size, "pop", "tokens"].env_steps_per_s * per_step / 1e9
            row.append(f"{rate:.1f}")
            if matmul:
                row.append(f"{rate / matmul:.0%}")
        for extra in EXTRA_PATHS:
            if extra in paths:
                row += [_cell(by_key[batch_size, extra, mode]) for mode in modes]
        lines.append("| " + " | ".join([str(batch_size), *row]) + " |")
    return "\n".join(lines)


def neighbour_table(records: Sequence[Record]) -> str:
    """Env-steps/s of every cell measured both quiet and beside the busy neighbour, and how many
    times slower the busy one was."""
    quiet = {(r.batch_size, r.path, r.mode): r for r in records if not r.neighbour}
    busy = {(r.batch_size, r.path, r.mode): r for r in records if r.neighbour}
    lines = [
        "| batch size | path | mode | quiet (env-steps/s) | busy neighbour (env-steps/s) "
        "| slowdown |",
        "|---|---|---|---|---|---|",
    ]
    for key, calm in quiet.items():
        if key in busy:
            loud = busy[key]
            lines.append(
                f"| {key[0]} | {PATH_LABELS[key[1]]} | {key[2]} | {calm.env_steps_per_s:,.1f} "
                f"| {loud.env_steps_per_s:,.1f} "
                f"| {calm.env_steps_per_s / loud.env_steps_per_s:.1f}x |"
            )
    return "\n".join(lines)


def write_json(path: Path, meta: dict[str, Any], records: Sequence[Record]) -> None:
    """Writes metadata and records to ``path``, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"metadata": meta, "records": [dataclasses.asdict(r) for r in records]}
    path.write_text(json.dumps(payload, indent=2) + "\n")


# --------------------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the benchmark; returns the exit status."""
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    models = {
        path: build_model(build_config(args.preset, args.num_actions, path), device, args.seed)
        for path in args.paths
        if path not in EXTRA_PATHS
    }
    if "int8" in args.paths:
        models["int8"] = quantize_model(models["pop"])
    for path in ("bf16", "compile", "bf16-compile"):
        if path in args.paths:  # the same model; make_step adds the autocast or the compile
            models[path] = models["pop"]
    config = models["pop"].config
    flops = {b: pop_step_flops(config, b) for b in args.batch_sizes}
    matmul = None
    if device.type == "cpu":  # measured quiet, before any neighbour starts
        matmul = matmul_gflops((512, 1024, 2048) if args.preset == "paper" else (64, 128))
    meta = metadata(args, device, pop_step_flops(config), matmul)
    meta["pop_flops_per_env_step_by_batch"] = flops
    print(header(meta), flush=True)
    conditions = {"off": [False], "on": [True], "both": [False, True]}[args.neighbour]
    records: list[Record] = []
    with torch.inference_mode(), warnings.catch_warnings():
        # The decay and rotation tables are lru_cache'd pure functions of sizes: tracing
        # through them inside a compiled step is exact, which dynamo warns about anyway.
        warnings.filterwarnings("ignore", message="Dynamo detected a call to a `functools.lru")
        for busy in conditions:
            with busy_neighbour(busy):
                records += measure(models, args, device, neighbour=busy)
    print()
    print(markdown_table([r for r in records if r.neighbour == conditions[0]], flops, matmul))
    if len(conditions) == 2:
        print()
        print(neighbour_table(records))
    write_json(args.json, meta, records)
    print(f"\nwrote {len(records)} records to {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
