"""Train a stable-baselines3 agent only inside a dream, then score it on the real game.

The agent (PPO with ``CnnPolicy`` on the dream's 64x64 RGB frames, 4 stacked) learns purely in
imagination from ``gym.make_vec("REM-<Game>-v0")``: it never sees a real frame while it trains.
It is then scored on the real game with REM's test protocol
(:func:`rem_train.evaluate.evaluate_agent`: no-op start, whole games, 108,000 raw frames at most),
beside a uniformly random policy scored the same way and, for a game that has one
(:data:`rem_env.probes.BLIND_BASELINES`; Breakout: RIGHT, FIRE with probability 0.1), a policy
that scores without looking at the screen: under REM's test protocol every game starts alike, and
a Breakout paddle parked at the right wall scores 4-5 times what random play does. The result
goes to ``dream_to_real.json`` and a short markdown table. ``--noop-max 30`` starts every real
game after 1 to 30 no-op frames instead (the starts then differ, so the serve does too), and
``--agent runs/dream_to_real/ppo_dream.zip`` scores an agent trained before instead of training
one, e.g. to score it both ways. ``--train-on game`` trains the same PPO as long on the real
game instead (REM's training env, the frames the dream shows, rewards clipped to their sign as
the dream gives them): the reference, what a dream as good as the game would give in as many
steps.

Run it as ``python -m rem_train.dream_to_real --out runs/dream_to_real`` (the bundled Breakout
model) or with ``--model FOLDER|REPO_ID``.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

import rem_env  # noqa: F401  (registers REM-<Game>-v0)
from rem_env.agents import RandomAgent
from rem_env.atari import FRAME_SKIP, TRAIN_SETTINGS
from rem_env.dream import check_temperature
from rem_env.registration import ATARI_100K_GAMES, env_id
from rem_train.evaluate import NOOP_MAX_HELP, blind_baseline, evaluate_agent, starts_in_words

__all__ = [
    "StackedSB3Policy",
    "dream_episodes",
    "main",
    "report_seed",
    "seeds_table",
    "table",
    "train_in_dream",
    "train_on_game",
]

N_STACK = 4
"""Frames stacked along the channels, as SB3's ``VecFrameStack`` does in the dream."""
MAX_DREAM_EPISODE_STEPS = 2000
"""Dream episodes are truncated after this many steps."""
TRAINED_ON = {"dream": "only in the dream", "game": "on the real game"}
"""Where the agent trained (``--train-on``), as the reports say it."""


class AgentEnvMismatchError(ValueError):
    """An agent saved before cannot train on in an env of other observation or action spaces."""


def train_in_dream(
    game: str,
    steps: int,
    model: Any = None,
    num_envs: int = 16,
    seed: int = 0,
    max_episode_steps: int = MAX_DREAM_EPISODE_STEPS,
    device: str = "cpu",
    verbose: int = 0,
    temperature: float = 1.0,
    event_temperature: float | None = None,
    continue_from: str | Path | None = None,
) -> Any:
    """PPO (``CnnPolicy``, Atari hyper-parameters of the SB3 zoo) trained ``steps`` dream steps.

    Args:
        game: Atari 100K game.
        steps: Dream env-steps to train (all envs together).
        model: ``model=`` of ``gym.make_vec`` (None: the game's default model).
        num_envs: Dreams stepped together (one world-model forward pass per step).
        seed: Seed of the dreams and of PPO.
        max_episode_steps: Dream episodes are truncated after this many steps.
        device: Torch device of the dream and the agent.
        verbose: SB3 verbosity.
        temperature: Sampling temperature of the dreams (1: REM's; lower: fewer, likelier
            surprises; 0: argmax).
        event_temperature: Sampling temperature of the dreams' rewards and ends (None:
            ``temperature``).
        continue_from: An earlier agent's ``.zip`` (None: a new agent) to train ``steps`` more.

    Raises:
        AgentEnvMismatchError: If ``continue_from``'s agent saw or acted in other spaces.
    """
    from rem_env.sb3 import SB3DreamVecEnv

    venv = gym.make_vec(
        env_id(game),
        num_envs=num_envs,
        model=model,
        obs_type="rgb",
        device=device,
        max_episode_steps=max_episode_steps,
        temperature=temperature,
        event_temperature=event_temperature,
    )
    return _train_ppo(SB3DreamVecEnv(venv), steps, seed, device, verbose, continue_from)


