"""``rem-env``: look at dreams, play inside them, see what is installed, run the benchmarks.

Subcommands: ``dream`` (roll dreams, write a GIF/MP4, print episode returns), ``play`` (play a
dream with the keyboard), ``fidelity`` (dream the actions of real play and score the dream against
the real game), ``events`` (how often dreams and the real game end episodes and pay rewards
under random play), ``info`` (env ids, default models, versions, devices) and ``bench``
(the benchmark scripts of a source checkout). ``python -m rem_env`` is the same command.
"""

from __future__ import annotations

import argparse
import difflib
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import gymnasium as gym
import torch

from rem_env.actions import action_meanings
from rem_env.actor_critic_files import (
    ACTOR_CRITIC_CONFIG,
    ACTOR_CRITIC_WEIGHTS,
    actor_critic_file,
    load_actor_critic,
)
from rem_env.agents import (
    ActorCriticAgent,
    Agent,
    AgentError,
    RandomAgent,
    SB3Agent,
    roll_dream,
)
from rem_env.config import REMConfig
from rem_env.dream import AUTOCAST_DTYPES, DreamVectorEnv, check_device, check_temperature
from rem_env.events import DEFAULT_JITTER, check_policy, event_table, measure_event_rates
from rem_env.hub import ModelLoadError, NoDefaultModelError, resolve_default_model
from rem_env.model import REMModel
from rem_env.noise import MAX_SEED
from rem_env.quantization import QUANTIZATIONS, quantize_model
from rem_env.registration import ATARI_100K_GAMES, env_id, resolve_model
from rem_env.video import VideoError, check_video_path, tile_frames, write_video

__all__ = ["BENCHMARKS", "CLIError", "build_parser", "folder_write_problem", "main"]

BENCHMARKS = ("imagination", "dream_env")
UNTRAINED = "UNTRAINED MODEL: random weights, the frames are noise"
INTERRUPTED = 130
"""Exit status after Ctrl-C (128 + SIGINT), as shells report it."""
_ENV_ID = re.compile(r"^(?:rem_env:)?REM-(\w+)-v0$")


class CLIError(ValueError):
    """A user error: printed on stderr, exit status 2."""


# ------------------------------------------------------------------------------------ helpers


def parse_game(name: str) -> str:
    """The game of a ``REM-<Game>-v0`` id (a bare game name is accepted too)."""
    match = _ENV_ID.match(name)
    game = match.group(1) if match else name
    if game in ATARI_100K_GAMES:
        return game
    ids = [env_id(g) for g in ATARI_100K_GAMES]
    close = difflib.get_close_matches(name, ids + list(ATARI_100K_GAMES), n=3)
    hint = f" Did you mean {' or '.join(close)}?" if close else ""
    raise CLIError(f"unknown env id {name!r}.{hint} See `rem-env info` for the registered ids.")


def load_dream_model(args: argparse.Namespace, game: str) -> tuple[REMModel, bool]:
    """The model to dream with, and whether it is an untrained one."""
    if args.random_weights is not None:
        if args.model is not None:
            raise CLIError("pass either --model or --random-weights, not both")
        torch.manual_seed(args.seed if args.seed is not None else 0)
        config = REMConfig.preset(args.random_weights, ATARI_100K_GAMES[game], game=game)
        print(f"warning: {UNTRAINED} ({args.random_weights} preset)", file=sys.stderr)
        return REMModel(config).eval(), True
    try:
        return resolve_model(game, args.model, args.revision), False
    except gym.error.Error as err:
        hint = ""
        if args.model is None:
            hint = " (or try the CLI with --random-weights tiny to see untrained noise)"
        raise CLIError(f"{err}{hint}") from err


