"""DreamVectorEnv and DreamEnv: API, autoreset, seeding, batching, bad input, long dreams."""

from __future__ import annotations

import dataclasses
import gc
import re
import resource
import sys
import warnings
from collections.abc import Iterator
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode

import rem_env
from rem_env import DreamEnv, DreamVectorEnv, REMConfig, REMModel
from rem_env.dream import DreamEnvClosedError

OBS_TYPES = ("rgb", "tokens", "latent")
USER_ERRORS = (ValueError, TypeError, gym.error.Error)
OWN_MODULES = ("dream.py", "contexts.py", "noise.py")


@pytest.fixture(scope="module")
def model() -> REMModel:
    torch.manual_seed(0)
    return REMModel(REMConfig.preset("tiny", num_actions=4, game="Breakout")).eval()


def start_frames(model: REMModel) -> set[tuple[int, ...]]:
    return {tuple(t) for t in model.start_tokens[:, -1].tolist()}


def rollout(env: DreamVectorEnv, steps: int, seed: int) -> Iterator[tuple[Any, ...]]:
    actions = np.random.default_rng(seed).integers(
        0, env.single_action_space.n, (steps, env.num_envs)
    )
    yield env.reset(seed=seed)[0], None, None, None
    for t in range(steps):
        obs, rewards, terminated, truncated, _ = env.step(actions[t])
        yield obs, rewards, terminated, truncated


# ----------------------------------------------------------------------------- single env checks


@pytest.mark.parametrize("obs_type", OBS_TYPES)
def test_gymnasium_check_env_passes(model: REMModel, obs_type: str) -> None:
    env = gym.make("REM-Breakout-v0", model=model, obs_type=obs_type, render_mode="rgb_array")
    check_env(env.unwrapped)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "env is wrapped" advice and the latent space's bounds
        check_env(env)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    frame = env.render()
    assert frame.shape == (16, 16, 3) and frame.dtype == np.uint8
    env.close()


def test_dream_env_steps_and_accepts_scalar_actions(model: REMModel) -> None:
    env = DreamEnv(model, obs_type="tokens", max_episode_steps=2)
    env.reset(seed=3)
    for action in (0, np.int64(1), np.array(2), np.array([3]), torch.tensor(1)):
        obs, reward, terminated, truncated, info = env.step(action)
        assert obs.shape == (16,) and isinstance(reward, float) and info == {}
        if terminated or truncated:
            env.reset()
    for bad in (1.5, "a", None, True, [0, 1], 7, -1):
        with pytest.raises(USER_ERRORS):
            env.step(bad)
    with pytest.raises(ValueError, match="reset_mask"):
        env.reset(options={"reset_mask": np.array([True])})


@pytest.mark.parametrize("how", ["terminated", "truncated"])
def test_stepping_an_ended_episode_raises_until_reset(model: REMModel, how: str) -> None:
    """gym.make's wrappers only enforce the first reset; the env enforces the others."""
    env: gym.Env = (
        gym.make("REM-Breakout-v0", model=model, obs_type="tokens", temperature=0.0)
        if how == "terminated"
        else DreamEnv(model, obs_type="tokens", temperature=0.0, max_episode_steps=1)
    )
    ends = model.world_model.head_end[-1].bias
    with torch.no_grad():
        saved = ends.clone()
        ends.copy_(torch.tensor([-50.0, 50.0] if how == "terminated" else [50.0, -50.0]))
    try:
        env.reset(seed=0)
        *_, terminated, truncated, _ = env.step(0)
        assert (terminated, truncated) == (how == "terminated", how == "truncated")
        for _ in range(2):
            with pytest.raises(gym.error.ResetNeeded, match="call reset"):
                env.step(0)
        env.reset(seed=1)
        env.step(1)  # a new episode steps again
    finally:
        with torch.no_grad():
            ends.copy_(saved)
    env.close()


# ----------------------------------------------------------------------------- vector env checker


