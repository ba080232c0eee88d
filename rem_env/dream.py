"""Dream environments: a world model stepped like a game, all envs of a batch in one forward."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Sequence
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space
from torch import Tensor

from rem_env.contexts import check_contexts, draw_start_contexts
from rem_env.hub import load_model
from rem_env.model import REMModel
from rem_env.models.world_model import StepNoise
from rem_env.noise import MAX_SEED, hash_uniforms
from rem_env.quantization import QUANTIZATIONS, Quantization, quantize_model
from rem_env.state import ImaginationState
from rem_env.threads import AUTO, StepThreads, Threads

__all__ = [
    "DreamEnvClosedError",
    "DreamVectorEnv",
    "available_devices",
    "check_device",
    "check_temperature",
    "temperature_words",
]

ObsType = Literal["rgb", "tokens", "latent"]
OutputType = Literal["numpy", "torch"]
OBS_TYPES = ("rgb", "tokens", "latent")
Autocast = Literal["bf16"]
AUTOCAST_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16}
"""``autocast`` choices of :class:`DreamVectorEnv` and the dtypes they run in."""
RENDER_FPS = 15  # Atari at frameskip 4

_forked = False
"""True in a process forked from one that imported rem_env, until :func:`fork_safe_threads` ran."""


def _mark_forked() -> None:
    global _forked
    _forked = True


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_mark_forked)


def fork_safe_threads() -> None:
    """Runs torch on one intra-op thread in a forked process, once, before it touches torch.

    A process forked from a parent whose torch had started its OpenMP thread pool (any op on
    more than one thread) deadlocks at its first parallel op: the pool's threads were not
    copied by ``fork``. This is what hung ``gym.make_vec(..., vectorization_mode="async")``,
    whose workers are forked by default. Called first by the dream env constructors and entry
    points; it does nothing in the parent, in ``spawn``/``forkserver`` children, or when torch
    already runs one thread. A worker that wants more threads can set them afterwards (safe only
    if the parent never ran a parallel op) or use ``vector_kwargs={"context": "spawn"}``.
    """
    global _forked
    if _forked:
        _forked = False
        if torch.get_num_threads() > 1:
            torch.set_num_threads(1)


class DreamEnvClosedError(gym.error.Error, gym.error.ClosedEnvironmentError):
    """Raised when a closed dream env is used."""


def temperature_words(temperature: float, event_temperature: float | None = None) -> str:
    """A dream's sampling temperatures in words.

    Example:
        >>> temperature_words(1.0), temperature_words(0.0, 1.0)
        ('1', '0 (rewards and ends: 1)')
    """
    if event_temperature is None or event_temperature == temperature:
        return f"{temperature:g}"
    return f"{temperature:g} (rewards and ends: {event_temperature:g})"


def check_temperature(name: str, value: object) -> None:
    """A clear ValueError (naming ``name``) unless ``value`` is a finite number >= 0."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not value >= 0
        or not math.isfinite(value)
    ):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