def pick_device(name: str) -> str:
    """``--device``: ``auto`` is cuda if there is a GPU, else cpu; a named device must exist."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        check_device(name)
    except ValueError as err:
        raise CLIError(f"--device: {err}") from err
    return name


def folder_write_problem(folder: str | os.PathLike[str]) -> str | None:
    """Why new files cannot be made in ``folder`` (created with its parents if missing), or None.

    Checked by making (and removing) a hidden folder in the nearest existing one: this sees
    permissions, read-only file systems and files in the way, before any long work is done.

    Example:
        >>> folder_write_problem(tempfile.gettempdir()) is None
        True
    """
    existing = Path(folder).expanduser().absolute()
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    try:
        probe = tempfile.mkdtemp(prefix=".rem-write-check-", dir=existing)
    except OSError as err:
        return f"cannot write in {existing} ({err.strerror or err})"
    os.rmdir(probe)
    return None


def check_positive(args: argparse.Namespace, *names: str) -> None:
    """Options that must be positive integers when given (``fps``: ``--fps``)."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            option = "--" + name.replace("_", "-")
            raise CLIError(f"{option} must be a positive integer, got {value}")


def check_seed_and_temperature(args: argparse.Namespace, num_envs: int = 1) -> None:
    """``--seed`` (env i dreams with seed + i), ``--temperature`` and ``--event-temperature``,
    checked before any work."""
    if args.seed is not None and not 0 <= args.seed <= MAX_SEED - (num_envs - 1):
        top = "2**63 - 1" if num_envs == 1 else f"2**63 - {num_envs}"
        raise CLIError(
            f"--seed must be in [0, {top}]"
            + (" (env i dreams with seed + i)" if num_envs > 1 else "")
            + f", got {args.seed}"
        )
    for flag, value in (
        ("--temperature", args.temperature),
        ("--event-temperature", args.event_temperature),
    ):
        if value is not None:
            try:
                check_temperature(flag, value)
            except ValueError as err:
                raise CLIError(str(err)) from err


def load_scoring_model(args: argparse.Namespace, game: str, device: str) -> REMModel:
    """The model of ``--model`` (or ``--random-weights``, with its warning) on ``device``,
    with ``--quantize`` applied: what ``fidelity`` and ``events`` score against the game."""
    model, _ = load_dream_model(args, game)
    model = model.to(device)
    return model if args.quantize is None else quantize_model(model, args.quantize)


def make_dream_env(model: REMModel, num_envs: int, **kwargs: object) -> DreamVectorEnv:
    """A DreamVectorEnv; its constructor's refusals (e.g. too many envs) become CLIErrors."""
    try:
        return DreamVectorEnv(model, num_envs, **kwargs)  # type: ignore[arg-type]
    except ValueError as err:
        raise CLIError(str(err)) from err


def _add_model_args(parser: argparse.ArgumentParser, seed_default: str) -> None:
    parser.add_argument("env_id", metavar="ENV_ID", help="a registered id, e.g. REM-Breakout-v0")
    parser.add_argument(
        "--model",
        metavar="FOLDER|REPO_ID",
        help="model folder or Hub repo id (default: the game's default model, see `rem-env info`)",
    )
    parser.add_argument("--revision", help="Hub branch, tag or commit of --model")
    parser.add_argument(
        "--random-weights",
        choices=("tiny", "paper"),
        help="dream with an UNTRAINED model of this preset instead (random noise, for trying "
        "the tool before any trained weights exist)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help=f"seed of the dreams (env i: s+i) (default: {seed_default})",
    )
    parser.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:1... (default: auto, cuda if any)"
    )
    parser.add_argument(
        "--temperature",
        type=float,
        default=1.0,
        help="sampling temperature, 0: argmax (default: 1)",
    )
    parser.add_argument(
        "--event-temperature",
        type=float,
        default=None,
        help="sampling temperature of the dream's rewards and ends (default: --temperature); "
        "--temperature 0 --event-temperature 1 dreams the likeliest frames yet rewards and "
        "ends at their predicted rates",
    )
    parser.add_argument(
        "--quantize",
        choices=QUANTIZATIONS,
        default=None,
        help="dream with int8 weights in the world model's layers (CPU only: faster, close to "
        "but not equal to the float dreams)",
    )
    parser.add_argument(
        "--autocast",
        choices=tuple(AUTOCAST_DTYPES),
        default=None,
        help="run the model under bfloat16 autocast (for GPUs; most CPUs run it far slower)",
    )


