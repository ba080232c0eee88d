"""Optional int8 dreaming (rem_env.quantization): a quantized copy that dreams close to the float
model, leaves it untouched, and refuses what it cannot do."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

import rem_env  # noqa: F401  (registers the envs)
from rem_env import DreamVectorEnv, REMConfig, REMModel
from rem_env.models.sampling import StepNoise
from rem_env.quantization import quantize_model


def _model() -> REMModel:
    torch.manual_seed(0)
    config = REMConfig.preset("tiny", num_actions=4)
    return REMModel(config).eval()


def test_quantized_copy_dreams_close_to_the_float_model() -> None:
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = quantize_model(model)
    assert fast.quantization == "int8" and model.quantization is None
    assert all(type(m) is not nn.Linear for m in fast.world_model.decoder.modules())
    assert any(type(m) is nn.Linear for m in model.world_model.decoder.modules())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())

    tokens, actions = model.start_tokens[:4], model.start_actions[:4]
    noise = StepNoise.draw(4, model.config.tokenizer.tokens_per_frame, torch.device("cpu"))
    with torch.inference_mode():
        exact, _ = model.imagine_step(
            model.start_state(tokens, actions), torch.arange(4), noise=noise
        )
        close, _ = fast.imagine_step(
            fast.start_state(tokens, actions), torch.arange(4), noise=noise
        )
    # int8 weights and activations: logits off by a few percent of their spread, not equal.
    spread = exact.obs_logits.std().item()
    error = (close.obs_logits - exact.obs_logits).abs()
    assert 0 < error.mean().item() < 0.05 * spread and error.max().item() < 0.3 * spread
    agree = (close.obs_logits.argmax(-1) == exact.obs_logits.argmax(-1)).float().mean().item()
    assert agree > 0.9


def test_quantize_refuses_what_it_cannot_do(tmp_path) -> None:
    model = _model()
    with pytest.raises(ValueError, match="unknown quantization"):
        quantize_model(model, "int4")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="float32 model on the CPU"):
        quantize_model(_model().double())
    fast = quantize_model(model)
    with pytest.raises(ValueError, match="quantized already"):
        quantize_model(fast)
    with pytest.raises(ValueError, match="save the float model"):
        fast.save_pretrained(tmp_path / "model")
    with pytest.raises(ValueError, match="quantize must be None or one of"):
        DreamVectorEnv(model, 2, quantize="fp8")  # type: ignore[arg-type]


def test_dream_env_with_int8_is_seeded_and_leaves_the_model_float() -> None:
    model = _model()

    def rollout() -> list[np.ndarray]:
        envs = DreamVectorEnv(model, 3, obs_type="tokens", quantize="int8")
        obs, _ = envs.reset(seed=5)
        seen = [obs]
        for t in range(4):
            obs, *_ = envs.step(np.array([t % 4, 1, 2]))
            seen.append(obs)
        assert envs.model is not model and envs.model.quantization == "int8"
        envs.close()
        return seen

    first, second = rollout(), rollout()
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    assert model.quantization is None


def test_bundled_breakout_dreams_in_int8() -> None:
    envs = gym.make_vec("REM-Breakout-v0", num_envs=2, quantize="int8")
    obs, _ = envs.reset(seed=0)
    obs, *_ = envs.step(np.array([1, 3]))
    assert obs.shape == (2, 64, 64, 3) and obs.dtype == np.uint8
    envs.close()
    env = gym.make("REM-Breakout-v0", quantize="int8", obs_type="tokens")
    obs, _ = env.reset(seed=0)
    assert env.unwrapped.model.quantization == "int8"
    env.close()
