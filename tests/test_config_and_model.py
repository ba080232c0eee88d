"""Config validation, presets, serialisation and the REMModel unit."""

import dataclasses
import json

import pytest
import torch

from rem_env import REMConfig, REMModel, TokenizerConfig, WorldModelConfig


def test_paper_preset_reproduces_published_sizes():
    cfg = REMConfig.preset("paper", num_actions=4, game="Breakout")
    assert cfg.tokenizer.tokens_per_frame == 64 and cfg.tokenizer.vocab_size == 512
    wm = cfg.world_model
    assert (wm.num_layers, wm.num_heads, wm.embed_dim, wm.ffn_dim) == (5, 4, 256, 1024)
    assert (wm.max_blocks, wm.blocks_per_chunk, wm.context_length, wm.dropout) == (10, 3, 2, 0.1)
    model = REMModel(cfg)
    tokenizer = sum(p.numel() for p in model.tokenizer.parameters())
    world_model = sum(p.numel() for p in model.world_model.parameters())
    assert abs(tokenizer - 3.19e6) / 3.19e6 < 0.02
    assert abs(world_model - 4.76e6) / 4.76e6 < 0.02


def test_tiny_preset_is_tiny():
    cfg = REMConfig.preset("tiny", num_actions=3)
    assert cfg.tokenizer.image_size == 16 and cfg.tokenizer.vocab_size == 16
    assert cfg.world_model.num_layers == 2


@pytest.mark.parametrize(
    "build, field",
    [
        (lambda: TokenizerConfig(image_size=60), "image_size"),
        (lambda: TokenizerConfig(vocab_size=0), "vocab_size"),
        (lambda: WorldModelConfig(num_heads=3), "num_heads"),
        (lambda: WorldModelConfig(embed_dim=80, num_heads=4), "num_heads"),
        (lambda: WorldModelConfig(dropout=1.5), "dropout"),
        (lambda: WorldModelConfig(context_length=10), "context_length"),
        (lambda: REMConfig(num_actions=0), "num_actions"),
        (
            lambda: REMConfig(num_actions=4, world_model=WorldModelConfig(embed_dim=128)),
            "world_model.embed_dim",
        ),
    ],
)
def test_invalid_values_raise_value_error_naming_the_field(build, field):
    with pytest.raises(ValueError, match=f"'{field}'"):
        build()


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset"):
        REMConfig.preset("huge", num_actions=4)


def test_config_round_trips_through_json():
    cfg = REMConfig.preset("tiny", num_actions=5, game="Pong")
    cfg = dataclasses.replace(cfg, world_model=dataclasses.replace(cfg.world_model, pop=False))
    assert REMConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_config_from_dict_rejects_typos_and_newer_formats():
    data = REMConfig.preset("tiny", num_actions=5).to_dict()
    data["world_model"]["num_layer"] = 3
    with pytest.raises(ValueError, match="unknown keys"):
        REMConfig.from_dict(data)
    data = REMConfig.preset("tiny", num_actions=5).to_dict()
    data["format_version"] = 99
    with pytest.raises(ValueError, match="newer"):
        REMConfig.from_dict(data)


def test_fresh_model_carries_random_start_contexts_and_dreams():
    model = REMModel(REMConfig.preset("tiny", num_actions=4), num_start_contexts=5).eval()
    assert model.start_tokens.shape == (5, 2, 16) and model.start_actions.shape == (5, 1)
    assert model.num_start_contexts == 5 and model.num_actions == 4
    with torch.inference_mode():
        state = model.start_state(model.start_tokens, model.start_actions)
        for _ in range(3):
            step, state = model.imagine_step(state, torch.randint(4, (5,)))
        frames = model.decode(step.obs_tokens)
    assert frames.shape == (5, 3, 16, 16) and frames.min() >= 0 and frames.max() <= 1
    assert state.position == 4 * 17
    tokens = model.encode(frames)
    assert tokens.shape == (5, 16)


def test_start_contexts_are_buffers_and_can_be_replaced():
    model = REMModel(REMConfig.preset("tiny", num_actions=4))
    assert "start_tokens" in model.state_dict() and "start_actions" in model.state_dict()
    model.set_start_contexts(
        torch.zeros(3, 2, 16, dtype=torch.long), torch.ones(3, 1, dtype=torch.long)
    )
    assert model.num_start_contexts == 3
    with pytest.raises(ValueError, match="start tokens"):
        model.set_start_contexts(torch.zeros(3, 2, 15, dtype=torch.long), torch.ones(3, 1))
    with pytest.raises(ValueError, match="actions must be in"):
        model.set_start_contexts(torch.zeros(3, 2, 16, dtype=torch.long), torch.full((3, 1), 4))


def test_model_rejects_wrong_config_type():
    with pytest.raises(TypeError):
        REMModel({"num_actions": 4})