def dream_device(args: argparse.Namespace) -> str:
    """The device of ``--device``; with ``--quantize``, the CPU (the only place int8 runs)."""
    if args.quantize is not None and args.autocast is not None:
        raise CLIError("choose --quantize or --autocast, not both")
    if args.quantize is None:
        return pick_device(args.device)
    if args.device not in ("auto", "cpu"):
        raise CLIError(f"--quantize {args.quantize} runs on the CPU only; drop --device")
    return "cpu"


# ------------------------------------------------------------------------------------ dream


def make_agent(args: argparse.Namespace, model: REMModel, device: str) -> Agent:
    """The agent of ``--agent``: random, an SB3 policy file, or the model's actor-critic."""
    if args.algo is not None and args.agent in ("random", "actor-critic"):
        raise CLIError("--algo applies to an SB3 policy file (--agent PATH.zip)")
    if args.agent == "random":
        return RandomAgent(model.num_actions, args.seed)
    if args.agent == "actor-critic":
        source = args.model
        if source is None and args.random_weights is None and model.config.game:
            try:  # the game's default model: a bundled folder ships its actor-critic
                source = resolve_default_model(model.config.game)
            except NoDefaultModelError:
                source = None
        folder = Path(source) if source and Path(source).is_dir() else None
        if actor_critic_file(folder) is None:
            where = "this model" if args.model is None else repr(args.model)
            raise AgentError(
                f"{where} ships no actor-critic ({ACTOR_CRITIC_WEIGHTS} and "
                f"{ACTOR_CRITIC_CONFIG} in a local model folder, as `rem-train` exports them; "
                "for a Hub model, download it with `hf download REPO --local-dir DIR` and pass "
                "--model DIR). Use --agent random or --agent PATH.zip (an SB3 policy)"
            )
        try:
            actor_critic = load_actor_critic(folder, device)
        except ValueError as err:
            raise AgentError(str(err)) from err
        if actor_critic.num_actions != model.num_actions:
            raise AgentError(
                f"the shipped actor-critic has {actor_critic.num_actions} actions, the model "
                f"{model.num_actions}"
            )
        return ActorCriticAgent(actor_critic, args.num_envs, seed=args.seed)
    return SB3Agent(args.agent, DreamVectorEnv(model, 1, device=device), args.algo, device=device)


def cmd_dream(args: argparse.Namespace) -> int:
    game = parse_game(args.env_id)
    out = check_video_path(args.out)
    check_positive(args, "steps", "num_envs", "scale", "fps")
    check_seed_and_temperature(args, args.num_envs)
    if out.is_dir():
        raise CLIError(f"--out {out} is a folder; name the video file, e.g. {out / 'dream.gif'}")
    problem = folder_write_problem(out.parent)
    if problem is not None:
        raise CLIError(f"cannot write --out {out}: {problem}")
    device = dream_device(args)
    model, untrained = load_dream_model(args, game)
    agent = make_agent(args, model, device)
    envs = make_dream_env(
        model,
        args.num_envs,
        obs_type=agent.obs_type,
        device=device,
        quantize=args.quantize,
        autocast=args.autocast,
        temperature=args.temperature,
        event_temperature=args.event_temperature,
        render_mode="rgb_array",
    )
    with torch.inference_mode():
        rollout = roll_dream(envs, agent, args.steps, args.seed)
    images = (tile_frames(frames, args.scale) for frames in rollout.frames)
    write_video(out, images, fps=args.fps, caption=UNTRAINED if untrained else None)
    print(f"wrote {len(rollout.frames)} frames of {args.num_envs} dream(s) to {out}")
    for i, (done, running) in enumerate(
        zip(rollout.episode_returns, rollout.unfinished_returns, strict=True)
    ):
        finished = ", ".join(f"{r:+g}" for r in done) or "none"
        print(f"env {i}: episode returns {finished}; unfinished episode {running:+g}")
    return 0