def check_vector_env(env: DreamVectorEnv, model: REMModel, steps: int = 12) -> None:
    """Spaces, dtypes, batch shapes and infos of a vector env over a few steps."""
    n = env.num_envs
    assert env.observation_space == gym.vector.utils.batch_space(env.single_observation_space, n)
    assert env.action_space == gym.vector.utils.batch_space(env.single_action_space, n)
    assert isinstance(env.metadata["autoreset_mode"], AutoresetMode)
    obs, infos = env.reset(seed=11)
    assert env.observation_space.contains(obs) and isinstance(infos, dict)
    ended = np.zeros(n, dtype=bool)
    frames = start_frames(model)
    for _ in range(steps):
        obs, rewards, terminated, truncated, infos = env.step(env.action_space.sample())
        assert env.observation_space.contains(obs)
        assert obs.shape == (n, *env.single_observation_space.shape)
        assert rewards.shape == terminated.shape == truncated.shape == (n,)
        assert rewards.dtype == np.float32 and set(np.unique(rewards)) <= {-1.0, 0.0, 1.0}
        assert terminated.dtype == truncated.dtype == np.bool_
        assert isinstance(infos, dict)
        if env.autoreset_mode == AutoresetMode.NEXT_STEP:
            # envs that ended at the previous step were reset by this one
            assert not rewards[ended].any() and not terminated[ended].any()
            assert not truncated[ended].any()
            if env.obs_type == "tokens":
                assert all(tuple(row) in frames for row in obs[ended])
            ended = terminated | truncated
        else:
            done = terminated | truncated
            if done.any():
                assert np.array_equal(infos["_final_obs"], done)
                assert np.array_equal(infos["_final_info"], done)
                for i in range(n):
                    final = infos["final_obs"][i]
                    assert (final is not None) == done[i]
                    if done[i]:
                        assert env.single_observation_space.contains(final)
                        if env.obs_type == "tokens":
                            assert tuple(obs[i]) in frames
            else:
                assert "final_obs" not in infos


@pytest.mark.parametrize("num_envs", [1, 7])
@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
@pytest.mark.parametrize("obs_type", OBS_TYPES)
def test_vector_env_checker(
    model: REMModel, num_envs: int, mode: AutoresetMode, obs_type: str
) -> None:
    env = DreamVectorEnv(
        model, num_envs, obs_type=obs_type, autoreset_mode=mode, max_episode_steps=3
    )
    check_vector_env(env, model)
    env.close()


@pytest.mark.parametrize("num_envs", [1, 7])
def test_vector_env_determinism(model: REMModel, num_envs: int) -> None:
    def run(seed: int) -> list[tuple[Any, ...]]:
        env = DreamVectorEnv(model, num_envs, obs_type="rgb", max_episode_steps=5)
        return list(rollout(env, 12, seed))

    first, again, other = run(5), run(5), run(6)
    for a, b in zip(first, again, strict=True):
        for x, y in zip(a, b, strict=True):
            assert x is None or np.array_equal(x, y)
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(first, other, strict=True))


@pytest.mark.parametrize("num_envs", [1, 7])
def test_reset_mask_resets_only_selected_envs(model: REMModel, num_envs: int) -> None:
    env = DreamVectorEnv(model, num_envs, obs_type="tokens", autoreset_mode="disabled")
    env.reset(seed=0)
    for _ in range(3):
        obs, *_ = env.step(np.zeros(num_envs, dtype=np.int64))
    mask = np.arange(num_envs) % 2 == 0
    new_obs, _ = env.reset(options={"reset_mask": mask})
    assert np.array_equal(new_obs[~mask], obs[~mask])
    assert all(tuple(row) in start_frames(model) for row in new_obs[mask])
    obs, *_ = env.step(np.zeros(num_envs, dtype=np.int64))
    assert obs.shape == (num_envs, 16)


def test_reset_with_explicit_contexts(model: REMModel) -> None:
    env = DreamVectorEnv(model, 3, obs_type="tokens")
    tokens = np.random.default_rng(0).integers(0, 16, (3, 2, 16))
    actions = np.array([[0], [1], [2]])
    obs, _ = env.reset(seed=0, options={"contexts": (tokens, actions)})
    assert np.array_equal(obs, tokens[:, -1])
    mask = np.array([False, True, False])
    one = (torch.zeros(1, 2, 16, dtype=torch.long), torch.zeros(1, 1, dtype=torch.long))
    obs, _ = env.reset(options={"reset_mask": mask, "contexts": one})
    assert np.array_equal(obs[1], np.zeros(16)) and np.array_equal(obs[0], tokens[0, -1])
    for bad in ((tokens[:2], actions[:2]), (tokens, actions[:, :0]), (tokens + 100, actions)):
        with pytest.raises(ValueError, match="context"):
            env.reset(options={"contexts": bad})
    with pytest.raises(TypeError, match="contexts"):
        env.reset(options={"contexts": tokens})
    with pytest.raises(TypeError, match="integers"):
        env.reset(options={"contexts": (tokens.astype(float), actions)})


