"""Device placement: every model path keeps its tensors on the model's device.

No GPU runs in CI, so these tests run the model code on PyTorch's ``meta`` device instead
(shapes and dtypes, no data). Mixing a meta tensor with a non-scalar CPU tensor raises, as
mixing a CUDA tensor with a CPU one does, so a tensor made without ``device=`` on one of these
paths fails here before it fails on the first GPU. What meta cannot stand in for: reading a
value back to the host (``.item()``, ``bool(tensor)``) fails on meta for a reason of its own, so
the host-side value checks are switched off (``check_values=False``) and the loss functions,
which return Python-float metrics, are replaced by plain sums of the outputs they read.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode

import rem_env.dream
from rem_env import REMConfig, REMModel
from rem_env.contexts import StartContexts
from rem_env.dream import DreamVectorEnv
from rem_env.models.actor_critic import ActorCritic
from rem_env.models.sampling import StepNoise
from rem_train.batches import frames_to_tensor
from rem_train.collect import Collector
from rem_train.export import sample_start_contexts
from rem_train.imagination import Imagination, StartPoint
from rem_train.replay import ReplayBuffer

META = torch.device("meta")
B = 3


def _config(pop: bool = True) -> REMConfig:
    config = REMConfig.preset("tiny", num_actions=4)
    world_model = dataclasses.replace(config.world_model, pop=pop)
    return dataclasses.replace(config, world_model=world_model)


def _meta_model(pop: bool = True) -> REMModel:
    torch.manual_seed(0)
    return REMModel(_config(pop)).to(META)


def test_mixing_a_meta_and_a_cpu_tensor_raises() -> None:
    """The premise of this module: a CPU tensor created by mistake makes meta code raise."""
    with pytest.raises(RuntimeError, match="device"):
        torch.ones(3, device=META) + torch.ones(3)


@pytest.mark.parametrize("pop", [True, False], ids=["pop", "token-by-token"])
def test_imagination_steps_and_decoding_stay_on_the_device(pop: bool) -> None:
    model = _meta_model(pop).eval()
    k = model.config.tokenizer.tokens_per_frame
    size = model.config.tokenizer.image_size
    actions = torch.zeros(B, dtype=torch.long, device=META)
    with torch.inference_mode():
        state = model.start_state(
            model.start_tokens[:B], model.start_actions[:B], check_values=False
        )
        for _ in range(2):
            uniforms = torch.rand(B, k + 2, device=META)
            noise = StepNoise(uniforms[:, :k], uniforms[:, k], uniforms[:, k + 1])
            step, state = model.imagine_step(state, actions, noise=noise)
        frames = model.decode(step.obs_tokens, check_values=False)
    assert {step.obs_tokens.device, step.rewards.device, step.ends.device} == {META}
    assert {s.device for s in state.retention} == {META}
    assert frames.device == META and frames.shape == (B, 3, size, size)


@pytest.mark.parametrize("obs_type", ["rgb", "tokens", "latent"])
def test_torch_mode_dream_env_steps_and_resets_on_the_device(obs_type: str) -> None:
    env = DreamVectorEnv(
        _meta_model().eval(),
        B,
        obs_type=obs_type,
        output="torch",
        autoreset_mode=AutoresetMode.NEXT_STEP,
        validate_actions=False,
    )
    obs, _ = env.reset(seed=0)
    for _ in range(3):  # the random end head ends some dreams: the resets run too (masked)
        obs, rewards, terminated, truncated, _ = env.step(
            torch.zeros(B, dtype=torch.long, device=META)
        )
    assert {obs.device, rewards.device, terminated.device, truncated.device} == {META}
    env.close()


@pytest.mark.parametrize("pop", [True, False], ids=["pop", "token-by-token"])
def test_training_forwards_and_backwards_stay_on_the_device(pop: bool) -> None:
    model = _meta_model(pop).train()
    tok = model.config.tokenizer
    frames = torch.rand(B, 3, tok.image_size, tok.image_size, device=META)
    out = model.tokenizer(frames)
    (out.reconstruction.sum() + out.codes.sum() + out.z.sum()).backward()

    t = 4
    tokens = torch.randint(tok.vocab_size, (B, t, tok.tokens_per_frame), device=META)
    actions = torch.randint(model.num_actions, (B, t), device=META)
    wm = model.world_model(tokens, actions, model.tokenizer.codebook)
    loss = wm.obs_logits.sum() + wm.reward_logits.sum() + wm.end_logits.sum()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and {g.device for g in grads} == {META}


def test_actor_critic_rollout_in_imagination_stays_on_the_device(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The reset's range check of the start contexts reads them back (min/max): skipped here.
    monkeypatch.setattr(
        rem_env.dream,
        "check_contexts",
        lambda model, contexts, count, device, history=None: StartContexts(*contexts, history),
    )
    model = _meta_model().eval()
    torch.manual_seed(0)
    actor_critic = ActorCritic.from_config(model.config, hidden_size=16).to(META)
    imagination = Imagination(model, num_envs=B)
    start = StartPoint(
        actor_critic.initial_state(B), model.start_tokens[:B], model.start_actions[:B]
    )
    rollout = imagination.rollout(actor_critic, start, steps=3, seed=0)
    (rollout.logits.sum() + rollout.values.sum()).backward()
    assert {rollout.tokens.device, rollout.rewards.device, rollout.ends.device} == {META}
    assert actor_critic.actor.weight.grad.device == META
    imagination.close()


def test_frames_of_a_batch_on_the_device_are_encoded_there() -> None:
    """A replay batch moved to the model's device stays there on its way to the tokenizer
    (the export's start contexts, the event and object checks, imagination's start points)."""
    frames = torch.zeros(2, 16, 16, 3, dtype=torch.uint8, device=META)
    assert frames_to_tensor(frames).device == META
    assert frames_to_tensor(np.zeros((2, 4, 4, 3), np.uint8)).device.type == "cpu"


def test_collecting_burns_the_ongoing_episode_in_on_the_device(tmp_path: Path) -> None:
    """The second collection of a run burns the actor-critic in on the episode it left off:
    the replay's last frames must be encoded where the model is (on a GPU: the second epoch)."""
    model = _meta_model().eval()
    size = model.config.tokenizer.image_size
    actor_critic = ActorCritic.from_config(model.config, hidden_size=16).to(META)
    replay = ReplayBuffer(tmp_path / "replay", obs_shape=(size, size, 3), fsync=False)
    frame = np.zeros((size, size, 3), np.uint8)
    for action in range(3):
        replay.append(frame, action, 0.0, terminated=False)
    collector = Collector(
        "Breakout", seed=0, temperature=1.0, epsilon=0.0, burn_in=4, burn_in_actions=True
    )
    collector.obs = frame  # an episode is under way
    try:  # failed before the fix: the frames were copied to the CPU, off the model's device
        collector.collect(model, actor_critic, replay, num_steps=0)
    finally:
        collector.close()
        replay.close()


def test_the_exported_start_contexts_are_encoded_on_the_device(tmp_path: Path) -> None:
    """An export samples real openings from the replay and encodes them with the model."""
    model = _meta_model().eval()
    size = model.config.tokenizer.image_size
    replay = ReplayBuffer(tmp_path / "replay", obs_shape=(size, size, 3), fsync=False)
    for action in range(4):
        replay.append(np.zeros((size, size, 3), np.uint8), action, 0.0, terminated=False)
    try:
        tokens, actions = sample_start_contexts(model, replay, 2, np.random.default_rng(0))
    finally:
        replay.close()
    assert tokens.device == META and actions.device == META
