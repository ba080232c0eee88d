"""The event reader: reward and end logits read from decoded pixels, in training and in dreams."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from rem_env import REMConfig, REMModel
from rem_env.dream import DreamVectorEnv
from rem_env.models.event_reader import EventReader
from rem_env.models.sampling import StepNoise


def _models(width: int = 8) -> tuple[REMModel, REMModel]:
    """A tiny model and the same model with an event reader (at zero)."""
    config = REMConfig.preset("tiny", num_actions=4)
    torch.manual_seed(0)
    plain = REMModel(config).eval()
    world_model = dataclasses.replace(config.world_model, event_reader_width=width)
    reader = REMModel(dataclasses.replace(config, world_model=world_model)).eval()
    missing, unexpected = reader.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(".event_reader." in key for key in missing)
    return plain, reader


def test_a_model_gaining_an_event_reader_dreams_and_trains_as_before() -> None:
    plain, reader = _models()
    actions = torch.tensor([0, 1, 2])
    with torch.inference_mode():
        a = plain.start_state(plain.start_tokens[:3], plain.start_actions[:3])
        b = reader.start_state(plain.start_tokens[:3], plain.start_actions[:3])
        assert a.previous_obs_tokens is None and b.previous_obs_tokens is not None
        for seed in range(3):
            k = plain.world_model.tokens_per_obs
            noise = StepNoise.draw(3, k, torch.device("cpu"), torch.Generator().manual_seed(seed))
            step_a, a = plain.imagine_step(a, actions, noise=noise)
            step_b, b = reader.imagine_step(b, actions, noise=noise)
            assert torch.equal(step_a.obs_tokens, step_b.obs_tokens)
            assert torch.equal(step_a.reward_logits, step_b.reward_logits)
            assert torch.equal(step_a.end_logits, step_b.end_logits)
        tokens = torch.randint(plain.config.tokenizer.vocab_size, (2, 5, k))
        segment_actions = torch.randint(4, (2, 5))
        want = plain.forward_segments(tokens, segment_actions)
        got = reader.forward_segments(tokens, segment_actions)
    for x, y in zip(want, got, strict=True):
        assert torch.equal(x, y)


def test_the_reader_reads_the_decoded_frames_of_the_step_and_the_one_before() -> None:
    _, model = _models()
    seen: list[torch.Tensor] = []
    model.world_model.event_reader.register_forward_hook(
        lambda module, args, out: seen.append(args[0])
    )
    tokens = model.start_tokens[:2]  # (2, C, K): contexts of C frames
    with torch.inference_mode():
        state = model.start_state(tokens[:, -1:], model.start_actions[:2, :0])  # one frame
        _, state = model.imagine_step(state, torch.tensor([1, 2]))
        first = model.decode(tokens[:, -1])  # no frame before: the current one twice
        assert torch.equal(seen[0][:, 0], first) and torch.equal(seen[0][:, 1], first)
        _, state = model.imagine_step(state, torch.tensor([1, 2]))
        assert torch.equal(seen[1][:, 0], first)
        assert torch.equal(seen[1][:, 1], model.decode(state.previous_obs_tokens))
        # The training forward: each block's frame and the one before (the first: twice).
        segment = torch.stack([tokens[:, -1], state.previous_obs_tokens, state.obs_tokens], 1)
        model.forward_segments(segment, torch.zeros(2, 3, dtype=torch.long))
    pairs = seen[2].unflatten(0, (2, 3))  # (B, T, 2, 3, H, W)
    decoded = model.segment_frames(segment)
    assert torch.equal(pairs[:, 0, 0], decoded[:, 0]) and torch.equal(pairs[:, 2, 0], decoded[:, 1])
    assert torch.equal(pairs[:, :, 1], decoded)


def test_the_readers_logits_decide_the_dreamed_rewards_and_ends() -> None:
    _, model = _models()
    with torch.no_grad():  # the reader is sure of a reward of +1 and an end at every step
        model.world_model.event_reader.out.bias.copy_(torch.tensor([0.0, 0.0, 50.0, 0.0, 50.0]))
    with torch.inference_mode():
        state = model.start_state(model.start_tokens[:4], model.start_actions[:4])
        step, _ = model.imagine_step(state, torch.tensor([0, 1, 2, 3]))
    assert step.rewards.tolist() == [1.0] * 4 and step.ends.all()
    env = DreamVectorEnv(model, num_envs=3, obs_type="tokens")  # no frames handed out, still read
    env.reset(seed=0)
    _, rewards, terminated, _, _ = env.step(np.array([0, 1, 2]))
    assert rewards.tolist() == [1.0] * 3 and terminated.all()
    env.close()


def test_missing_frames_are_a_clear_error() -> None:
    _, model = _models()
    k = model.world_model.tokens_per_obs
    tokens, actions = torch.randint(16, (1, 3, k)), torch.zeros(1, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="has an event reader: pass frames"):
        model.world_model(tokens, actions, model.tokenizer.codebook)
    with pytest.raises(ValueError, match=r"frames must be \(1, 3, 3\)"):
        model.world_model(tokens, actions, model.tokenizer.codebook, frames=torch.zeros(1, 3, 16))
    state = model.start_state(model.start_tokens[:1], model.start_actions[:1])
    with pytest.raises(ValueError, match="has an event reader: pass frames"):
        model.world_model.step(state, torch.tensor([0]), model.tokenizer.codebook)
    with pytest.raises(ValueError, match=r"frames must be \(N, 2, 3, H, W\)"):
        EventReader(4, 8)(torch.zeros(2, 3, 16, 16), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="event_reader_width"):
        dataclasses.replace(model.config.world_model, event_reader_width=-1)


def test_a_model_with_an_event_reader_saves_and_loads(tmp_path: Path) -> None:
    _, model = _models()
    torch.nn.init.normal_(model.world_model.event_reader.out.weight)
    model.save_pretrained(tmp_path / "m")
    loaded = REMModel.from_pretrained(tmp_path / "m")
    assert loaded.config.world_model.event_reader_width == 8
    state = loaded.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(state[key], value), key