def train_on_game(
    game: str,
    steps: int,
    num_envs: int = 16,
    seed: int = 0,
    device: str = "cpu",
    verbose: int = 0,
    continue_from: str | Path | None = None,
) -> Any:
    """PPO as :func:`train_in_dream` trains it, on the real game instead: the reference.

    The agent sees what it would see in the dream: REM's training env (64x64 RGB frames, a lost
    life ends an episode, 1-30 no-op frames at the start; :func:`rem_env.atari.make_atari_env`)
    with each reward clipped to its sign, as the dream's reward classes give them. What it then
    scores on the real test games is what a dream as good as the game could give PPO in as many
    steps.

    Args:
        game: Atari 100K game.
        steps: Real env-steps to train (all envs together).
        num_envs: Real games stepped side by side.
        seed: Seed of the games (env i: seed + i) and of PPO.
        device: Torch device of the agent.
        verbose: SB3 verbosity.
        continue_from: An earlier agent's ``.zip`` (None: a new agent) to train ``steps`` more.

    Raises:
        AgentEnvMismatchError: If ``continue_from``'s agent saw or acted in other spaces.
    """
    from gymnasium.wrappers import TransformReward
    from stable_baselines3.common.vec_env import DummyVecEnv

    from rem_env.atari import make_atari_env

    def factory(i: int) -> Any:
        return lambda: TransformReward(
            make_atari_env(game, True, seed + i), lambda r: float(np.sign(r))
        )

    venv = DummyVecEnv([factory(i) for i in range(num_envs)])
    return _train_ppo(venv, steps, seed, device, verbose, continue_from)


def _train_ppo(
    venv: Any,
    steps: int,
    seed: int,
    device: str,
    verbose: int,
    continue_from: str | Path | None = None,
) -> Any:
    """PPO (``CnnPolicy``, the SB3 zoo's Atari hyper-parameters) trained ``steps`` env-steps on
    an SB3 ``VecEnv`` of single frames, ``N_STACK`` stacked.

    With ``continue_from``, the agent saved there (its weights, optimizer state, step count and
    the hyper-parameters it was trained with) learns ``steps`` more: a long training in legs.

    Raises:
        AgentEnvMismatchError: If the saved agent sees or acts in other spaces than ``venv``'s.
    """
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecFrameStack, VecMonitor

    env = VecFrameStack(VecMonitor(venv), N_STACK)
    env.seed(seed)
    if continue_from is not None:
        try:
            agent = PPO.load(continue_from, env=env, device=device)
        except ValueError as err:  # SB3's own message names the spaces that differ
            env.close()
            raise AgentEnvMismatchError(f"{continue_from} cannot go on in this env: {err}") from err
        agent.set_random_seed(seed)
    else:
        agent = PPO(
            "CnnPolicy",
            env,
            n_steps=128,
            n_epochs=4,
            batch_size=256,
            learning_rate=2.5e-4,
            clip_range=0.1,
            ent_coef=0.01,
            vf_coef=0.5,
            seed=seed,
            device=device,
            verbose=verbose,
        )
    agent.learn(total_timesteps=steps, reset_num_timesteps=continue_from is None)
    env.close()
    return agent