class DreamVectorEnv(VectorEnv):
    """A batch of dreams of an :class:`~rem_env.REMModel`, as a Gymnasium ``VectorEnv``.

    Every :meth:`step` runs ONE batched imagination step of the world model for all envs: all next
    frame tokens at once (POP), a reward class (reward = class - 1) and an end flag, sampled from
    each env's own counter-based random stream (:mod:`rem_env.noise`). A reset starts an env from
    one of the model's bundled start contexts, drawn from that env's stream, or from contexts
    passed in ``reset(options={"contexts": (tokens, actions)})``.

    Seeding: ``reset(seed=s)`` gives env ``i`` the seed ``s + i`` (a list of seeds gives one per
    env), so an env dreams the same whether it is stepped alone or in a batch, bit for bit on the
    same device.

    Observations (``single_observation_space``):

    * ``"rgb"``: uint8 (H, W, 3) frames decoded by the tokenizer (what SB3's CnnPolicy wants);
    * ``"tokens"``: int64 (K,) token ids, raster order;
    * ``"latent"``: float32 (E, h, w) codebook vectors, channels first.

    Args:
        model: The world model: an REMModel, a model folder or a Hub repo id (loaded with
            :func:`rem_env.hub.load_model`). It is put in eval mode (again at each step if it
            was switched back to training mode).
        num_envs: Number of dreams stepped together.
        obs_type: ``"rgb"``, ``"tokens"`` or ``"latent"``.
        device: Where to dream; the model is moved there. Default: the model's device.
        quantize: None (float32, the default) or ``"int8"``: dream with a copy of the model
            whose RetNet layers run with int8 weights (CPU only; faster, close to but not equal
            to the float dreams; see :func:`rem_env.quantization.quantize_model`).
        autocast: None (the default) or ``"bf16"``: run the world model and the decoder under
            ``torch.autocast`` with bfloat16 on ``device`` (weights stay float32; retention
            states, rewards and observations keep their float32 / uint8 / int64 dtypes). For
            GPUs with bfloat16 units: CPUs without them (most) run it many times slower.
        threads: CPU threads of each reset, step and render: ``"auto"`` (the default: torch's
            thread count, less the cores that other processes kept busy over the last quarter
            second, so that a busy neighbour slows a dream gracefully instead of stalling
            every parallel operator; see :class:`rem_env.threads.StepThreads`) or a positive
            int. Torch's own setting is put back after each call.
        temperature: Sampling temperature of the observation tokens, and of the reward and end
            heads unless ``event_temperature`` is given (0 = argmax; 1, the default, as REM).
        event_temperature: Sampling temperature of the reward and end heads (None: the same
            as ``temperature``). ``temperature=0, event_temperature=1`` dreams each frame's
            likeliest tokens (a sharper ball) yet rewards and ends at their predicted rates:
            a lower ``temperature`` alone also makes rewards and ends rarer.
        max_episode_steps: Episodes are truncated after this many steps (None: never).
        autoreset_mode: ``NEXT_STEP`` (default: an env that ended is reset by the next ``step``,
            which ignores its action and returns its first observation with reward 0),
            ``SAME_STEP`` (reset inside the ending step; ``infos["final_obs"]`` and
            ``infos["final_info"]`` hold the last observation) or ``DISABLED`` (reset yourself
            with ``reset(options={"reset_mask": mask})``). Strings are accepted too.
        output: ``"numpy"`` (arrays on the host: one device-to-host copy per output per step) or
            ``"torch"`` (tensors that stay on ``device``; no host copies and no device syncs per
            step, except checking the range of action tensors if ``validate_actions``).
        render_mode: None or ``"rgb_array"``.
        validate_actions: Check action values (on the host for numpy actions).
        revision: Hub revision (branch, tag or commit) when ``model`` is a repo id.

    Example:
        >>> from rem_env import DreamVectorEnv, REMConfig, REMModel
        >>> model = REMModel(REMConfig.preset("tiny", num_actions=4))
        >>> envs = DreamVectorEnv(model, num_envs=3, obs_type="rgb")
        >>> obs, infos = envs.reset(seed=0)
        >>> obs.shape, obs.dtype
        ((3, 16, 16, 3), dtype('uint8'))
        >>> obs, rewards, terminated, truncated, infos = envs.step(envs.action_space.sample())
        >>> rewards.shape, terminated.dtype
        ((3,), dtype('bool'))
        >>> envs.close()
    """

    _host_views = True
    """Use free host views of masks on CPU (tests turn it off to run the accelerator path)."""

    metadata: dict[str, Any] = {  # noqa: RUF012 (gymnasium's convention)
        "render_modes": ["rgb_array"],
        "render_fps": RENDER_FPS,
        "autoreset_mode": AutoresetMode.NEXT_STEP,
    }

    def __init__(
        self,
        model: REMModel | str | os.PathLike[str],
        num_envs: int = 1,
        *,
        obs_type: ObsType = "rgb",
        device: str | torch.device | None = None,
        quantize: Quantization | None = None,
        autocast: Autocast | None = None,
        threads: Threads = AUTO,
        temperature: float = 1.0,
        event_temperature: float | None = None,
        max_episode_steps: int | None = None,
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
        output: OutputType = "numpy",
        render_mode: str | None = None,
        validate_actions: bool = True,
        revision: str | None = None,
    ) -> None:
        fork_safe_threads()
        model = load_model(model, revision=revision)
        if quantize is not None and quantize not in QUANTIZATIONS:
            raise ValueError(
                f"quantize must be None or one of {list(QUANTIZATIONS)}, got {quantize!r}"
            )
        if autocast is not None and autocast not in AUTOCAST_DTYPES:
            raise ValueError(
                f"autocast must be None or one of {list(AUTOCAST_DTYPES)}, got {autocast!r}"
            )
        if autocast is not None and quantize is not None:
            raise ValueError("choose quantize or autocast, not both (int8 layers run in int8)")
        step_threads = StepThreads(threads)
        if (
            isinstance(num_envs, bool)
            or not isinstance(num_envs, (int, np.integer))
            or num_envs < 1
        ):
            raise ValueError(f"num_envs must be a positive int, got {num_envs!r}")
        if obs_type not in OBS_TYPES:
            raise ValueError(f"unknown obs_type {obs_type!r}; choose one of {list(OBS_TYPES)}")
        if output not in ("numpy", "torch"):
            raise ValueError(f"output must be 'numpy' or 'torch', got {output!r}")
        check_temperature("temperature", temperature)
        if event_temperature is not None:
            check_temperature("event_temperature", event_temperature)
        if max_episode_steps is not None and (
            not isinstance(max_episode_steps, (int, np.integer)) or max_episode_steps < 1
        ):
            raise ValueError(f"max_episode_steps must be None or >= 1, got {max_episode_steps!r}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        mode = _autoreset_mode(autoreset_mode)
        if device is not None:
            device = check_device(device)
        where = device if device is not None else next(model.parameters()).device
        _check_memory(model, int(num_envs), obs_type, where)

        if device is not None:
            model.to(device)
        if quantize is not None:
            model = quantize_model(model, quantize)  # a copy; the float model stays as it was
        self.model = model.eval()
        self.autocast: Autocast | None = autocast
        self.step_threads = step_threads
        self.num_envs = int(num_envs)
        self.obs_type: ObsType = obs_type
        self.output: OutputType = output
        self.temperature = float(temperature)
        self.event_temperature = None if event_temperature is None else float(event_temperature)
        self.max_episode_steps = None if max_episode_steps is None else int(max_episode_steps)
        self.render_mode = render_mode
        self.validate_actions = validate_actions
        self.metadata = {**type(self).metadata, "autoreset_mode": mode}

        self.single_observation_space = _observation_space(model, obs_type)
        self.single_action_space = spaces.Discrete(model.num_actions)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)

        self._state: ImaginationState | None = None
        self._seeds: Tensor | None = None  # (B,) int64
        self._counters: Tensor | None = None  # (B,) int64
        self._elapsed: Tensor | None = None  # (B,) int64 steps since each env's reset
        self._pending: Tensor | None = None  # (B,) bool: NEXT_STEP resets due at the next step
        self._pending_host: np.ndarray | None = None  # (B,) its host copy in numpy mode

    # ------------------------------------------------------------------------------- properties

    @property
    def device(self) -> torch.device:
        """Where the dreams live (read from the model's parameters)."""
        return next(self.model.parameters()).device

    @property
    def autoreset_mode(self) -> AutoresetMode:
        """The autoreset mode, as in ``metadata["autoreset_mode"]``."""
        return self.metadata["autoreset_mode"]

    @property
    def state(self) -> ImaginationState | None:
        """The current imagination state of the batch (None before the first reset)."""
        return self._state

    # ------------------------------------------------------------------------------------ reset

    def reset(
        self, *, seed: int | Sequence[int] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Resets all envs, or those in ``options["reset_mask"]``.

        Args:
            seed: An int ``s`` (env ``i`` gets ``s + i``), one seed per env, or None (first
                reset: fresh entropy; later: the streams go on).
            options: ``"reset_mask"``: (num_envs,) bool array or tensor, the envs to reset;
                ``"contexts"``: ``(tokens (n, C, K), actions (n, C-1))`` to start the n reset
                envs from, instead of drawing from the model's start contexts;
                ``"history"`` (with ``"contexts"``): ``(n, N, K)`` tokens of the real frames
                before them, -1 where unknown, for a world model whose frame conv or event
                window reads more frames than the contexts hold.

        Returns:
            ``(observations, infos)`` of all envs (unchanged ones keep their observation).
        """
        self._check_open()
        options = {} if options is None else options
        if not isinstance(options, dict):
            raise TypeError(f"options must be a dict or None, got {type(options).__name__}")
        unknown = sorted(set(options) - {"reset_mask", "contexts", "history"})
        if unknown:
            raise ValueError(
                f"unknown reset options {unknown}; known: ['contexts', 'history', 'reset_mask']"
            )
        mask = self._reset_mask(options.get("reset_mask"))
        seeds = self._seed_list(seed)
        contexts = None
        if options.get("contexts") is not None:
            contexts = check_contexts(
                self.model, options["contexts"], int(mask.sum()), self.device,
                options.get("history"),
            )  # fmt: skip
        elif options.get("history") is not None:
            raise ValueError(
                "the 'history' reset option goes with 'contexts': the frames before them"
            )
        super().reset(seed=int(seed) if isinstance(seed, (int, np.integer)) else None)

        device = self.device
        mask_t = torch.as_tensor(mask, device=device)
        if self._seeds is None:
            if seeds is None:
                base = int(np.random.SeedSequence().generate_state(1, np.uint64)[0] >> 2)
                seeds = [base + i for i in range(self.num_envs)]
            self._seeds = torch.tensor(seeds, dtype=torch.long, device=device)
            self._counters = torch.zeros(self.num_envs, dtype=torch.long, device=device)
            self._elapsed = torch.zeros(self.num_envs, dtype=torch.long, device=device)
            self._pending = torch.zeros(self.num_envs, dtype=torch.bool, device=device)
        elif seeds is not None:
            new = torch.tensor(seeds, dtype=torch.long, device=device)
            self._seeds = torch.where(mask_t, new, self._seeds)
            self._counters = torch.where(mask_t, 0, self._counters)
        with self._computing():
            uniforms = self._draw(1)[:, 0]  # (B,) context choice
            self._counters = self._counters - (~mask_t).long()  # only reset envs consume
            self._state = self._restart(self._state, mask_t, mask, uniforms, contexts)
            self._elapsed = torch.where(mask_t, 0, self._elapsed)
            self._pending = self._pending & ~mask_t
            self._pending_host = self._pending.cpu().numpy() if self.output == "numpy" else None
            obs = self._observe(self._state.obs_tokens)
        return self._out(obs), {}

    def _reset_mask(self, mask: Any) -> np.ndarray:
        """(B,) host bool mask of the envs to reset."""
        if mask is None:
            return np.ones(self.num_envs, dtype=bool)
        if isinstance(mask, Tensor):
            mask = mask.detach().cpu().numpy()
        mask = np.asarray(mask)
        if mask.dtype != np.bool_ or mask.shape != (self.num_envs,):
            raise ValueError(
                f"reset_mask must be a bool array of shape ({self.num_envs},), "
                f"got dtype {mask.dtype} and shape {mask.shape}"
            )
        if not mask.any():
            raise ValueError("reset_mask must select at least one env")
        if self._state is None and not mask.all():
            raise gym.error.ResetNeeded("the first reset must reset all envs (no reset_mask)")
        return mask

    def _seed_list(self, seed: int | Sequence[int] | None) -> list[int] | None:
        """One int seed per env, or None."""
        if seed is None:
            return None
        if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
            last = MAX_SEED - (self.num_envs - 1)  # env i gets seed + i
            if not 0 <= seed <= last:
                raise ValueError(
                    f"seed must be an int in [0, 2**63 - {self.num_envs}] for {self.num_envs} "
                    f"envs (env i gets seed + i, at most 2**63 - 1), got {int(seed)}"
                )
            seeds = [int(seed) + i for i in range(self.num_envs)]
        elif (
            isinstance(seed, Sequence) and not isinstance(seed, str) and len(seed) == self.num_envs
        ):
            seeds = list(seed)
        else:
            raise TypeError(
                f"seed must be None, an int or a sequence of {self.num_envs} ints, got {seed!r}"
            )
        for s in seeds:
            if (
                isinstance(s, bool)
                or not isinstance(s, (int, np.integer))
                or not 0 <= s <= MAX_SEED
            ):
                raise ValueError(f"seeds must be ints in [0, 2**63 - 1], got {s!r}")
        return [int(s) for s in seeds]

    # ------------------------------------------------------------------------------------- step

    def step(self, actions: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        """Advances every env by one imagined step (one world-model forward for the batch).

        Args:
            actions: (num_envs,) integer actions (array, list or tensor) in the action set.

        Returns:
            ``(observations, rewards, terminated, truncated, infos)``; rewards are float32 in
            {-1, 0, 1}; infos is a dict of arrays (``final_obs``/``final_info`` in SAME_STEP).
        """
        self._check_open()
        if self._state is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        actions_t = self._actions(actions)
        mode = self.autoreset_mode
        infos: dict[str, Any] = {}
        with self._computing():
            if self.model.training:
                self.model.eval()
            k = self.model.config.tokenizer.tokens_per_frame
            u = self._draw(k + 3)  # (B, K+3): obs tokens, reward, end, context choice
            noise = StepNoise(u[:, :k], u[:, k], u[:, k + 1])
            step, state = self.model.imagine_step(
                self._state,
                actions_t,
                self.temperature,
                noise,
                event_temperature=self.event_temperature,
            )
            rewards = step.rewards.float()
            terminated = step.ends
            self._elapsed = self._elapsed + 1
            truncated = self._truncated()
            if mode == AutoresetMode.NEXT_STEP:
                due = self._pending
                due_host = self._pending_host if self.output == "numpy" else self._host_view(due)
                state = self._restart(state, due, due_host, u[:, k + 2], None)
                rewards = rewards.masked_fill(due, 0.0)
                terminated = terminated & ~due
                truncated = truncated & ~due
                self._elapsed = torch.where(due, 0, self._elapsed)
                obs = self._observe(state.obs_tokens)
                self._pending = terminated | truncated
            elif mode == AutoresetMode.SAME_STEP:
                done = terminated | truncated
                final_obs = self._observe(step.obs_tokens)
                done_host = done.cpu().numpy() if self.output == "numpy" else self._host_view(done)
                state = self._restart(state, done, done_host, u[:, k + 2], None)
                self._elapsed = torch.where(done, 0, self._elapsed)
                if done_host is None or done_host.any():
                    obs = self._observe(state.obs_tokens)
                else:
                    obs = final_obs
                infos = self._final_infos(final_obs, done, done_host)
            else:
                obs = self._observe(state.obs_tokens)
        self._state = state
        if self.output == "torch":
            return obs, rewards, terminated, truncated, infos
        terminated_np = terminated.cpu().numpy()
        truncated_np = truncated.cpu().numpy()
        if mode == AutoresetMode.NEXT_STEP:
            self._pending_host = terminated_np | truncated_np
        return obs.cpu().numpy(), rewards.cpu().numpy(), terminated_np, truncated_np, infos

    def _actions(self, actions: Any) -> Tensor:
        """Validated (B,) int64 actions on the env's device."""
        n, shape = self.model.num_actions, (self.num_envs,)
        if isinstance(actions, Tensor):
            if actions.dtype.is_floating_point or actions.dtype.is_complex:
                nan = (
                    " (and contain NaN)"
                    if actions.dtype.is_floating_point and bool(actions.isnan().any())
                    else ""
                )
                raise TypeError(f"actions must be integers, got a {actions.dtype} tensor{nan}")
            if actions.dtype == torch.bool:
                raise TypeError("actions must be integers, got a bool tensor")
            if tuple(actions.shape) != shape:
                raise ValueError(f"actions must have shape {shape}, got {tuple(actions.shape)}")
            result = actions.to(device=self.device, dtype=torch.long)
            if self.validate_actions and (int(result.min()) < 0 or int(result.max()) >= n):
                raise ValueError(f"actions must be in [0, {n}), got {result.tolist()}")
            return result
        try:
            array = np.asarray(actions)
        except (ValueError, TypeError) as err:
            raise TypeError(f"actions must be an integer array of shape {shape}: {err}") from None
        if not np.issubdtype(array.dtype, np.integer):
            if np.issubdtype(array.dtype, np.floating) and np.isnan(array).any():
                raise ValueError(f"actions contain NaN: {array!r}")
            raise TypeError(f"actions must be integers, got dtype {array.dtype}")
        if array.shape != shape:
            raise ValueError(f"actions must have shape {shape}, got {array.shape}")
        if self.validate_actions and (array.min() < 0 or array.max() >= n):
            raise ValueError(f"actions must be in [0, {n}), got {array.tolist()}")
        return torch.as_tensor(array.astype(np.int64, copy=False)).to(self.device)

    def _truncated(self) -> Tensor:
        if self.max_episode_steps is None:
            return torch.zeros_like(self._pending)
        return self._elapsed >= self.max_episode_steps

    def _final_infos(
        self, final_obs: Tensor, done: Tensor, done_host: np.ndarray | None
    ) -> dict[str, Any]:
        """SAME_STEP infos: gymnasium's layout in numpy mode, (B, ...) tensors in torch mode."""
        if self.output == "torch" or done_host is None:
            return {
                "final_obs": final_obs,
                "_final_obs": done,
                "final_info": {},
                "_final_info": done,
            }
        if not done_host.any():
            return {}
        rows = final_obs.cpu().numpy()
        array = np.full(self.num_envs, None, dtype=object)
        for i in np.flatnonzero(done_host):
            array[i] = rows[i]
        return {
            "final_obs": array,
            "_final_obs": done_host.copy(),
            "final_info": {},
            "_final_info": done_host.copy(),
        }

    # ---------------------------------------------------------------------------------- helpers

    def _draw(self, slots: int) -> Tensor:
        """(B, slots) uniforms from every env's stream; advances every counter by one."""
        u = hash_uniforms(self._seeds, self._counters, slots)
        self._counters = self._counters + 1
        return u

    def _restart(
        self,
        state: ImaginationState | None,
        mask: Tensor,
        host_mask: np.ndarray | None,
        uniforms: Tensor,
        contexts: Any,
    ) -> ImaginationState:
        """``state`` with the envs in ``mask`` started afresh.

        With a host view of the mask (numpy output, or a CPU device) only the reset envs are
        computed; without one (torch output on an accelerator) fresh states are computed for the
        whole batch and merged, so that no device sync is needed.
        """
        if host_mask is not None:
            index = np.flatnonzero(host_mask)
            if index.size == 0:
                assert state is not None
                return state
            index_t = torch.as_tensor(index, device=self.device)
        else:
            index_t = None
        if contexts is None:
            chosen = uniforms if index_t is None else uniforms[index_t]
            contexts = draw_start_contexts(self.model, chosen)
        position = None if state is None else state.position
        # Contexts are the model's validated ones or were checked by check_contexts: no sync.
        fresh = self.model.start_state(
            contexts.tokens, contexts.actions, position=position, check_values=False,
            history=contexts.history,
        )  # fmt: skip
        if state is None:
            return fresh
        if index_t is None:
            return state.where(mask, fresh)
        return state.index_copy(index_t, fresh)

    def _observe(self, tokens: Tensor) -> Tensor:
        """Observations of (B, K) tokens, on the device."""
        if self.obs_type == "tokens":
            return tokens.clone()  # never hand out the state's own tensor (numpy views share it)
        if self.obs_type == "latent":
            return self.model.tokenizer.to_codes(tokens, check_values=False).float()  # (B, E, h, w)
        frames = self.model.decode(tokens, check_values=False).float()  # (B, 3, H, W) in [0, 1]
        pixels = (frames * 255.0).round_().clamp_(0, 255).to(torch.uint8)
        return pixels.permute(0, 2, 3, 1).contiguous()  # (B, H, W, 3)

    def _host_view(self, mask: Tensor) -> np.ndarray | None:
        """A numpy view of a device mask where reading it is free (a CPU device), else None."""
        if mask.device.type == "cpu" and self._host_views:
            return mask.numpy()
        return None

    def _out(self, value: Tensor) -> Any:
        return value if self.output == "torch" else value.cpu().numpy()

    def _computing(self, inference: bool = False) -> contextlib.ExitStack:
        """No autograd, the ``autocast`` precision if one was chosen, and the step's threads."""
        stack = contextlib.ExitStack()
        stack.enter_context(self.step_threads.running())
        # Tensors handed out in torch mode must be usable by autograd code: no inference mode.
        use_inference = inference or self.output != "torch"
        stack.enter_context(torch.inference_mode() if use_inference else torch.no_grad())
        if self.autocast is not None:
            dtype = AUTOCAST_DTYPES[self.autocast]
            stack.enter_context(torch.autocast(self.device.type, dtype=dtype))
        return stack

    def _check_open(self) -> None:
        if self.closed:
            raise DreamEnvClosedError("this dream env is closed; create a new one")

    # ------------------------------------------------------------------------- render and close

    def render(self) -> tuple[np.ndarray, ...] | None:
        """The current frame of every env, uint8 (H, W, 3), if ``render_mode="rgb_array"``."""
        self._check_open()
        if self.render_mode is None:
            gym.logger.warn("render() called without render_mode; pass render_mode='rgb_array'")
            return None
        if self._state is None:
            raise gym.error.ResetNeeded("call reset() before render()")
        with self._computing(inference=True):
            frames = self.model.decode(self._state.obs_tokens).float()
            pixels = (frames * 255.0).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
            array = pixels.cpu().numpy()
        return tuple(array)

    def close_extras(self, **kwargs: Any) -> None:
        """Drops the imagination state."""
        self._state = None


def available_devices() -> list[str]:
    """The torch devices this machine can dream on: ``cpu``, then each CUDA GPU, then ``mps``."""
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return devices


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch.device, checked to exist on this machine.

    Raises:
        ValueError: For a name torch does not know, or a device this machine lacks (a CUDA
            device without a GPU or on a CPU-only torch build, a GPU index out of range, MPS
            off a Mac); the message names the available devices.

    Example:
        >>> check_device("cpu")
        device(type='cpu')
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"unknown device {device!r}; available here: {', '.join(available_devices())}"
        ) from None
    problem = None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = "" if torch.version.cuda else " (this torch is a CPU-only build)"
            problem = f"CUDA is not available{build}"
        elif dev.index is not None and dev.index >= torch.cuda.device_count():
            problem = f"there are {torch.cuda.device_count()} CUDA device(s)"
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            problem = "MPS (Apple GPUs) is not available"
    elif dev.type not in ("cpu", "meta"):
        backend = getattr(torch, dev.type, None)
        available = getattr(backend, "is_available", None)
        if callable(available) and not available():
            problem = f"{dev.type} is not available"
    if problem is not None:
        raise ValueError(
            f"device {str(device)!r} cannot be used: {problem}; available here: "
            f"{', '.join(available_devices())}"
        )
    return dev