def test_reset_with_history_before_the_contexts() -> None:
    torch.manual_seed(0)
    config = REMConfig.preset("tiny", num_actions=4, game="Breakout")
    config = dataclasses.replace(
        config, world_model=dataclasses.replace(config.world_model, event_window_frames=5)
    )
    model = REMModel(config).eval()  # its state keeps the 4 frames before the current one
    env = DreamVectorEnv(model, 2, obs_type="tokens")
    rng = np.random.default_rng(0)
    tokens, actions = rng.integers(0, 16, (2, 2, 16)), np.array([[0], [1]])
    history = rng.integers(0, 16, (2, 3, 16))
    history[1, :2] = -1  # the second env's episode began one frame before its context
    env.reset(seed=0, options={"contexts": (tokens, actions), "history": history})
    recent = env.state.recent_obs_tokens.numpy()  # (2, 4, 16)
    assert np.array_equal(recent[:, :3], history) and np.array_equal(recent[:, 3], tokens[:, 0])
    env.reset(seed=0, options={"contexts": (tokens, actions)})
    assert (env.state.recent_obs_tokens[:, :3] == -1).all()  # without it: unknown frames
    with pytest.raises(ValueError, match="goes with 'contexts'"):
        env.reset(options={"history": history})
    for bad in (history[:1], history - 2, history[..., :4]):
        with pytest.raises(ValueError, match="history tokens"):
            env.reset(options={"contexts": (tokens, actions), "history": bad})


def test_truncation_after_max_episode_steps(model: REMModel) -> None:
    env = DreamVectorEnv(model, 4, obs_type="tokens", temperature=0.0, max_episode_steps=2)
    model_ends = model.world_model.head_end[-1].bias
    with torch.no_grad():
        saved = model_ends.clone()
        model_ends.copy_(torch.tensor([50.0, -50.0]))  # never terminate
    try:
        env.reset(seed=0)
        flags = [env.step(np.zeros(4, dtype=np.int64))[3].copy() for _ in range(6)]
    finally:
        with torch.no_grad():
            model_ends.copy_(saved)
    # NEXT_STEP: truncated at steps 2 and 5 (step 3 is the reset step)
    assert [bool(f.all()) for f in flags] == [False, True, False, False, True, False]
    assert not any(f.any() and not f.all() for f in flags)


def test_event_temperature_keeps_the_likeliest_frames_and_samples_events(model: REMModel) -> None:
    def run(**temperatures: float) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        env = DreamVectorEnv(model, 32, obs_type="tokens", **temperatures)
        env.reset(seed=5)
        out = [env.step(np.full(32, t % 4)) for t in range(3)]
        env.close()
        return [o[0] for o in out], np.stack([o[1] for o in out]), np.stack([o[2] for o in out])

    cold_obs, cold_rewards, cold_ends = run(temperature=0.0)
    warm_obs, warm_rewards, warm_ends = run(temperature=1.0)
    obs, rewards, ends = run(temperature=0.0, event_temperature=1.0)
    # Step 1 starts from the same contexts: its frame is the argmax one, its events sampled.
    assert np.array_equal(obs[0], cold_obs[0]) and not np.array_equal(obs[0], warm_obs[0])
    assert np.array_equal(rewards[0], warm_rewards[0]) and np.array_equal(ends[0], warm_ends[0])
    assert not (np.array_equal(rewards, cold_rewards) and np.array_equal(ends, cold_ends))


# ------------------------------------------------------------------------------------- batching