def _earlier_steps(path: str | Path) -> int:
    """The env-steps an SB3 agent saved at ``path`` has trained (all its legs).

    Raises:
        SystemExit: If ``path`` is not an SB3 agent's zip.
    """
    from stable_baselines3.common.save_util import load_from_zip_file

    try:
        data, _, _ = load_from_zip_file(path, load_data=True, device="cpu")
    except Exception as err:  # a zip of anything else, or no zip: SB3 raises several kinds
        raise SystemExit(f"--continue-from {path}: not an SB3 agent's zip ({err})") from err
    if not data or "num_timesteps" not in data:
        raise SystemExit(f"--continue-from {path}: not an SB3 agent's zip (no step count)")
    return int(data["num_timesteps"])


class StackedSB3Policy:
    """An SB3 policy trained on ``VecFrameStack(n_stack)`` observations, acting on single frames.

    It keeps the last ``n_stack`` frames of every env and zeroes an env's stack when its
    episode starts, exactly as ``VecFrameStack`` does in the dream.

    Args:
        agent: The trained SB3 algorithm (anything with ``predict``).
        num_envs: Envs it acts for.
        n_stack: Frames per observation.
        deterministic: Greedy actions (True) or sampled ones (False, as in training).

    Example:
        >>> class Echo:  # a stand-in for an SB3 model: action = first pixel of the newest frame
        ...     def predict(self, obs, deterministic):
        ...         return obs[:, 0, 0, -1], None
        >>> policy = StackedSB3Policy(Echo(), num_envs=2, n_stack=2)
        >>> policy.episodes_ended(np.ones(2, dtype=bool))
        >>> policy.act(np.full((2, 4, 4, 3), 3, dtype=np.uint8)).tolist()
        [3, 3]
    """

    def __init__(
        self, agent: Any, num_envs: int, n_stack: int = N_STACK, deterministic: bool = False
    ) -> None:
        self.agent = agent
        self.n_stack = n_stack
        self.deterministic = deterministic
        self.num_envs = num_envs
        self.stack: np.ndarray | None = None
        self.fresh = np.ones(num_envs, dtype=bool)

    def act(self, obs: np.ndarray) -> np.ndarray:
        channels = obs.shape[-1]
        if self.stack is None:
            self.stack = np.zeros((*obs.shape[:-1], channels * self.n_stack), dtype=obs.dtype)
        self.stack = np.roll(self.stack, -channels, axis=-1)  # oldest frame out
        self.stack[self.fresh] = 0
        self.stack[..., -channels:] = obs
        self.fresh[:] = False
        actions, _ = self.agent.predict(self.stack, deterministic=self.deterministic)
        return np.asarray(actions, dtype=np.int64).reshape(self.num_envs)

    def episodes_ended(self, done: np.ndarray) -> None:
        self.fresh |= np.asarray(done, dtype=bool)


def dream_episodes(agent: Any, max_steps: int) -> dict[str, Any]:
    """The agent's last training episodes (SB3 keeps up to 100): how long, what they paid.

    A dream whose episodes hardly ever end (a world model that does not predict lost lives)
    teaches an agent nothing about keeping the game alive; this is where a report shows it.
    """
    infos = list(getattr(agent, "ep_info_buffer", None) or [])
    lengths = np.array([info["l"] for info in infos], dtype=np.float64)
    returns = np.array([info["r"] for info in infos], dtype=np.float64)
    return {
        "episodes": len(infos),
        "mean_length": float(lengths.mean()) if len(infos) else None,
        "mean_return": float(returns.mean()) if len(infos) else None,
        "truncated": int((lengths >= max_steps).sum()),
        "max_steps": max_steps,
    }


