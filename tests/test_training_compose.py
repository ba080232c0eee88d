"""The training pieces compose: buffer -> tokenizer loss, WM loss, burn-in + AC loss (tiny sizes).

This is the data flow the trainer follows, written out once on the ``tiny`` preset.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from rem_env import REMConfig, REMModel
from rem_env.models.actor_critic import ActorCritic
from rem_train.losses import actor_critic_loss, tokenizer_loss, world_model_loss
from rem_train.replay import ReplayBuffer, frames_to_tensor


def test_one_step_of_each_phase(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = REMConfig.preset("tiny", num_actions=4)
    model = REMModel(config)
    tok_cfg, wm_cfg = config.tokenizer, config.world_model
    size = tok_cfg.image_size
    rng = np.random.default_rng(0)
    buf = ReplayBuffer(tmp_path / "replay", obs_shape=(size, size, 3), fsync=False)
    for length in (7, 4, 12):
        for t in range(length):
            obs = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            buf.append(obs, int(rng.integers(4)), float(rng.integers(-1, 2)), t == length - 1)

    # Tokenizer phase: single frames.
    frames = buf.sample_frames(8, rng).frames()
    loss, metrics = tokenizer_loss(model.tokenizer(frames), frames)
    loss.backward()
    assert model.tokenizer.embedding.weight.grad is not None and "reconstruction" in metrics

    # World-model phase: right-padded segments of max_blocks, tokens from the frozen tokenizer.
    seg = buf.sample_segments(4, wm_cfg.max_blocks, rng, pad="right").to_torch()
    b, t = seg.mask.shape
    with torch.no_grad():
        x = frames_to_tensor(seg.obs).flatten(0, 1)  # (B*T, 3, H, W)
        tokens = model.tokenizer.encode(x).tokens.reshape(b, t, -1)  # (B, T, K)
    out = model.world_model(tokens, seg.actions, model.tokenizer.codebook)
    loss, metrics = world_model_loss(
        out, tokens, seg.rewards, seg.ends, seg.mask, wm_cfg.context_length
    )
    loss.backward()
    assert np.isfinite(metrics["total"])

    # Actor-critic phase: burn-in on a left-padded segment, then a (stand-in) imagined rollout.
    ac = ActorCritic.from_config(config, hidden_size=32)
    burn = 4
    seg = buf.sample_segments(4, burn + 1, rng, pad="left").to_torch()
    with torch.no_grad():
        x = frames_to_tensor(seg.obs).flatten(0, 1)  # (B*T, 3, H, W)
        codes = model.tokenizer.encode(x).z_quantized
        codes = codes.reshape(4, burn + 1, *codes.shape[1:])  # (B, T, E, h, w)
    state = ac.burn_in(codes[:, :burn], seg.actions[:, :burn], seg.mask[:, :burn])
    current = codes[:, burn]  # the start frame of imagination (always real)
    logits, values, actions = [], [], []
    for _ in range(3):
        step = ac(current, state)
        action = torch.distributions.Categorical(logits=step.logits).sample()
        state = ac.observe_action(action, step.state)
        logits.append(step.logits)
        values.append(step.value)
        actions.append(action)
        current = model.tokenizer.to_codes(torch.randint(tok_cfg.vocab_size, (4, 16)))
    rewards = torch.zeros(4, 3)
    ends = torch.zeros(4, 3, dtype=torch.bool)
    loss, metrics = actor_critic_loss(
        torch.stack(logits, 1), torch.stack(values, 1), torch.stack(actions, 1), rewards, ends
    )
    loss.backward()
    assert ac.encoder[0].weight.grad is not None and ac.action_embeddings.weight.grad is not None
    buf.close()