@pytest.mark.parametrize("num_envs", [1, 7, 32])
def test_one_world_model_forward_per_step(
    model: REMModel, num_envs: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = DreamVectorEnv(model, num_envs, obs_type="rgb", max_episode_steps=2)
    env.reset(seed=0)
    calls = {"imagine_step": 0, "world_model.step": 0}
    imagine_step, wm_step = model.imagine_step, model.world_model.step

    def counted_imagine(*args: Any, **kwargs: Any) -> Any:
        calls["imagine_step"] += 1
        return imagine_step(*args, **kwargs)

    def counted_step(*args: Any, **kwargs: Any) -> Any:
        calls["world_model.step"] += 1
        return wm_step(*args, **kwargs)

    monkeypatch.setattr(model, "imagine_step", counted_imagine)
    monkeypatch.setattr(model.world_model, "step", counted_step)
    for _ in range(5):
        env.step(env.action_space.sample())
    assert calls == {"imagine_step": 5, "world_model.step": 5}


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
def test_envs_stepped_together_equal_envs_stepped_alone(
    model: REMModel, mode: AutoresetMode
) -> None:
    check_together_equals_alone(model, mode)


@pytest.mark.parametrize("events", [False, True], ids=["frames", "frames-and-events"])
@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
def test_a_frame_conv_model_dreams_alike_together_and_alone(
    mode: AutoresetMode, events: bool
) -> None:
    """Its state keeps the frame before the current one, through partial resets too."""
    torch.manual_seed(0)
    config = REMConfig.preset("tiny", num_actions=4, game="Breakout")
    world_model = dataclasses.replace(
        config.world_model, frame_conv_layers=1, frame_conv_events=events
    )
    model = REMModel(dataclasses.replace(config, world_model=world_model)).eval()
    conv = model.world_model.frame_conv
    for layer in (conv.out, conv.event_out) if events else (conv.out,):  # they start at zero
        torch.nn.init.normal_(layer.weight)
    check_together_equals_alone(model, mode)


def check_together_equals_alone(model: REMModel, mode: AutoresetMode) -> None:
    n, steps, seed = 5, 15, 100
    actions = np.random.default_rng(0).integers(0, 4, (steps, n))
    kwargs = {"obs_type": "tokens", "autoreset_mode": mode, "max_episode_steps": 4}
    together = DreamVectorEnv(model, n, **kwargs)
    alone = [DreamVectorEnv(model, 1, **kwargs) for _ in range(n)]
    obs = together.reset(seed=seed)[0]
    for i, env in enumerate(alone):
        assert np.array_equal(env.reset(seed=seed + i)[0][0], obs[i])
    for t in range(steps):
        batched = together.step(actions[t])
        for i, env in enumerate(alone):
            single = env.step(actions[t, i : i + 1])
            for x, y in zip(batched[:4], single[:4], strict=True):
                assert np.array_equal(x[i], y[0]), (t, i)


# ------------------------------------------------------------------------------------ torch mode


def test_torch_output_stays_on_device_without_host_copies(
    model: REMModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = DreamVectorEnv(
        model, 6, obs_type="latent", output="torch", validate_actions=False, max_episode_steps=2
    )
    env._host_views = False  # as on an accelerator: masks are never read on the host
    obs, _ = env.reset(seed=0)
    assert isinstance(obs, torch.Tensor) and obs.dtype == torch.float32
    actions = torch.zeros(6, dtype=torch.long)
    synced: list[str] = []
    for name in ("cpu", "numpy", "item", "tolist", "__bool__", "__int__", "__float__"):
        original = getattr(torch.Tensor, name)

        def spy(
            self: torch.Tensor, *args: Any, _name: str = name, _orig: Any = original, **kw: Any
        ) -> Any:
            caller = sys._getframe(1).f_code.co_filename
            # host copies anywhere; syncs in the env's own modules (the model's value checks
            # in start_state/to_codes are the model's business)
            if _name in ("cpu", "numpy", "item", "tolist") or caller.endswith(OWN_MODULES):
                synced.append(f"{_name} in {caller}")
            return _orig(self, *args, **kw)

        monkeypatch.setattr(torch.Tensor, name, spy)
    for _ in range(4):
        obs, rewards, terminated, truncated, _ = env.step(actions)
    monkeypatch.undo()
    assert synced == []
    assert obs.shape == (6, 32, 4, 4) and rewards.dtype == torch.float32
    assert terminated.dtype == truncated.dtype == torch.bool
    assert not obs.is_inference()  # usable by autograd code


def test_numpy_output_copies_each_output_once(
    model: REMModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = DreamVectorEnv(model, 3, obs_type="rgb")
    env.reset(seed=0)
    copies = []
    original = torch.Tensor.cpu

    def spy(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        copies.append(tuple(self.shape))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "cpu", spy)
    env.step(np.zeros(3, dtype=np.int64))
    assert sorted(copies) == sorted([(3, 16, 16, 3), (3,), (3,), (3,)])


# ------------------------------------------------------------------------------------ bad input


def bad_calls(env: DreamVectorEnv, rng: np.random.Generator) -> Iterator[Any]:
    n = env.num_envs
    actions = [
        np.zeros(n + 1, dtype=np.int64),
        np.zeros((n, 1), dtype=np.int64),
        np.zeros(n, dtype=np.float32),
        np.full(n, np.nan),
        np.full(n, 4),
        np.full(n, -1),
        np.zeros(n, dtype=bool),
        ["a"] * n,
        None,
        object(),
        torch.zeros(n),
        torch.zeros(n, dtype=torch.bool),
        torch.full((n,), 9),
        torch.zeros(n + 2, dtype=torch.long),
        [[0, 1], [2]],
    ]
    mask_ok = np.ones(n, dtype=bool)
    options = [
        {"reset_mask": np.zeros(n, dtype=bool)},
        {"reset_mask": np.ones(n + 1, dtype=bool)},
        {"reset_mask": np.ones(n, dtype=np.int64)},
        {"unknown": 1},
        {"contexts": (np.zeros((n, 2, 15), dtype=np.int64), np.zeros((n, 1), dtype=np.int64))},
        {"contexts": (np.zeros((n, 2, 16), dtype=np.int64), np.zeros((n, 2), dtype=np.int64))},
        {"contexts": (np.full((n, 2, 16), 16), np.zeros((n, 1), dtype=np.int64))},
        {"reset_mask": mask_ok, "contexts": (np.zeros((n, 2, 16)), np.zeros((n, 1)))},
        {"contexts": "nope"},
        "not a dict",
    ]
    seeds = [-1, 2**63, 1.5, "x", [1] * (n + 1), True]
    while True:
        kind = rng.integers(3)
        if kind == 0:
            yield lambda: env.step(actions[rng.integers(len(actions))])
        elif kind == 1:
            yield lambda: env.reset(options=options[rng.integers(len(options))])
        else:
            yield lambda: env.reset(seed=seeds[rng.integers(len(seeds))])


def test_fuzz_bad_calls_raise_clear_errors_and_leave_the_env_usable(model: REMModel) -> None:
    env = DreamVectorEnv(
        model, 3, obs_type="tokens", autoreset_mode="same_step", max_episode_steps=4
    )
    twin = DreamVectorEnv(
        model, 3, obs_type="tokens", autoreset_mode="same_step", max_episode_steps=4
    )
    env.reset(seed=9)
    twin.reset(seed=9)
    rng = np.random.default_rng(0)
    calls = bad_calls(env, rng)
    for t in range(3000):
        with pytest.raises(USER_ERRORS) as info:
            next(calls)()
        assert str(info.value)
        if t % 500 == 0:  # interleave good steps: both envs must stay in lockstep
            a = rng.integers(0, 4, 3)
            for x, y in zip(env.step(a)[:4], twin.step(a)[:4], strict=True):
                assert np.array_equal(x, y)
    for _ in range(5):
        a = rng.integers(0, 4, 3)
        for x, y in zip(env.step(a)[:4], twin.step(a)[:4], strict=True):
            assert np.array_equal(x, y)


def test_lifecycle_errors(model: REMModel) -> None:
    env = DreamVectorEnv(model, 2)
    with pytest.raises(gym.error.ResetNeeded):
        env.step(np.zeros(2, dtype=np.int64))
    with pytest.raises(gym.error.ResetNeeded):
        env.reset(options={"reset_mask": np.array([True, False])})
    env.reset(seed=0)
    env.close()
    for call in (lambda: env.step(np.zeros(2, dtype=np.int64)), lambda: env.reset()):
        with pytest.raises(DreamEnvClosedError, match="closed"):
            call()


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"obs_type": "pixels"}, ValueError),
        ({"output": "jax"}, ValueError),
        ({"temperature": -1.0}, ValueError),
        ({"event_temperature": -1.0}, ValueError),
        ({"event_temperature": True}, ValueError),
        ({"max_episode_steps": 0}, ValueError),
        ({"autoreset_mode": "sometimes"}, ValueError),
        ({"render_mode": "human"}, ValueError),
        ({"num_envs": 0}, ValueError),
        ({"autocast": "fp16"}, ValueError),
        ({"autocast": "bf16", "quantize": "int8"}, ValueError),
    ],
)
def test_bad_constructor_arguments(model: REMModel, kwargs: dict[str, Any], error: type) -> None:
    kwargs = {"num_envs": 2, **kwargs}
    with pytest.raises(error):
        DreamVectorEnv(model, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": float("inf")}, "temperature must be a finite number >= 0, got inf"),
        ({"temperature": float("nan")}, "temperature must be a finite number >= 0, got nan"),
        (
            {"event_temperature": float("nan")},
            "event_temperature must be a finite number >= 0, got nan",
        ),
        ({"num_envs": 10**9}, "num_envs=1,000,000,000 needs at least"),
        ({"device": "cuda:99"}, "device 'cuda:99' cannot be used"),
        ({"device": "gpu"}, "unknown device 'gpu'; available here: cpu"),
    ],
)
def test_impossible_settings_are_refused_up_front(
    model: REMModel, kwargs: dict[str, Any], message: str
) -> None:
    kwargs = {"num_envs": 2, **kwargs}
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        DreamVectorEnv(model, **kwargs)
    if "device" in kwargs:
        assert "available here: cpu" in str(info.value)


