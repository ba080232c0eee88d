"""Dream env steps/s (DreamVectorEnv) beside ale-py's real Breakout vector env, in the same run.

For every batch size N and obs type, steps a ``DreamVectorEnv`` (random weights, numpy output,
NEXT_STEP autoreset, uniformly random actions) and reports env-steps/s = N * steps / seconds.
The random model's end head is set to (almost) never end an episode, as a trained model's
rarely does (an untrained one ends about half of them every step, and the resets' context
passes would dominate); ``--untrained-ends`` keeps the untrained head.
For the same N, steps ``gym.make_vec("ALE/Breakout-v5", num_envs=N)`` (ale-py's
``AtariVectorEnv`` with its defaults: 84x84 grayscale, 4-frame stack, frameskip 4) the same way.
With ``--quantize none int8`` every dream cell is measured twice: float32, and with the
world model's RetNet layers in int8 (``DreamVectorEnv(quantize="int8")``, CPU only). With
``--autocast bf16`` it is also measured under bfloat16 autocast (``DreamVectorEnv(autocast=
"bf16")``, meant for GPUs).
``--neighbour`` measures every cell quiet, then beside one busy process (``while True: pass``,
started and stopped by the script), and adds a table of both with the slowdown (``--neighbour
on``: beside it only). ``--step-threads`` is the env's ``threads=`` (default ``auto``: fewer
threads beside busy neighbours; see :class:`rem_env.threads.StepThreads`).
Prints a markdown table and writes JSON (default ``benchmarks/results/dream_env.json``).

    python benchmarks/dream_env.py                                  # paper sizes, N in 1 16 64 256
    python benchmarks/dream_env.py --num-envs 1 16 64 --quantize none int8
    python benchmarks/dream_env.py --device cuda --num-envs 64 1024 4096 --autocast bf16
    python benchmarks/dream_env.py --num-envs 1 16 64 --obs-types tokens rgb --no-ale --neighbour
    python benchmarks/dream_env.py --preset tiny --num-envs 1 2 --steps 3 --no-ale   # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from neighbour import busy_neighbour

from rem_env import DreamVectorEnv, REMConfig, REMModel

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "dream_env.json"
OBS_TYPES = ("rgb", "tokens", "latent")


@dataclass(frozen=True)
class Record:
    """One measured cell."""

    env: str  # "dream" or "ale"
    num_envs: int
    obs_type: str
    steps_timed: int
    seconds: float
    env_steps_per_s: float
    ms_per_step: float
    device: str
    preset: str
    quantize: str = "none"
    autocast: str = "none"
    neighbour: bool = False


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=["paper", "tiny"], default="paper")
    parser.add_argument("--num-envs", type=int, nargs="+", default=[1, 16, 64, 256])
    parser.add_argument("--obs-types", nargs="+", choices=OBS_TYPES, default=list(OBS_TYPES))
    parser.add_argument("--steps", type=int, default=200, help="most timed steps per cell")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per cell")
    parser.add_argument(
        "--max-seconds-per-cell", type=float, default=10.0, help="stop a cell after this long"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument(
        "--step-threads",
        default=None,
        help="DreamVectorEnv(threads=...): auto (fewer beside busy neighbours) or a count "
        "(default: the env's default, auto)",
    )
    parser.add_argument(
        "--neighbour",
        nargs="?",
        const="both",
        default="off",
        choices=("off", "on", "both"),
        help="measure beside one busy process the script starts and stops: 'both' (the value "
        "of a bare --neighbour) measures quiet, then busy; 'on' busy only",
    )
    parser.add_argument("--no-ale", action="store_true", help="skip the ale-py Breakout baseline")
    parser.add_argument(
        "--untrained-ends",
        action="store_true",
        help="keep the random end head (about half the dreams end, and reset, every step)",
    )
    parser.add_argument(
        "--quantize",
        nargs="+",
        choices=("none", "int8"),
        default=["none"],
        help="dream with float32 weights (none) and/or int8 RetNet layers (CPU only)",
    )
    parser.add_argument(
        "--autocast",
        nargs="+",
        choices=("none", "bf16"),
        default=["none"],
        help="also dream float32 weights under bfloat16 autocast (bf16; meant for GPUs)",
    )
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or min(args.num_envs) < 1:
        parser.error("--steps and --num-envs must be >= 1 and --warmup >= 0")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device} requested but CUDA is not available")
    if "int8" in args.quantize and args.device != "cpu":
        parser.error("--quantize int8 runs on the CPU only")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be >= 1")
    if args.step_threads not in (None, "auto"):
        try:
            args.step_threads = int(args.step_threads)
        except ValueError:
            args.step_threads = 0
        if args.step_threads < 1:
            parser.error("--step-threads must be auto or a positive int")
    return args


def never_end(model: REMModel) -> None:
    """Sets the end head's last layer to give P(end) = sigmoid(-40), about 4e-18, always."""
    last = model.world_model.head_end[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([20.0, -20.0]))