def _total_memory(device: torch.device) -> int | None:
    """Bytes of memory of ``device`` (the machine's RAM for the CPU), None if unknown."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    if device.type != "cpu":
        return None
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows)
        return None


def _check_memory(model: REMModel, num_envs: int, obs_type: ObsType, device: torch.device) -> None:
    """Refuses a batch whose per-env buffers alone cannot fit in memory.

    A lower bound: each env keeps one retention state per layer and its frame's tokens on
    ``device``, and its observation plus the batched observation space's bounds (two arrays of
    observations) on the host; a step needs more (the model's activations).
    """
    wm, tok = model.config.world_model, model.config.tokenizer
    state = wm.num_layers * wm.num_heads * wm.head_dim**2 * 4 + tok.tokens_per_frame * 8
    space = _observation_space(model, obs_type)
    obs = int(np.prod(space.shape)) * space.dtype.itemsize
    if device.type == "cpu":
        checks = [(device, state + 4 * obs)]
    else:  # the state and an observation on the device; a copy and the bounds on the host
        checks = [(device, state + obs), (torch.device("cpu"), 3 * obs)]
    for where, per_env in checks:
        total = _total_memory(where)
        if total is not None and num_envs * per_env > total:
            raise ValueError(
                f"num_envs={num_envs:,} needs at least {_bytes(num_envs * per_env)} of "
                f"{'RAM' if where.type == 'cpu' else str(where) + ' memory'} "
                f"({_bytes(per_env)} per env for its dream state, observation and "
                f"observation-space bounds) but this machine has {_bytes(total)}; use at most "
                f"{total // per_env:,} envs (fewer in practice: a step needs room for the "
                "model's activations too)"
            )


def _bytes(count: int) -> str:
    """``count`` bytes in bytes, KiB, MiB, GiB or TiB."""
    if count < 1024:
        return f"{count} bytes"
    size, units = count / 1024, ["KiB", "MiB", "GiB", "TiB"]
    while size >= 1024 and len(units) > 1:
        size, units = size / 1024, units[1:]
    return f"{size:.1f} {units[0]}"


def _autoreset_mode(value: AutoresetMode | str) -> AutoresetMode:
    """An AutoresetMode from itself or a name such as ``"next_step"`` or ``"NextStep"``."""
    if isinstance(value, AutoresetMode):
        return value
    if isinstance(value, str):
        key = value.replace("_", "").lower()
        for mode in AutoresetMode:
            if mode.value.lower() == key:
                return mode
    names = [m.value for m in AutoresetMode]
    raise ValueError(f"unknown autoreset_mode {value!r}; choose one of {names} (or next_step, ...)")


def _observation_space(model: REMModel, obs_type: ObsType) -> spaces.Box:
    tok = model.config.tokenizer
    if obs_type == "rgb":
        return spaces.Box(0, 255, (tok.image_size, tok.image_size, 3), np.uint8)
    if obs_type == "tokens":
        return spaces.Box(0, tok.vocab_size - 1, (tok.tokens_per_frame,), np.int64)
    side = tok.latent_size
    return spaces.Box(-np.inf, np.inf, (tok.embed_dim, side, side), np.float32)
