"""Phase 1 of the REM epoch: act in the real train env with the actor-critic, store every step.

The actor-critic acts on the tokenizer's codes of each frame (temperature 1.0, epsilon 0.01; the
untrained one acts too, before its phase starts, as in REM) and the executed action is fed back
through its LSTM. The env and the ongoing episode persist across epochs; when an epoch resumes
an open episode, the LSTM is first warmed up on that episode's last stored frames (REM_SPEC 6).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch

from rem_env import REMModel
from rem_env.atari import make_atari_env
from rem_env.models.actor_critic import ActorCritic, LSTMState, sample_actions
from rem_env.probes import BLIND_BASELINES, SCRIPTED_PLAYERS
from rem_train.config import TrainConfig
from rem_train.replay import ReplayBuffer, frames_to_tensor

__all__ = ["Collector"]


def _seed(seed: int, index: int) -> int:
    """A seed of its own for the ``index``-th parked paddle of the collector seeded ``seed``."""
    return int(np.random.SeedSequence([seed, 2, index]).generate_state(1)[0])


class Collector:
    """The real train env and its ongoing episode, stepped by the actor-critic into the replay.

    Args:
        game: Atari 100K game.
        seed: Seed of the env's first reset.
        temperature: Policy temperature.
        epsilon: Probability of a uniform random action.
        burn_in: Stored frames of the ongoing episode that warm up the LSTM at an epoch's start.
        burn_in_actions: Feed actions during that burn-in (REM_SPEC 11.1).
        max_raw_frames: Raw-frame limit of the env (None: REM's 20000).
        scripted_share: Share of episodes played by the game's scripted player (it reads the
            emulator's RAM, :data:`rem_env.probes.SCRIPTED_PLAYERS`) instead of the
            actor-critic; 0 is REM. Its episodes show what a weak early policy never reaches
            (bricks breaking, a ball kept in play), for the tokenizer and the world model.
        scripted_serve_wait: The scripted player waits a uniform 0 to this many steps before
            each serve (moving at random without FIRE), so the replay shows that only FIRE
            serves; 0: it serves at once.
        parked_share: Share of episodes played by the game's screen-blind policy
            (:data:`rem_env.probes.BLIND_BASELINES`) with its paddle parked at a wall drawn per
            episode, so that the replay shows lives lost at either wall (an actor-critic that
            parks at one wall shows only that one); 0: none.
    """

    def __init__(
        self,
        game: str,
        seed: int,
        temperature: float,
        epsilon: float,
        burn_in: int,
        burn_in_actions: bool,
        max_raw_frames: int | None = None,
        scripted_share: float = 0.0,
        scripted_serve_wait: int = 0,
        parked_share: float = 0.0,
    ) -> None:
        self.env: gym.Env[np.ndarray, int] = make_atari_env(
            game, train=True, seed=seed, max_raw_frames=max_raw_frames
        )
        self.player = None
        if scripted_share > 0:
            if game not in SCRIPTED_PLAYERS:
                raise ValueError(
                    f"collect.scripted_share needs a scripted player, and {game} has none (there "
                    f"is one for {', '.join(sorted(SCRIPTED_PLAYERS))})"
                )
            self.player = SCRIPTED_PLAYERS[game](
                epsilon=0.1, seed=seed, max_serve_wait=scripted_serve_wait
            )
        self.parkers: list[Any] = []
        if parked_share > 0:
            if game not in BLIND_BASELINES:
                raise ValueError(
                    f"collect.parked_share needs a screen-blind policy, and {game} has none "
                    f"(there is one for {', '.join(sorted(BLIND_BASELINES))})"
                )
            self.parkers = [
                BLIND_BASELINES[game](seed=_seed(seed, i), wall=wall)
                for i, wall in enumerate(("right", "left"))
            ]
        self.scripted_share = scripted_share
        self.parked_share = parked_share
        self.playing: Any = None  # the ongoing episode's player; None: the actor-critic
        self.rng = np.random.default_rng([seed, 1])
        self.temperature = temperature
        self.epsilon = epsilon
        self.burn_in = burn_in
        self.burn_in_actions = burn_in_actions
        self.obs: np.ndarray | None = None
        self.episode_return = 0.0

    @classmethod
    def from_config(cls, config: TrainConfig, seed: int) -> Collector:
        """The collector of a training run (its ``collect`` and ``actor_critic`` settings)."""
        return cls(
            config.game,
            seed=seed,
            temperature=config.collect.temperature,
            epsilon=config.collect.epsilon,
            burn_in=config.actor_critic.burn_in,
            burn_in_actions=config.actor_critic.burn_in_actions,
            max_raw_frames=config.common.max_raw_frames,
            scripted_share=config.collect.scripted_share,
            scripted_serve_wait=config.collect.scripted_serve_wait,
            parked_share=config.collect.parked_share,
        )

    @torch.no_grad()
    def collect(
        self,
        model: REMModel | None,
        actor_critic: ActorCritic | None,
        replay: ReplayBuffer,
        num_steps: int,
        stop: Any = None,
    ) -> dict[str, Any]:
        """Steps the env ``num_steps`` times, appending each transition to ``replay``.

        Args:
            model: Its tokenizer encodes the frames (eval mode); None with ``actor_critic`` None.
            actor_critic: The policy (eval mode); None: the episodes it would play are played
                with uniformly random actions instead.
            replay: Where transitions go (one write per step, crash-safe).
            num_steps: Steps to take.
            stop: Optional zero-argument callable; collection ends early when it returns True.

        Returns:
            Steps taken, finished episodes (lives) and their mean return.
        """
        if actor_critic is not None and model is None:
            raise ValueError("an actor-critic acts on the codes of a model's tokenizer: give both")
        ac = tokenizer = state = None
        if actor_critic is not None and model is not None:
            ac, tokenizer = actor_critic.eval(), model.tokenizer.eval()
            device = ac.actor.weight.device
            state = self._burn_in(model, ac, replay)
        actions = self.env.action_space
        returns, taken = [], 0
        for _ in range(num_steps):
            if stop is not None and stop():
                break
            if self.obs is None:
                self.obs, _ = self.env.reset()
                state = ac.initial_state(1) if ac is not None else None
                self.episode_return = 0.0
                self.playing = self._episode_player()
            if self.playing is not None and self.playing is self.player:  # reads the RAM
                action = int(self.player.act(self.env.unwrapped.ale.getRAM()[None])[0])
            elif self.playing is not None:  # parked at a wall: the frame is not looked at
                action = int(self.playing.act(self.obs[None])[0])
            elif ac is None:  # no actor-critic given: uniformly random play
                action = int(self.rng.integers(int(actions.n)))
            else:
                codes = tokenizer.encode(frames_to_tensor(self.obs[None], device)).z_quantized
                out = ac(codes, state)  # codes: (1, E, h, w)
                sampled = sample_actions(out.logits, self.temperature, self.epsilon)
                state = ac.observe_action(sampled, out.state)
                action = int(sampled)
            obs, reward, terminated, truncated, _ = self.env.step(action)
            replay.append(self.obs, action, float(reward), terminated, truncated)
            taken += 1
            self.episode_return += float(reward)
            if terminated or truncated:
                returns.append(self.episode_return)
                self.obs = None
            else:
                self.obs = obs
        mean = float(np.mean(returns)) if returns else None
        return {"steps": taken, "episodes": len(returns), "mean_return": mean}

    def _episode_player(self) -> Any:
        """Who plays the next episode: the scripted player, a parked paddle or (None) the
        actor-critic, drawn with the configured shares."""
        if self.player is None and not self.parkers:
            return None
        draw = self.rng.random()
        if self.player is not None and draw < self.scripted_share:
            return self.player
        if self.parkers and draw < self.scripted_share + self.parked_share:
            return self.parkers[int(self.rng.integers(len(self.parkers)))]
        return None

    def _burn_in(self, model: REMModel, ac: ActorCritic, replay: ReplayBuffer) -> LSTMState:
        """LSTM state for the ongoing episode: burn-in on its last stored frames."""
        if self.obs is None:
            return ac.initial_state(1)
        device = ac.actor.weight.device
        segment = replay.tail_segment(self.burn_in).to_torch(device)
        frames = frames_to_tensor(segment.obs[0], device)  # (T, 3, H, W)
        codes = model.tokenizer.encode(frames).z_quantized[None]  # (1, T, E, h, w)
        return ac.burn_in(codes, segment.actions, segment.mask, self.burn_in_actions)

    def close(self) -> None:
        """Closes the env."""
        self.env.close()