def table(report: dict[str, Any]) -> str:
    """A markdown table of the real-game scores of the dream-trained agent and of random."""
    noop_max = report.get("noop_max", 1)
    protocol = "test protocol" + ("" if noop_max == 1 else f", {starts_in_words(noop_max)}")
    rows = [f"| policy (real game, {protocol}) | mean | std | min | max | episodes |"]
    rows.append("|---|---|---|---|---|---|")
    trained_on = report.get("trained_on", "dream")
    policies = [(f"PPO trained {TRAINED_ON[trained_on]}", "agent"), ("uniformly random", "random")]
    if "blind" in report:
        policies.append((report["blind"]["policy"], "blind"))
    for name, key in policies:
        s = report[key]
        rows.append(
            f"| {name} | {s['mean']:.2f} | {s['std']:.2f} | {s['min']:g} | {s['max']:g} | "
            f"{s['episodes']} |"
        )
    dream = report.get("dream_episodes") or report.get("game_episodes")
    if dream and dream["episodes"]:
        agent = report["agent"]
        where = "In the dream" if trained_on == "dream" else "In its training games"
        rows.append("")
        rows.append(
            f"{where}, its last {dream['episodes']} episodes lasted "
            f"{dream['mean_length']:.0f} steps and returned {dream['mean_return']:.2f} on average "
            f"({dream['truncated']} cut at {dream['max_steps']} steps); on the real game it lasted "
            f"{np.mean(agent['lengths']):.0f} steps and scored {agent['mean']:.2f}."
        )
    if "continued_from" in report:
        rows.append("")
        rows.append(
            f"It went on from {report['continued_from']}, which had trained "
            f"{report['earlier_steps']:,} steps: {report['all_steps']:,} in all."
        )
    ratio = report["agent_over_random"]
    rows.append("")
    agent_name = "Dream-trained agent" if trained_on == "dream" else "Game-trained agent"
    line = f"{agent_name} / random: {ratio:.2f}x" if ratio is not None else "random scored 0"
    if "blind" in report and ratio is not None:
        blind_ratio = report["blind"]["mean"] / report["random"]["mean"]
        line += f" (the policy that never looks at the screen: {blind_ratio:.2f}x)"
    rows.append(line)
    return "\n".join(rows)


def report_seed(report: dict[str, Any]) -> int:
    """The PPO seed of a report (reports written before it was recorded: read from the command)."""
    if "seed" in report:
        return int(report["seed"])
    found = re.search(r"--seed[ =](-?\d+)", report.get("command", ""))
    return int(found.group(1)) if found else 0  # 0: the default of --seed