def time_steps(step, warmup: int, steps: int, max_seconds: float, sync) -> tuple[int, float]:
    """Runs ``warmup`` then up to ``steps`` calls of ``step`` (at most ``max_seconds``)."""
    for _ in range(warmup):
        step()
    sync()
    done, start = 0, time.perf_counter()
    while done < steps:
        step()
        done += 1
        if time.perf_counter() - start > max_seconds:
            break
    sync()
    return done, time.perf_counter() - start


def variants(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The (quantize, autocast) pairs to measure, float32 first."""
    pairs = [(q, "none") for q in args.quantize]
    return pairs + [("none", a) for a in args.autocast if a != "none"]


def bench_dream(
    model: REMModel,
    n: int,
    obs_type: str,
    quantize: str,
    args: argparse.Namespace,
    autocast: str = "none",
    neighbour: bool = False,
) -> Record:
    env = DreamVectorEnv(
        model,
        n,
        obs_type=obs_type,
        device=args.device,
        quantize=None if quantize == "none" else quantize,
        autocast=None if autocast == "none" else autocast,
        **({} if args.step_threads is None else {"threads": args.step_threads}),
    )
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    actions = rng.integers(0, model.num_actions, (1024, n))
    counter = iter(range(10**12))

    def step() -> None:
        env.step(actions[next(counter) % len(actions)])

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    done, seconds = time_steps(step, args.warmup, args.steps, args.max_seconds_per_cell, sync)
    env.close()
    return _record("dream", n, obs_type, done, seconds, args, quantize, autocast, neighbour)


def bench_ale(n: int, args: argparse.Namespace, neighbour: bool = False) -> Record:
    import ale_py

    gym.register_envs(ale_py)
    env = gym.make_vec("ALE/Breakout-v5", num_envs=n)
    env.reset(seed=0)
    actions = np.random.default_rng(0).integers(0, env.single_action_space.n, (1024, n))
    counter = iter(range(10**12))

    def step() -> None:
        env.step(actions[next(counter) % len(actions)])

    done, seconds = time_steps(
        step, args.warmup, args.steps, args.max_seconds_per_cell, lambda: None
    )
    env.close()
    return _record("ale", n, "grayscale 84x84 x4", done, seconds, args, neighbour=neighbour)


def _record(
    env: str,
    n: int,
    obs: str,
    done: int,
    seconds: float,
    args,
    quantize: str = "none",
    autocast: str = "none",
    neighbour: bool = False,
) -> Record:
    return Record(
        env=env,
        num_envs=n,
        obs_type=obs,
        steps_timed=done,
        seconds=round(seconds, 4),
        env_steps_per_s=round(n * done / seconds, 2),
        ms_per_step=round(1000 * seconds / done, 3),
        device="cpu" if env == "ale" else args.device,
        preset=args.preset if env == "dream" else "-",
        quantize=quantize,
        autocast=autocast,
        neighbour=neighbour,
    )


def _variant_label(quantize: str, autocast: str) -> str:
    return "".join(f" {v}" for v in (quantize, autocast) if v != "none")


def table(
    records: list[Record],
    obs_types: list[str],
    num_envs: list[int],
    pairs: Sequence[tuple[str, str]] = (("none", "none"),),
) -> str:
    """Markdown table: one row per N, a column per (variant, obs type), then ALE's."""
    dream = {
        (r.num_envs, r.obs_type, r.quantize, r.autocast): r for r in records if r.env == "dream"
    }
    ale = {r.num_envs: r for r in records if r.env == "ale"}
    cols = [(o, q, a) for q, a in pairs for o in obs_types]
    head = "| N | " + " | ".join(
        f"dream {o}{_variant_label(q, a)} (env-steps/s)" for o, q, a in cols
    )
    head += " | ALE Breakout-v5 vector (env-steps/s) |"
    lines = [head, "|---" * (len(cols) + 2) + "|"]
    for n in num_envs:
        cells = [f"{dream[(n, o, q, a)].env_steps_per_s:,.0f}" for o, q, a in cols]
        cells.append(f"{ale[n].env_steps_per_s:,.0f}" if n in ale else "-")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def neighbour_table(records: list[Record]) -> str:
    """Env-steps/s of every cell measured quiet and beside the busy neighbour, and the
    slowdown."""
    busy = {_key(r): r for r in records if r.neighbour}
    lines = [
        "| env | N | obs | quiet (env-steps/s) | busy neighbour (env-steps/s) | slowdown |",
        "|---|---|---|---|---|---|",
    ]
    for calm in records:
        loud = busy.get(_key(calm))
        if calm.neighbour or loud is None:
            continue
        name = calm.env + _variant_label(calm.quantize, calm.autocast)
        lines.append(
            f"| {name} | {calm.num_envs} | {calm.obs_type} | {calm.env_steps_per_s:,.1f} "
            f"| {loud.env_steps_per_s:,.1f} | {calm.env_steps_per_s / loud.env_steps_per_s:.1f}x |"
        )
    return "\n".join(lines)


def _key(record: Record) -> tuple:
    return (record.env, record.num_envs, record.obs_type, record.quantize, record.autocast)


def measure(model: REMModel, args: argparse.Namespace, neighbour: bool) -> list[Record]:
    """Every cell of the grid (``neighbour`` marks them as measured beside the busy process,
    which the caller runs)."""
    records: list[Record] = []
    busy = "busy " if neighbour else ""
    for n in args.num_envs:
        for quantize, autocast in variants(args):
            for obs_type in args.obs_types:
                records.append(bench_dream(model, n, obs_type, quantize, args, autocast, neighbour))
                print(
                    f"{busy}dream N={n} "
                    f"{obs_type}{_variant_label(quantize, autocast) or ' float32'}: "
                    f"{records[-1].env_steps_per_s:,.0f} env-steps/s",
                    file=sys.stderr,
                )
        if not args.no_ale:
            records.append(bench_ale(n, args, neighbour))
            print(
                f"{busy}ale N={n}: {records[-1].env_steps_per_s:,.0f} env-steps/s",
                file=sys.stderr,
            )
    return records


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = REMModel(REMConfig.preset(args.preset, num_actions=4, game="Breakout"))
    if not args.untrained_ends:
        never_end(model)
    model.to(args.device).eval()
    conditions = {"off": [False], "on": [True], "both": [False, True]}[args.neighbour]
    records: list[Record] = []
    for neighbour in conditions:
        with busy_neighbour(neighbour):
            records += measure(model, args, neighbour)
    metadata = {
        "torch_version": torch.__version__,
        "gymnasium_version": gym.__version__,
        "threads": torch.get_num_threads(),
        "step_threads": args.step_threads,
        "neighbour": args.neighbour,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "device": args.device,
        "preset": args.preset,
        "untrained_ends": args.untrained_ends,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if argv is None else argv,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if not args.no_ale:
        import ale_py

        metadata["ale_py_version"] = ale_py.__version__
    print(
        f"preset: {args.preset}, device: {args.device}, threads: {torch.get_num_threads()}, "
        f"step threads: {args.step_threads}, torch {torch.__version__}"
    )
    first = [r for r in records if r.neighbour == conditions[0]]
    print(table(first, args.obs_types, args.num_envs, variants(args)))
    if len(conditions) == 2:
        print()
        print(neighbour_table(records))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    payload = {"metadata": metadata, "records": [asdict(r) for r in records]}
    args.json.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