def test_gym_make_on_a_missing_device_names_the_available_ones(model: REMModel) -> None:
    with pytest.raises(ValueError, match="available here: cpu"):
        gym.make("REM-Breakout-v0", model=model, device="cuda:99")


def test_a_seed_too_large_for_the_batch_is_reported_as_given(model: REMModel) -> None:
    env = DreamVectorEnv(model, 3, obs_type="tokens")
    top = 2**63 - 1
    with pytest.raises(ValueError, match="seed must be an int in") as info:
        env.reset(seed=top)
    assert f"got {top}" in str(info.value) and str(top + 1) not in str(info.value)
    env.reset(seed=top - 2)  # the largest that fits: env 2 gets 2**63 - 1
    assert env.np_random_seed == top - 2  # what the user gave, not a derived seed


def test_not_a_model_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="REMModel"):
        DreamVectorEnv(torch.nn.Linear(2, 2), 2)  # type: ignore[arg-type]


def test_render_returns_one_frame_per_env(model: REMModel) -> None:
    env = DreamVectorEnv(model, 3, obs_type="tokens", render_mode="rgb_array")
    env.reset(seed=0)
    frames = env.render()
    assert len(frames) == 3 and frames[0].shape == (16, 16, 3) and frames[0].dtype == np.uint8
    assert DreamVectorEnv(model, 1).render() is None or True  # no render_mode: warns, returns None