# --------------------------------------------------------------------------------- fidelity


def cmd_fidelity(args: argparse.Namespace) -> int:
    from rem_env.fidelity import run_fidelity  # plays the real game (ale-py)

    game = parse_game(args.env_id)
    if min(args.games, args.horizon, args.stride, args.max_steps) < 1:
        raise CLIError("--games, --horizon, --stride and --max-steps must be positive")
    if min(args.min_rewards, args.min_ends) < 0:
        raise CLIError("--min-rewards and --min-ends must be >= 0")
    if args.context is not None and args.context < 1:
        raise CLIError("--context must be positive")
    check_seed_and_temperature(args)
    if args.seed is None:  # a report is reproducible: the player's choices and the dreams
        args.seed = 0
    problem = folder_write_problem(args.out)
    if problem is not None:
        raise CLIError(f"cannot write --out {args.out}: {problem}")
    device = dream_device(args)
    model = load_scoring_model(args, game, device)
    shortest = model.config.world_model.context_length
    if args.context is not None and args.context < shortest:
        raise CLIError(f"--context must be at least the model's context_length ({shortest})")
    args.num_envs = 1  # the agent plays one real game at a time
    if args.agent == "scripted":  # plays the real game from its RAM; never acts in a dream
        from rem_env.probes import SCRIPTED_PLAYERS

        if game not in SCRIPTED_PLAYERS:
            raise CLIError(
                f"no scripted player for {game} (there is one for "
                f"{', '.join(sorted(SCRIPTED_PLAYERS))}); use --agent random, actor-critic or "
                "PATH.zip"
            )
        agent: Agent = SCRIPTED_PLAYERS[game](epsilon=0.05, seed=args.seed)
    else:
        agent = make_agent(args, model, device)
    report = run_fidelity(
        model,
        game,
        agent,
        args.out,
        games=args.games,
        horizon=args.horizon,
        stride=args.stride,
        seed=args.seed,
        max_steps=args.max_steps,
        temperature=args.temperature,
        event_temperature=args.event_temperature,
        autocast=AUTOCAST_DTYPES[args.autocast] if args.autocast else None,
        min_rewards=args.min_rewards,
        min_ends=args.min_ends,
        context=args.context,
    )
    print(report.summary_table(tuple(s for s in (1, 5, 10) if s <= args.horizon)))
    print(f"wrote fidelity.json, fidelity_curve.png and fidelity_strip.png to {args.out}")
    return 0


# ----------------------------------------------------------------------------------- events