def seeds_table(reports: Sequence[dict[str, Any]]) -> str:
    """A markdown table of several dream-to-real runs (one per PPO seed), with their mean.

    The last row averages the per-seed means; its ratio is the mean agent score over the mean
    random score. Where every report also played the game's screen-blind policy
    (:data:`rem_env.probes.BLIND_BASELINES`), a last column gives its scores.

    Raises:
        ValueError: If some agents trained in the dream and others on the real game.
    """
    if len({r.get("trained_on", "dream") for r in reports}) > 1:
        raise ValueError("one table per --train-on: these agents trained in the dream and the game")
    blind = all("blind" in r for r in reports)  # reports written before it was played lack it
    trained_on = reports[0].get("trained_on", "dream")
    columns = ["PPO seed", f"PPO trained {TRAINED_ON[trained_on]}", "uniformly random"]
    columns += [f"{trained_on}-trained / random", *(["never looks at the screen"] if blind else [])]
    rows = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for report in reports:
        agent, random, ratio = report["agent"], report["random"], report["agent_over_random"]
        rows.append(
            f"| {report_seed(report)} | {agent['mean']:.2f} ± {agent['std']:.2f} "
            f"({agent['episodes']} games) | {random['mean']:.2f} ± {random['std']:.2f} | "
            + (f"{ratio:.2f}x |" if ratio is not None else "random scored 0 |")
            + (f" {report['blind']['mean']:.2f} ± {report['blind']['std']:.2f} |" if blind else "")
        )
    agent_mean = float(np.mean([r["agent"]["mean"] for r in reports]))
    random_mean = float(np.mean([r["random"]["mean"] for r in reports]))
    ratio = f"{agent_mean / random_mean:.2f}x" if random_mean else "random scored 0"
    means = f"{agent_mean:.2f} | {random_mean:.2f} | {ratio}"
    rows.append(f"| mean of {len(reports)} seeds | {means} |")
    if blind:
        rows[-1] += f" {float(np.mean([r['blind']['mean'] for r in reports])):.2f} |"
        rows += ["", f"The last column's policy: {reports[0]['blind']['policy']}."]
    return "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rem_train.dream_to_real",
        description="Train PPO (CnnPolicy, 4 stacked 64x64 RGB frames) only inside "
        "REM-<Game>-v0, then score it, a random policy and (Breakout) a policy that never looks "
        "at the screen on the real game with REM's test "
        "protocol. Writes dream_to_real.json, dream_to_real.md and the agent (ppo_dream.zip).",
    )
    parser.add_argument(
        "--game",
        default="Breakout",
        choices=sorted(ATARI_100K_GAMES),
        help="Atari game: its dream, REM-<Game>-v0, and its real test env (default: %(default)s)",
    )
    parser.add_argument(
        "--model", default=None, help="model folder or Hub repo id (default: the game's default)"
    )
    parser.add_argument(
        "--train-on",
        choices=sorted(TRAINED_ON),
        default="dream",
        help="where PPO trains: the dream (default), or the real game's training env as the "
        "reference (64x64 frames, a lost life ends an episode, rewards clipped to their sign, "
        "as the dream gives them): what a dream as good as the game would give in --steps",
    )
    parser.add_argument(
        "--steps", type=int, default=200_000, help="env-steps of training (dream or game)"
    )
    parser.add_argument(
        "--num-envs", type=int, default=16, help="dreams (or real games) stepped together"
    )
    parser.add_argument("--episodes", type=int, default=24, help="real episodes per policy")
    parser.add_argument("--eval-envs", type=int, default=8, help="real test envs per round")
    parser.add_argument(
        "--max-raw-frames", type=int, default=None, help="raw-frame limit of a real episode"
    )
    parser.add_argument(
        "--temperature",
        type=float,
        default=1.0,
        help="sampling temperature of the dreams PPO trains in (0: argmax)",
    )
    parser.add_argument(
        "--event-temperature",
        type=float,
        default=None,
        help="sampling temperature of the dreams' rewards and ends (default: --temperature)",
    )
    parser.add_argument(
        "--noop-max",
        type=int,
        default=1,
        help=NOOP_MAX_HELP,
    )
    parser.add_argument(
        "--agent",
        default=None,
        metavar="ZIP",
        help="score this PPO agent (the ppo_dream.zip or ppo_game.zip of an earlier run) instead "
        "of training one; --model, --steps, --num-envs and the temperatures are then not used",
    )
    parser.add_argument(
        "--continue-from",
        default=None,
        metavar="ZIP",
        help="train this PPO agent (the ppo_dream.zip or ppo_game.zip of an earlier run) --steps "
        "more, with the settings it was trained with, instead of a new one: a long training in "
        "legs (the report gives the steps of all legs)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of PPO, its dreams and the real test games"
    )
    parser.add_argument(
        "--device", default="cpu", help="torch device of the dreams and of PPO (default: cpu)"
    )
    parser.add_argument("--out", required=True, help="output folder")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the experiment; prints the table and returns 0."""
    args = build_parser().parse_args(argv)
    if min(args.steps, args.num_envs, args.episodes, args.eval_envs, args.noop_max) < 1:
        raise SystemExit(
            "--steps, --num-envs, --episodes, --eval-envs and --noop-max must be positive"
        )
    for flag, value in (
        ("--temperature", args.temperature),
        ("--event-temperature", args.event_temperature),
    ):
        if value is not None:
            try:
                check_temperature(flag, value)
            except ValueError as err:
                raise SystemExit(str(err)) from err
    for flag, path in (("--agent", args.agent), ("--continue-from", args.continue_from)):
        if path is not None and not Path(path).is_file():
            raise SystemExit(f"{flag} {path}: no such file (a ppo_dream.zip of an earlier run)")
    if args.agent is not None and args.continue_from is not None:
        raise SystemExit("--agent scores an agent as it is, --continue-from trains one: not both")
    earlier = _earlier_steps(args.continue_from) if args.continue_from is not None else 0
    dream_only = (args.model, args.event_temperature) != (None, None) or args.temperature != 1.0
    if args.train_on == "game" and dream_only:
        raise SystemExit(
            "--train-on game trains on the real game: --model and the temperatures are the "
            "dream's, leave them out"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    def legs(agent: Any) -> dict[str, Any]:
        if args.continue_from is None:
            return {}
        # PPO trains whole rollouts, so the agent's own count, not earlier + --steps
        steps = int(agent.num_timesteps)
        return {"continued_from": args.continue_from, "earlier_steps": earlier, "all_steps": steps}

    try:
        if args.agent is None and args.train_on == "game":
            agent = train_on_game(
                args.game, args.steps, args.num_envs, args.seed, args.device, 0, args.continue_from
            )
            dream: dict[str, Any] = {
                "trained_on": "game",
                "game_steps": args.steps,
                **legs(agent),
                "game_envs": args.num_envs,
                "train_seconds": round(time.perf_counter() - start, 1),
                "game_episodes": dream_episodes(agent, TRAIN_SETTINGS.max_raw_frames // FRAME_SKIP),
            }
            agent.save(out / "ppo_game.zip")
        elif args.agent is None:
            agent = train_in_dream(
                args.game,
                args.steps,
                args.model,
                args.num_envs,
                args.seed,
                device=args.device,
                temperature=args.temperature,
                event_temperature=args.event_temperature,
                continue_from=args.continue_from,
            )
            dream = {
                "trained_on": "dream",
                "model": args.model or f"default model of {env_id(args.game)}",
                "dream_steps": args.steps,
                **legs(agent),
                "dream_envs": args.num_envs,
                "dream_temperature": args.temperature,
                "dream_event_temperature": (
                    args.temperature if args.event_temperature is None else args.event_temperature
                ),
                "train_seconds": round(time.perf_counter() - start, 1),
                "dream_episodes": dream_episodes(agent, MAX_DREAM_EPISODE_STEPS),
            }
            agent.save(out / "ppo_dream.zip")
        else:
            from stable_baselines3 import PPO

            agent = PPO.load(args.agent, device=args.device)
            dream = {"agent_file": args.agent}  # trained before: its dream is that run's
    except AgentEnvMismatchError as err:  # --continue-from an agent of other spaces
        raise SystemExit(str(err)) from err
    start = time.perf_counter()
    games = (args.game, args.episodes, args.eval_envs, args.seed + 1000, args.max_raw_frames)
    trained = evaluate_agent(StackedSB3Policy(agent, args.eval_envs), *games, args.noop_max)
    num_actions = ATARI_100K_GAMES[args.game]
    random = evaluate_agent(RandomAgent(num_actions, seed=args.seed), *games, args.noop_max)
    blind = blind_baseline(*games, args.noop_max)  # a floor that needs no screen, same games
    report = {
        "command": "python -m rem_train.dream_to_real "
        + " ".join(sys.argv[1:] if argv is None else list(argv)),
        "game": args.game,
        "seed": args.seed,
        "frame_stack": N_STACK,
        "noop_max": args.noop_max,
        "eval_seconds": round(time.perf_counter() - start, 1),
        "protocol": f"real test env: {starts_in_words(args.noop_max)}, whole games, 108,000 raw "
        "frames at most; PPO samples its actions (deterministic=False)",
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, device {args.device}",
        "agent": trained.summary(),
        "random": random.summary(),
        "agent_over_random": trained.mean / random.mean if random.mean else None,
        **({"blind": blind} if blind is not None else {}),
        **dream,
    }
    (out / "dream_to_real.json").write_text(json.dumps(report, indent=2) + "\n")
    text = table(report)
    (out / "dream_to_real.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