# ------------------------------------------------------------------------------------ long dream


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def test_long_dream_has_no_nan_and_no_memory_growth() -> None:
    # 3,000 steps: a leak of 10 KiB a step would show in the 2,500 steps after the first reading
    torch.manual_seed(1)
    model = REMModel(REMConfig.preset("tiny", num_actions=4))
    env = DreamVectorEnv(
        model, 2, obs_type="latent", autoreset_mode="same_step", max_episode_steps=3_000
    )
    env.reset(seed=0)
    actions = np.random.default_rng(0).integers(0, 4, (3_000, 2))
    before = 0.0
    for t in range(3_000):
        obs, rewards, *_ = env.step(actions[t])
        if t == 500:
            gc.collect()
            before = rss_mib()
        if t % 500 == 0:
            assert np.isfinite(obs).all() and np.isfinite(rewards).all()
    gc.collect()
    assert rss_mib() - before < 25.0
    assert all(torch.isfinite(r).all() for r in env.state.retention)
    assert np.isfinite(obs).all()


def test_package_exports() -> None:
    assert rem_env.DreamVectorEnv is DreamVectorEnv and "DreamEnv" in rem_env.__all__


@pytest.mark.parametrize("host_views", [True, False])
@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
def test_torch_and_numpy_outputs_dream_the_same(
    model: REMModel, mode: AutoresetMode, host_views: bool
) -> None:
    kwargs = {"obs_type": "tokens", "autoreset_mode": mode, "max_episode_steps": 3}
    numpy_env = DreamVectorEnv(model, 4, **kwargs)
    torch_env = DreamVectorEnv(model, 4, output="torch", **kwargs)
    torch_env._host_views = host_views  # False: the sync-free path of accelerators
    a, b = numpy_env.reset(seed=2)[0], torch_env.reset(seed=2)[0]
    assert np.array_equal(a, b.numpy())
    for actions in np.random.default_rng(1).integers(0, 4, (10, 4)):
        out_np = numpy_env.step(actions)
        out_t = torch_env.step(torch.as_tensor(actions))
        for x, y in zip(out_np[:4], out_t[:4], strict=True):
            assert np.array_equal(x, y.numpy())
        if mode == AutoresetMode.SAME_STEP and out_np[4]:
            done = out_np[4]["_final_obs"]
            assert np.array_equal(done, out_t[4]["_final_obs"].numpy())
            for i in np.flatnonzero(done):
                assert np.array_equal(out_np[4]["final_obs"][i], out_t[4]["final_obs"][i].numpy())


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
def test_gymnasium_vector_wrappers_work(model: REMModel, mode: AutoresetMode) -> None:
    from gymnasium.wrappers.vector import DictInfoToList, RecordEpisodeStatistics

    env = DreamVectorEnv(model, 3, obs_type="tokens", autoreset_mode=mode, max_episode_steps=3)
    env = DictInfoToList(RecordEpisodeStatistics(env))
    env.reset(seed=0)
    episodes = 0
    for _ in range(8):
        *_, infos = env.step(np.zeros(3, dtype=np.int64))
        assert isinstance(infos, list) and len(infos) == 3
        episodes += sum("episode" in info for info in infos)
    assert episodes > 0


