"""Still patches keep their codes: on real Breakout frames, in every place frames become tokens."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rem_env import REMConfig, REMModel
from rem_env.atari import make_atari_env
from rem_env.config import TokenizerConfig
from rem_env.fidelity import RealTrajectory, _reconstruction_scores
from rem_env.models.actor_critic import ActorCritic
from rem_env.models.still_codes import StillCodes, changed_patches, keep_still
from rem_env.models.tokenizer import Tokenizer
from rem_env.probes import SCRIPTED_PLAYERS
from rem_train.batches import ReplayTokens, frames_to_tensor
from rem_train.config import SMOKE_TOKENIZER, SMOKE_WORLD_MODEL, TrainConfig
from rem_train.evaluate import LatentActorCriticPolicy
from rem_train.imagination import Imagination
from rem_train.replay import ReplayBuffer

KEEP = dataclasses.replace(SMOKE_TOKENIZER, keep_still_codes=True)


@pytest.fixture(scope="module")
def breakout() -> tuple[np.ndarray, np.ndarray]:
    """(T, 64, 64, 3) uint8 frames of real Breakout lives and where each life starts (bool (T,)):
    the scripted player, then random actions until a life has been lost."""
    env = make_atari_env("Breakout", train=True, seed=3)
    player = SCRIPTED_PLAYERS["Breakout"](epsilon=0.1, seed=3)
    rng = np.random.default_rng(3)
    frames, starts = [], []
    obs, _ = env.reset(seed=3)
    start = True
    while len(frames) < 400 and (len(frames) < 120 or sum(starts) < 2):
        frames.append(obs)
        starts.append(start)
        if len(frames) < 60:
            action = int(player.act(env.unwrapped.ale.getRAM()[None])[0])
        else:
            action = int(rng.integers(env.action_space.n))
        obs, _, terminated, truncated, _ = env.step(action)
        start = terminated or truncated
        if start:
            obs, _ = env.reset()
    env.close()
    return np.stack(frames), np.array(starts)


def _tokenizer(config: TokenizerConfig = KEEP) -> Tokenizer:
    torch.manual_seed(0)
    return Tokenizer(config).eval()


def test_a_patch_keeps_its_token_exactly_while_its_pixels_stay(breakout: tuple) -> None:
    frames, _ = breakout
    tok = _tokenizer()
    pixels = frames_to_tensor(frames)  # (T, 3, 64, 64)
    fresh = tok.encode(pixels).tokens  # (T, K)
    kept = tok.encode_sequence(pixels)
    moved = changed_patches(pixels[:-1], pixels[1:], KEEP.latent_size)  # (T-1, K)
    assert 0.01 < moved.float().mean() < 0.5  # real frames: a few patches move, most stay
    assert torch.equal(kept[0], fresh[0])
    assert torch.equal(kept[1:][moved], fresh[1:][moved])  # a moved patch is quantised afresh
    assert torch.equal(kept[1:][~moved], kept[:-1][~moved])  # a still one keeps its token
    # the fresh tokens of still patches do flip (what keeping fixes) with this random encoder
    assert bool((fresh[1:][~moved] != fresh[:-1][~moved]).any())


def test_off_is_encode_frame_by_frame(breakout: tuple) -> None:
    pixels = frames_to_tensor(breakout[0][:40])
    tok = _tokenizer(SMOKE_TOKENIZER)
    assert not SMOKE_TOKENIZER.keep_still_codes  # REM's way is the default
    assert torch.equal(tok.encode_sequence(pixels), tok.encode(pixels).tokens)
    tokens, codes, still = tok.encode_step(pixels[:4])
    out = tok.encode(pixels[:4])
    assert still is None and torch.equal(tokens, out.tokens) and torch.equal(codes, out.z_quantized)


def test_step_by_step_equals_the_whole_sequence(breakout: tuple) -> None:
    frames, starts = breakout
    tok = _tokenizer()
    pixels = frames_to_tensor(frames)
    lives = np.split(np.arange(len(frames)), np.flatnonzero(starts)[1:])
    assert len(lives) >= 2  # the step form must restart at a new life
    expected = torch.cat([tok.encode_sequence(pixels[life]) for life in lives])
    still, got = None, []
    for t in range(len(frames)):
        new = torch.tensor([bool(starts[t])])
        tokens, codes, still = tok.encode_step(pixels[t : t + 1], still, new)
        assert torch.equal(codes, tok.to_codes(tokens))
        got.append(tokens)
    assert torch.equal(torch.cat(got), expected)


def test_padded_steps_are_never_carried_into_or_out_of() -> None:
    frames = torch.zeros(1, 4, 3, 16, 16)  # all equal: every patch still
    tokens = torch.arange(4).view(1, 4, 1).expand(1, 4, 16).clone()  # fresh: 0, 1, 2, 3
    mask = torch.tensor([[False, True, True, False]])
    kept = keep_still(tokens, frames, latent_size=4, mask=mask)
    assert kept[0, :, 0].tolist() == [0, 1, 1, 3]  # the real run starts afresh, the pad stays
    assert keep_still(tokens, frames, latent_size=4)[0, :, 0].tolist() == [0, 0, 0, 0]


def test_changed_patches_rejects_frames_that_do_not_split() -> None:
    with pytest.raises(ValueError, match="does not split"):
        changed_patches(torch.zeros(1, 3, 15, 15), torch.zeros(1, 3, 15, 15), 4)
    with pytest.raises(ValueError, match="of one shape"):
        changed_patches(torch.zeros(1, 3, 16, 16), torch.zeros(2, 3, 16, 16), 4)
    state = StillCodes.start(torch.zeros(1, 3, 16, 16), torch.zeros(1, 16, dtype=torch.long))
    assert (
        state.step(torch.ones(1, 3, 16, 16), torch.ones(1, 16, dtype=torch.long), 4)
        .tokens.eq(1)
        .all()
    )


def test_replay_lookup_and_imagination_tokenise_segments_alike(
    breakout: tuple, tmp_path: Path
) -> None:
    """The world model's cached tokens, the burn-in's own encoding and encode_sequence agree."""
    frames, starts = breakout
    tok = _tokenizer()
    with ReplayBuffer(tmp_path / "replay", frames.shape[1:]) as replay:
        for t in range(len(frames)):
            ends_life = t + 1 < len(frames) and bool(starts[t + 1])
            replay.append(frames[t], 0, 0.0, terminated=ends_life)
        cache = ReplayTokens(chunk=48)  # chunks split lives: the change flags cross them
        cache.update(tok, replay)
        rng = np.random.default_rng(0)
        for pad in ("right", "left"):
            seg = replay.sample_segments(12, 10, rng, pad=pad).to_torch()
            looked_up = cache.lookup(seg.index, seg.mask)
            direct = tok.encode_sequence(frames_to_tensor(seg.obs), seg.mask)
            m = seg.mask
            assert torch.equal(looked_up[m], direct[m]), pad
    model = REMModel(REMConfig(num_actions=4, tokenizer=KEEP, world_model=SMOKE_WORLD_MODEL))
    model.tokenizer.load_state_dict(tok.state_dict())
    imagination = Imagination(model.eval(), num_envs=12)
    encoded = imagination._encode(seg)
    assert torch.equal(encoded[m], direct[m])


def test_the_policy_on_real_frames_restarts_at_a_new_episode(breakout: tuple) -> None:
    frames, _ = breakout
    model = REMModel(REMConfig(num_actions=4, tokenizer=KEEP, world_model=SMOKE_WORLD_MODEL))
    policy = LatentActorCriticPolicy(
        model.tokenizer, ActorCritic.from_config(model.config, hidden_size=8), 1, 0.5
    )
    policy.act(frames[:1])
    policy.act(frames[1:2])
    kept = policy.still.tokens.clone()  # type: ignore[union-attr]
    policy.episodes_ended(np.array([True]))
    policy.act(frames[1:2])  # the same frame, but a new episode: quantised afresh
    fresh = model.tokenizer.encode(frames_to_tensor(frames[1:2])).tokens
    assert torch.equal(policy.still.tokens, fresh)  # type: ignore[union-attr]
    assert torch.equal(kept, model.tokenizer.encode_sequence(frames_to_tensor(frames[:2]))[1:])


def test_the_report_counts_no_still_flips_for_a_keeping_tokenizer(breakout: tuple) -> None:
    frames, _ = breakout
    traj = RealTrajectory(
        frames=frames[:60], actions=np.zeros(59, np.int64), rewards=np.zeros(59),
        ends=np.zeros(59, bool), ram=None,
    )  # fmt: skip
    flips = {}
    for keep in (False, True):
        tokenizer = dataclasses.replace(SMOKE_TOKENIZER, keep_still_codes=keep)
        torch.manual_seed(0)
        model = REMModel(
            REMConfig(num_actions=4, tokenizer=tokenizer, world_model=SMOKE_WORLD_MODEL)
        )
        with torch.no_grad():
            *_, flips[keep] = _reconstruction_scores(model.eval(), [traj], 16, ())
    assert flips[False].still_flipped > 0
    assert flips[True].still_flipped == 0 and flips[True].still == flips[False].still


def test_the_run_option_reaches_the_model_and_its_folder(tmp_path: Path) -> None:
    config = TrainConfig.from_preset("smoke")
    assert not config.model_config().tokenizer.keep_still_codes
    keep = dataclasses.replace(
        config, tokenizer=dataclasses.replace(config.tokenizer, keep_still_codes=True)
    )
    assert keep.model_config().tokenizer.keep_still_codes
    model = REMModel(keep.model_config())
    model.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["tokenizer"]["keep_still_codes"]
    assert REMModel.from_pretrained(tmp_path / "m").config.tokenizer.keep_still_codes


def test_configs_without_the_field_load_and_a_non_bool_is_refused() -> None:
    data = REMConfig.preset("tiny", num_actions=4).to_dict()
    del data["tokenizer"]["keep_still_codes"]  # a model folder written before the option
    assert REMConfig.from_dict(data).tokenizer.keep_still_codes is False
    with pytest.raises(ValueError, match="keep_still_codes"):
        TokenizerConfig(keep_still_codes="yes")  # type: ignore[arg-type]