def cmd_events(args: argparse.Namespace) -> int:
    game = parse_game(args.env_id)
    check_positive(args, "steps", "num_envs")
    check_seed_and_temperature(args, args.num_envs)
    policies = args.policy or ["random"]
    for policy in policies:  # a wrong name or --jitter is refused before any model loads
        try:
            check_policy(policy, game, args.jitter)
        except ValueError as err:
            raise CLIError(f"--policy / --jitter: {err}") from err
    if args.seed is None:
        args.seed = 0
    if args.out is not None:
        problem = folder_write_problem(Path(args.out).parent)
        if problem is not None:
            raise CLIError(f"cannot write --out {args.out}: {problem}")
    device = dream_device(args)
    model = load_scoring_model(args, game, device)
    try:
        rates = [
            measure_event_rates(
                model,
                game,
                num_envs=args.num_envs,
                steps=args.steps,
                seed=args.seed,
                temperature=args.temperature,
                event_temperature=args.event_temperature,
                device=device,
                policy=policy,
                jitter=args.jitter,
            )
            for policy in policies
        ]
    except ValueError as err:
        raise CLIError(str(err)) from err
    print(event_table(rates))
    if args.out is not None:
        counts = [r.to_dict() for r in rates]
        Path(args.out).write_text(json.dumps(counts, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


# ------------------------------------------------------------------------------------- play


def cmd_play(args: argparse.Namespace) -> int:
    game = parse_game(args.env_id)
    check_positive(args, "scale", "fps", "max_steps")
    check_seed_and_temperature(args)
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    try:
        import pygame
    except ImportError as err:
        raise CLIError("`rem-env play` needs pygame: pip install 'rem-env[play]'") from err
    from rem_env import play

    try:
        play.check_display()
    except play.NoDisplayError as err:
        raise CLIError(str(err)) from err
    device = dream_device(args)
    model, untrained = load_dream_model(args, game)
    env = make_dream_env(
        model,
        1,
        obs_type="tokens",
        device=device,
        quantize=args.quantize,
        autocast=args.autocast,
        temperature=args.temperature,
        event_temperature=args.event_temperature,
        render_mode="rgb_array",
        autoreset_mode="DISABLED",
    )
    label = f"{env_id(game)} (a pure dream)" + (f"\n{UNTRAINED}" if untrained else "")
    session = play.PlaySession(env, action_meanings(game), seed=args.seed, label=label)
    try:
        with torch.inference_mode():
            play.run(session, scale=args.scale, fps=args.fps, max_steps=args.max_steps)
    except play.NoDisplayError as err:
        raise CLIError(str(err)) from err
    except pygame.error as err:
        raise CLIError(
            f"cannot open a game window ({err}); `rem-env play` needs a display "
            "(SDL_VIDEODRIVER=dummy runs it without one, unseen)"
        ) from err
    print(f"played {session.total_steps} steps, {session.episodes} finished episode(s)")
    return 0


# ------------------------------------------------------------------------------------- info


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def cmd_info(args: argparse.Namespace) -> int:
    print("versions:")
    for dist in ("rem-env", "torch", "gymnasium", "ale-py", "stable-baselines3", "huggingface-hub"):
        print(f"  {dist}: {_version(dist)}")
    print("optional:")
    for dist, use in (("pygame", "rem-env play"), ("imageio-ffmpeg", "MP4 videos")):
        print(f"  {dist} ({use}): {_version(dist)}")
    print("devices:")
    print("  cpu: available")
    cuda = torch.cuda.is_available()
    names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    print(f"  cuda: {'available (' + names + ')' if cuda else 'not available'}")
    mps = getattr(torch.backends, "mps", None)
    print(f"  mps: {'available' if mps is not None and mps.is_available() else 'not available'}")
    print("env ids (default model):")
    for game in ATARI_100K_GAMES:
        try:
            where = resolve_default_model(game)
        except NoDefaultModelError:
            where = "none (pass --model)"
        print(f"  {env_id(game)}: {where}")
    return 0


# ------------------------------------------------------------------------------------ bench


def benchmark_script(name: str) -> Path:
    """``benchmarks/<name>.py`` of the source checkout rem_env was imported from."""
    script = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
    if not script.is_file():
        raise CLIError(
            f"benchmark script {script} not found: the benchmarks live in the rem-env source "
            "repository (not in the wheel); clone it and `pip install -e .` from there"
        )
    return script


def cmd_bench(args: argparse.Namespace) -> int:
    names = BENCHMARKS if args.which == "all" else (args.which,)
    scripts = [benchmark_script(name) for name in names]
    extra = args.script_args[1:] if args.script_args[:1] == ["--"] else args.script_args
    for script in scripts:
        print(f"$ python {script.relative_to(script.parent.parent)} {' '.join(extra)}".rstrip())
        sys.stdout.flush()
        status = subprocess.run([sys.executable, str(script), *extra], check=False).returncode
        if status != 0:
            print(f"rem-env: {script.name} exited with status {status}", file=sys.stderr)
            return status
    return 0


# ------------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    """The ``rem-env`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="rem-env",
        description="REM world models as dream environments: watch, play, inspect, benchmark.",
    )
    parser.add_argument("--version", action="version", version=f"rem-env {_version('rem-env')}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    dream = sub.add_parser(
        "dream",
        help="roll dreams, write a GIF/MP4 and print episode returns",
        description="Roll NUM_ENVS dreams for STEPS steps with an agent, write them tiled in one "
        "video (GIF, or MP4 with rem-env[video]) and print each env's episode returns.",
    )
    _add_model_args(dream, "random: a new dream each run")
    dream.add_argument(
        "--agent",
        default="random",
        metavar="random|PATH.zip|actor-critic",
        help="who acts: random actions, a stable-baselines3 policy file, or the model's own "
        "actor-critic (the one a local model folder exported by rem-train ships) (default: random)",
    )
    dream.add_argument("--algo", choices=("PPO", "A2C", "DQN"), help="SB3 algorithm of --agent")
    dream.add_argument("--num-envs", type=int, default=1, help="dreams side by side (default: 1)")
    dream.add_argument("--steps", type=int, default=100, help="steps per dream (default: 100)")
    dream.add_argument(
        "--out", default="dream.gif", help="video file: .gif or .mp4 (default: dream.gif)"
    )
    dream.add_argument("--scale", type=int, default=4, help="upscaling factor (default: 4)")
    dream.add_argument("--fps", type=int, default=15, help="video frames per second (default: 15)")
    dream.set_defaults(func=cmd_dream)

    play = sub.add_parser(
        "play",
        help="play inside a dream with the keyboard (pygame window)",
        description="Play a pure dream (never re-grounded on the emulator): arrows move, space "
        "fires, R resets, P pauses, Esc/Q quits. Needs pygame (rem-env[play]).",
    )
    _add_model_args(play, "random: a new dream each run")
    play.add_argument(
        "--scale", type=int, default=8, help="window pixels per dream pixel (default: 8)"
    )
    play.add_argument("--fps", type=int, default=15, help="dream steps per second (default: 15)")
    play.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="quit after this many dream steps (default: play until quit)",
    )
    play.set_defaults(func=cmd_play)

    fidelity = sub.add_parser(
        "fidelity",
        help="score a dream against the real game (token accuracy, PSNR, rewards, ends)",
        description="Play GAMES real games (ale-py, REM's training preprocessing: a lost life "
        "ends an episode) with an agent, then dream the same actions for HORIZON steps from the "
        "same real contexts (one dream every STRIDE real steps) and score each imagined step: "
        "token accuracy, PSNR against the real frame, reward and episode-end precision/recall. "
        "Writes fidelity.json, fidelity_curve.png and fidelity_strip.png (real above dream).",
    )
    _add_model_args(fidelity, "0")
    fidelity.add_argument(
        "--agent",
        default="random",
        metavar="random|scripted|PATH.zip|actor-critic",
        help="who plays the real game; scripted: a player that reads the emulator's RAM and "
        "follows the ball (Breakout; it scores, 5%% random actions) (default: random)",
    )
    fidelity.add_argument("--algo", choices=("PPO", "A2C", "DQN"), help="SB3 algorithm of --agent")
    fidelity.add_argument(
        "--games", type=int, default=4, help="real games to play at least (default: 4)"
    )
    fidelity.add_argument(
        "--min-rewards",
        type=int,
        default=0,
        help="keep playing whole games until this many real rewards were seen (at most "
        "4 * GAMES + 20 games) (default: 0)",
    )
    fidelity.add_argument(
        "--min-ends",
        type=int,
        default=0,
        help="likewise for real episode ends (lost lives) (default: 0)",
    )
    fidelity.add_argument("--horizon", type=int, default=10, help="imagined steps (default: 10)")
    fidelity.add_argument(
        "--stride", type=int, default=5, help="real steps between dream starts (default: 5)"
    )
    fidelity.add_argument(
        "--context",
        type=int,
        help="real frames each dream starts from, at most (as many as its episode has before "
        "the start, up to N; the dreams start at the same real steps) (default: the world "
        "model's context_length, 2 in REM)",
    )
    fidelity.add_argument(
        "--max-steps",
        type=int,
        default=5000,
        help="agent steps per real game at most (default: 5000)",
    )
    fidelity.add_argument("--out", default="fidelity", help="output folder (default: fidelity)")
    fidelity.set_defaults(func=cmd_fidelity)

    events = sub.add_parser(
        "events",
        help="episode ends and rewards per 1,000 steps of simple policies, dream beside game",
        description="Play the same action sequences in NUM_ENVS dreams and in as many real "
        "games (ale-py, REM's training preprocessing: a lost life ends an episode) for STEPS "
        "steps each, and print how often each side ends an episode and pays a reward, per "
        "1,000 steps, one row per --policy. A dream that ends far less often than the game "
        "teaches an agent nothing about staying alive; one that pays a behaviour (say, the "
        "paddle parked at one wall) more than the game does teaches the agent that behaviour. "
        "For Breakout a second table checks the game's own rule on the real frames, their "
        "reconstructions by the model's tokenizer and the dreamed frames: how many rewards "
        "come with a brick broken, how many bricks broken with a reward, and bricks that come "
        "back; a third counts each side's episode ends by how many steps before them the "
        "ball was last seen (in the game a life is lost 6-10 steps after the ball passed the "
        "paddle; a dream that ends episodes while the ball is in play does not punish missing "
        "it); a fourth counts the balls seen coming down to the paddle that came back up or "
        "were lost, by how far the paddle was (in the game a ball that comes down 8 pixels or "
        "more from it is lost). --policy follow (Breakout) plays a player that follows the "
        "ball on both sides, each acting on its own frames: a dream worth training in pays it "
        "more than random play, as the game does.",
    )
    _add_model_args(events, "0")
    events.add_argument("--num-envs", type=int, default=16, help="dreams (default: 16)")
    events.add_argument("--steps", type=int, default=200, help="steps per env (default: 200)")
    events.add_argument(
        "--policy",
        action="append",
        metavar="POLICY",
        help="random (uniform actions), an action of the game to hold, e.g. RIGHT, or follow "
        "(Breakout: a player that follows the ball it sees, on each side's own frames, 5%% "
        "random actions); repeat for one row each (default: random)",
    )
    events.add_argument(
        "--jitter",
        type=float,
        default=DEFAULT_JITTER,
        help="share of a held action's steps that take a random action "
        f"(default: {DEFAULT_JITTER:g}; Breakout serves only after FIRE)",
    )
    events.add_argument(
        "--out",
        default=None,
        help="also write the counts to this JSON file (a list, one per policy)",
    )
    events.set_defaults(func=cmd_events)

    info = sub.add_parser("info", help="env ids, default models, versions and devices")
    info.set_defaults(func=cmd_info)

    bench = sub.add_parser(
        "bench",
        help="run the benchmark scripts of a source checkout and print their tables",
        description="Runs benchmarks/<name>.py of the source checkout; arguments after `--` go "
        "to the script(s), e.g. `rem-env bench --which imagination -- --preset tiny`.",
    )
    bench.add_argument(
        "--which", choices=(*BENCHMARKS, "all"), default="all", help="which script (default: all)"
    )
    bench.add_argument("script_args", nargs=argparse.REMAINDER, help="arguments of the script(s)")
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``rem-env``; returns the exit status.

    User errors are printed as one line without a traceback (status 2); Ctrl-C prints
    "interrupted" (status 130).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (CLIError, AgentError, VideoError, ModelLoadError, gym.error.Error) as err:
        print(f"rem-env {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: a wish, not a crash
        print(f"rem-env {args.command}: interrupted", file=sys.stderr)
        return INTERRUPTED
    except BrokenPipeError:  # the reader went away (`rem-env info | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