@pytest.mark.parametrize("output", ["numpy", "torch"])
def test_writing_into_observations_does_not_change_the_dream(model: REMModel, output: str) -> None:
    envs = [DreamVectorEnv(model, 2, obs_type="tokens", output=output) for _ in range(2)]
    obs = [env.reset(seed=4)[0] for env in envs]
    obs[0][:] = 0  # a user scribbling on the first env's observations
    for _ in range(3):
        a, b = (env.step(np.array([1, 2]))[0] for env in envs)
        a[:] = 0
        assert np.array_equal(np.asarray(envs[0].state.obs_tokens), np.asarray(b))


# -------------------------------------------------------------------------- bfloat16 autocast
# Meant for GPUs; on this CPU bfloat16 is slow, but the tiny model keeps these tests quick.


def test_autocast_keeps_states_and_rewards_in_float32(model: REMModel) -> None:
    tokens, actions = model.start_tokens[:3], model.start_actions[:3]
    with torch.inference_mode():
        ref_state = model.start_state(tokens, actions)
        ref_step, _ = model.imagine_step(ref_state, torch.tensor([0, 1, 2]))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            state = model.start_state(tokens, actions)
            step, after = model.imagine_step(state, torch.tensor([0, 1, 2]))
    for s in (*state.retention, *after.retention):
        assert s.dtype == torch.float32  # a running sum over the dream: not in bfloat16
    assert step.rewards.dtype == torch.float32
    assert step.obs_logits.dtype == torch.bfloat16  # the products did run in bfloat16
    torch.testing.assert_close(step.obs_logits.float(), ref_step.obs_logits, atol=0.1, rtol=0.05)


@pytest.mark.parametrize("obs_type", OBS_TYPES)
def test_autocast_dream_env_outputs_keep_their_spaces(model: REMModel, obs_type: str) -> None:
    env = DreamVectorEnv(model, 3, obs_type=obs_type, autocast="bf16", render_mode="rgb_array")
    steps = list(rollout(env, 4, seed=0))
    for obs, rewards, terminated, truncated in steps:
        assert obs in env.observation_space
        if rewards is not None:
            assert rewards.dtype == np.float32 and set(rewards.tolist()) <= {-1.0, 0.0, 1.0}
            assert terminated.dtype == bool and truncated.dtype == bool
    assert all(s.dtype == torch.float32 for s in env.state.retention)
    assert len(env.render()) == 3
    env.close()
