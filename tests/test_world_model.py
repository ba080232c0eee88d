"""POP world model equivalences (REM_SPEC 5.5 E1-E3) and the imagination API, in float64."""

import dataclasses

import pytest
import segments
import torch
import torch.nn.functional as F

from rem_env.config import REMConfig, WorldModelConfig
from rem_env.models.frame_conv import PIXEL_CHANNELS
from rem_env.models.world_model import StepNoise, WorldModel, sample_categorical
from rem_env.state import ImaginationState

TOL = 1e-10
K, V, A, T = 4, 16, 3, 7  # tokens per frame, vocab, actions, blocks (bpc 3 -> chunks 3, 3, 1)


def make_model(**overrides) -> WorldModel:
    options = dict(
        embed_dim=32,
        num_layers=2,
        num_heads=2,
        ffn_dim=64,
        dropout=0.0,
        max_blocks=T,
        blocks_per_chunk=3,
        shared_embeddings=False,
        identical_layer_init=False,
    )
    options.update(overrides)
    return WorldModel(WorldModelConfig(**options), A, V, K).double().eval()


def random_segment(batch=2, blocks=T):
    return torch.randint(V, (batch, blocks, K)), torch.randint(A, (batch, blocks))


def max_diff(a, b):
    return (a - b).abs().max().item()


def nudged(obs, actions, t, change):
    """Copies of a segment with block t's frame (``change="frame"``) or action changed."""
    return segments.nudged(obs, actions, t, change, V, A)


def sequential_reference(wm: WorldModel, obs, actions, recurrent: bool):
    """Block by block from the state before each block (E1 with chunks, E2 token by token)."""
    run = wm.decoder.forward_recurrent if recurrent else wm.decoder.forward_chunk
    x = wm.embed_blocks(obs, actions)  # (B, T, K+1, E)
    u = wm.prediction_tokens().expand(obs.shape[0], K, -1)
    states, obs_h, act_h = None, [], []
    for t in range(obs.shape[1]):
        start = t * (K + 1)
        obs_h.append(run(u, start, states)[0])  # prediction tokens from S_{t-1}, state dropped
        out, states = run(x[:, t], start, states)
        act_h.append(out[:, K])
    obs_h, act_h = torch.stack(obs_h, 1), torch.stack(act_h, 1)
    return wm.head_obs(obs_h), wm.head_reward(act_h), wm.head_end(act_h)


@pytest.mark.parametrize("recurrent", [False, True], ids=["E1-chunk", "E2-recurrent"])
def test_pop_training_forward_equals_sequential_reference(recurrent):
    wm = make_model()
    obs, actions = random_segment()
    out = wm(obs, actions)
    ref = sequential_reference(wm, obs, actions, recurrent)
    for got, expected in zip(out, ref, strict=True):
        assert got.shape == expected.shape
        assert max_diff(got, expected) < TOL


@pytest.mark.parametrize("blocks_per_chunk", [1, 2, 4, 7])
def test_pop_forward_does_not_depend_on_chunking(blocks_per_chunk):
    wm = make_model()
    obs, actions = random_segment()
    reference = wm(obs, actions)
    wm.config = dataclasses.replace(wm.config, blocks_per_chunk=blocks_per_chunk)
    for got, expected in zip(wm(obs, actions), reference, strict=True):
        assert max_diff(got, expected) < TOL


@pytest.mark.parametrize("pop", [True, False], ids=["pop", "token-by-token"])
@pytest.mark.parametrize("shared", [False, True], ids=["own-embeddings", "shared-codebook"])
def test_imagination_teacher_forced_equals_training_forward(pop, shared):
    """E3: start from 2 context blocks, then feed the real next blocks."""
    wm = make_model(pop=pop, shared_embeddings=shared)
    codebook = torch.randn(V, 32, dtype=torch.float64) if shared else None
    obs, actions = random_segment()
    train = wm(obs, actions, codebook)
    state = wm.start_state(obs[:, :2], actions[:, :1], codebook)
    assert state.position == K + 1
    for t in range(1, T - 1):
        step, state = wm.step(state, actions[:, t], codebook, next_obs_tokens=obs[:, t + 1])
        assert max_diff(step.reward_logits, train.reward_logits[:, t]) < TOL
        assert max_diff(step.end_logits, train.end_logits[:, t]) < TOL
        assert max_diff(step.obs_logits, train.obs_logits[:, t + 1]) < TOL
        assert torch.equal(step.obs_tokens, obs[:, t + 1])
        assert state.position == (t + 1) * (K + 1)


def test_imagination_is_invariant_to_the_start_position():
    wm = make_model()
    obs, actions = random_segment(blocks=4)
    near = wm.start_state(obs[:, :2], actions[:, :1])
    far = wm.start_state(obs[:, :2], actions[:, :1], position=10**6)
    for t in range(1, 3):
        a, near = wm.step(near, actions[:, t], next_obs_tokens=obs[:, t + 1])
        b, far = wm.step(far, actions[:, t], next_obs_tokens=obs[:, t + 1])
        assert max_diff(a.obs_logits, b.obs_logits) < 1e-8
        assert max_diff(a.reward_logits, b.reward_logits) < 1e-8


def test_states_merge_for_partial_resets():
    wm = make_model()
    obs, actions = random_segment(batch=3, blocks=3)
    state = wm.start_state(obs[:, :2], actions[:, :1])
    _, state = wm.step(state, actions[:, 1])
    fresh_obs, fresh_actions = random_segment(batch=3, blocks=2)
    fresh = wm.start_state(fresh_obs, fresh_actions[:, :1], position=state.position)
    merged = state.where(torch.tensor([True, False, True]), fresh)
    assert torch.equal(merged.obs_tokens[0], fresh.obs_tokens[0])
    assert torch.equal(merged.obs_tokens[1], state.obs_tokens[1])
    for m, old, new in zip(merged.retention, state.retention, fresh.retention, strict=True):
        assert torch.equal(m[1], old[1]) and torch.equal(m[2], new[2])
    misplaced = wm.start_state(fresh_obs, fresh_actions[:, :1])
    with pytest.raises(ValueError, match="different positions"):
        state.where(torch.ones(3, dtype=torch.bool), misplaced)


def test_single_frame_context_starts_from_zero_state():
    wm = make_model()
    obs, actions = random_segment(blocks=3)
    state = wm.start_state(obs[:, :1], actions[:, :0])
    assert state.position == 0 and all(s.abs().max() == 0 for s in state.retention)
    train = wm(obs, actions)
    step, _ = wm.step(state, actions[:, 0], next_obs_tokens=obs[:, 1])
    assert max_diff(step.reward_logits, train.reward_logits[:, 0]) < TOL
    assert max_diff(step.obs_logits, train.obs_logits[:, 1]) < TOL


def test_shapes_dtypes_and_sampling_in_float32():
    wm = make_model().float()
    obs, actions = random_segment(batch=5)
    out = wm(obs, actions)
    assert out.obs_logits.shape == (5, T, K, V) and out.obs_logits.dtype == torch.float32
    assert out.reward_logits.shape == (5, T, 3) and out.end_logits.shape == (5, T, 2)
    state = wm.start_state(obs[:, :2], actions[:, :1])
    gen = torch.Generator().manual_seed(0)
    step, new_state = wm.step(state, actions[:, 2], generator=gen)
    assert step.obs_tokens.shape == (5, K) and step.obs_tokens.dtype == torch.int64
    assert ((step.obs_tokens >= 0) & (step.obs_tokens < V)).all()
    assert set(step.rewards.tolist()) <= {-1.0, 0.0, 1.0}
    assert step.ends.dtype == torch.bool
    assert isinstance(new_state, ImaginationState) and new_state is not state
    # The state passed in is untouched and stepping is reproducible under a seeded generator.
    again, _ = wm.step(state, actions[:, 2], generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.obs_tokens, step.obs_tokens)


def test_gradients_of_training_forward():
    wm = make_model(embed_dim=16, num_heads=2, ffn_dim=16, blocks_per_chunk=2)
    # gradcheck along 6 random directions of the (1, 3, K+1, E) input: 3 blocks, 2 chunks.
    base = torch.randn(1, 3, K + 1, 16, dtype=torch.float64)
    directions = torch.randn(base.numel(), 6, dtype=torch.float64)
    z = torch.zeros(6, dtype=torch.float64, requires_grad=True)

    def hidden(coords):
        obs_h, act_h = wm._hidden_pop(base + (directions @ coords).view_as(base))
        return obs_h.sum(-1), act_h.sum(-1)

    assert torch.autograd.gradcheck(hidden, (z,), eps=1e-6, atol=1e-6)
    wm.train()
    obs, actions = random_segment()
    out = wm(obs, actions)
    (out.obs_logits.sum() + out.reward_logits.sum() + out.end_logits.sum()).backward()
    for name, param in wm.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_dropout_is_active_only_in_training():
    wm = make_model(dropout=0.5)
    obs, actions = random_segment()
    wm.eval()
    assert torch.equal(wm(obs, actions).obs_logits, wm(obs, actions).obs_logits)
    wm.train()
    assert not torch.equal(wm(obs, actions).obs_logits, wm(obs, actions).obs_logits)


def test_user_errors_are_clear():
    wm = make_model(shared_embeddings=True)
    obs, actions = random_segment()
    with pytest.raises(ValueError, match="codebook"):
        wm(obs, actions)
    codebook = torch.randn(V, 32, dtype=torch.float64)
    with pytest.raises(ValueError, match="obs_tokens must be"):
        wm(obs[..., :2], actions, codebook)
    with pytest.raises(ValueError, match="actions must be"):
        wm(obs, actions[:, :3], codebook)
    with pytest.raises(ValueError, match="actions must be in"):
        wm.start_state(obs[:, :2], actions[:, :1] + A, codebook)
    state = wm.start_state(obs[:, :2], actions[:, :1], codebook)
    with pytest.raises(ValueError, match="actions must be"):
        wm.step(state, actions[:1, 0], codebook)
    with pytest.raises(ValueError, match="temperature"):
        sample_categorical(torch.zeros(3, 4), torch.rand(3), temperature=-1.0)


def test_greedy_sampling_is_argmax():
    logits = torch.randn(6, 5)
    assert torch.equal(sample_categorical(logits, torch.rand(6), 0.0), logits.argmax(-1))


def test_inverse_cdf_sampling_follows_the_distribution():
    logits = torch.tensor([0.0, 1.0, 2.0, -1.0]).log_softmax(-1)
    probs = logits.exp()
    u = torch.rand(200_000, generator=torch.Generator().manual_seed(1))
    counts = torch.bincount(sample_categorical(logits.expand(len(u), 4), u), minlength=4)
    assert torch.allclose(counts / len(u), probs, atol=0.005)
    # Each number picks the class whose CDF interval holds it, whatever the batch around it.
    edges = probs.cumsum(0)
    assert sample_categorical(logits[None], torch.tensor([edges[1].item() - 1e-4]))[0] == 1
    assert sample_categorical(logits[None], torch.tensor([edges[1].item() + 1e-4]))[0] == 2


def test_step_noise_makes_each_dream_independent_of_its_batch():
    wm = make_model().float()
    obs, actions = random_segment(batch=3, blocks=3)
    noise = StepNoise.draw(3, K, torch.device("cpu"))
    state = wm.start_state(obs[:, :2], actions[:, :1])
    together, _ = wm.step(state, actions[:, 2], noise=noise)
    for i in range(3):
        alone_state = wm.start_state(obs[i : i + 1, :2], actions[i : i + 1, :1])
        alone_noise = StepNoise(noise.obs[i : i + 1], noise.reward[i : i + 1], noise.end[i : i + 1])
        alone, _ = wm.step(alone_state, actions[i : i + 1, 2], noise=alone_noise)
        assert torch.equal(alone.obs_tokens[0], together.obs_tokens[i])
        assert alone.rewards[0] == together.rewards[i] and alone.ends[0] == together.ends[i]


@pytest.mark.parametrize("pop", [True, False], ids=["pop", "token-by-token"])
def test_event_temperature_samples_rewards_and_ends_apart_from_the_frame(pop):
    wm = make_model(pop=pop)
    obs, actions = random_segment(batch=64, blocks=3)
    noise = StepNoise.draw(64, K, torch.device("cpu"), torch.Generator().manual_seed(3))
    state = wm.start_state(obs[:, :2], actions[:, :1])
    cold, _ = wm.step(state, actions[:, 2], temperature=0.0, noise=noise)
    warm, _ = wm.step(state, actions[:, 2], temperature=1.0, noise=noise)
    mixed, _ = wm.step(state, actions[:, 2], temperature=0.0, noise=noise, event_temperature=1.0)
    unset, _ = wm.step(state, actions[:, 2], temperature=0.0, noise=noise, event_temperature=None)
    assert torch.equal(mixed.obs_tokens, cold.obs_tokens)  # the likeliest frame ...
    assert torch.equal(mixed.rewards, warm.rewards) and torch.equal(mixed.ends, warm.ends)
    assert not torch.equal(cold.obs_tokens, warm.obs_tokens)  # ... which sampling would not be
    assert not torch.equal(cold.rewards, warm.rewards)  # nor the events
    for a, b in zip(unset, cold, strict=True):  # None: one temperature for all, as before
        assert torch.equal(a, b)


def test_paper_world_model_parameter_count():
    cfg = REMConfig.preset("paper", num_actions=4)
    wm = WorldModel(cfg.world_model, 4, 512, 64)
    total = sum(p.numel() for p in wm.parameters())
    retnet = sum(p.numel() for p in wm.decoder.parameters())
    assert abs(total - 4.76e6) / 4.76e6 < 0.02
    assert abs(retnet - 4.28e6) / 4.28e6 < 0.02
    assert len(wm.prediction_embeddings.weight) == 65


# --------------------------------------------------------------------- frame conv (not in REM)


def trained_frame_conv(seed: int, shared: bool = False, **parts) -> WorldModel:
    """A world model with a frame conv (and ``parts``: ``frame_conv_events``,
    ``frame_conv_copy``) whose output layers are not zero (they start at zero)."""
    torch.manual_seed(seed)
    wm = make_model(shared_embeddings=shared, frame_conv_layers=2, frame_conv_width=8, **parts)
    for layer in (wm.frame_conv.out, wm.frame_conv.event_out, wm.frame_conv.copy_gate):
        if layer is not None:
            torch.nn.init.normal_(layer.weight)
            torch.nn.init.normal_(layer.bias)
    return wm


def frame_conv_model(shared: bool = False) -> WorldModel:
    """A world model with a frame conv of token logits only."""
    return trained_frame_conv(1, shared)


def copy_model(shared: bool = False) -> WorldModel:
    """A world model whose frame conv has a copy gate."""
    return trained_frame_conv(4, shared, frame_conv_copy=True)


def teacher_forced_states(wm: WorldModel, obs, actions, context: int, codebook=None) -> list:
    """Imagines the segment from its first ``context`` frames with every next frame given (the
    real one), asserts each step's logits equal the training forward's, and returns the states
    after each step."""
    train = wm(obs, actions, codebook)
    state = wm.start_state(obs[:, :context], actions[:, : context - 1], codebook)
    states = []
    for t in range(context - 1, T - 1):
        step, state = wm.step(state, actions[:, t], codebook, next_obs_tokens=obs[:, t + 1])
        assert max_diff(step.obs_logits, train.obs_logits[:, t + 1]) < TOL
        assert max_diff(step.reward_logits, train.reward_logits[:, t]) < TOL
        assert max_diff(step.end_logits, train.end_logits[:, t]) < TOL
        states.append(state)
    return states


@pytest.mark.parametrize(
    "kind", ["frames", "events", "copy"], ids=["frames", "frames-and-events", "copy-gate"]
)
@pytest.mark.parametrize("context", [1, 2], ids=["one-frame-context", "two-frame-context"])
@pytest.mark.parametrize("shared", [False, True], ids=["own-embeddings", "shared-codebook"])
def test_frame_conv_imagination_teacher_forced_equals_training_forward(context, shared, kind):
    events = kind == "events"
    models = {"frames": frame_conv_model, "events": events_model, "copy": copy_model}
    wm = models[kind](shared)
    codebook = torch.randn(V, 32, dtype=torch.float64) if shared else None
    obs, actions = random_segment()
    states = teacher_forced_states(wm, obs, actions, context, codebook)
    for t, state in zip(range(context - 1, T - 1), states, strict=True):
        assert torch.equal(state.previous_obs_tokens, obs[:, t])
    train = wm(obs, actions, codebook)
    without = make_model(shared_embeddings=shared)
    without.load_state_dict(wm.state_dict(), strict=False)
    plain = without(obs, actions, codebook)
    assert max_diff(plain.obs_logits, train.obs_logits) > 1e-3  # the frame conv is read
    for name in ("reward_logits", "end_logits"):  # the events add to rewards and ends only
        moved = max_diff(getattr(plain, name), getattr(train, name))
        assert moved > 1e-3 if events else moved < TOL, name


def test_a_new_frame_conv_starts_as_the_model_without_it():
    wm = make_model()
    grown = make_model(frame_conv_layers=2, frame_conv_width=8)
    missing, unexpected = grown.load_state_dict(wm.state_dict(), strict=False)
    assert missing and all(name.startswith("frame_conv.") for name in missing) and not unexpected
    obs, actions = random_segment()
    assert max_diff(grown(obs, actions).obs_logits, wm(obs, actions).obs_logits) == 0


def test_frame_conv_reads_the_two_frames_before_and_the_action_between():
    wm = frame_conv_model()
    obs, actions = random_segment(batch=1)
    base = wm(obs, actions).obs_logits[:, 4]  # block 4: frames 2, 3 and action 3 in the conv
    for t, change in ((2, "frame"), (3, "frame"), (3, "action")):
        obs2, actions2 = nudged(obs, actions, t, change)
        assert max_diff(wm(obs2, actions2).obs_logits[:, 4], base) > 1e-6, (t, change)
    no_conv = make_model()
    no_conv.load_state_dict(wm.state_dict(), strict=False)
    obs2 = obs.clone()
    obs2[:, 1] = (obs2[:, 1] + 1) % V  # frame 1 reaches block 4 through retention alone
    conv_part = wm(obs, actions).obs_logits - no_conv(obs, actions).obs_logits
    conv_part2 = wm(obs2, actions).obs_logits - no_conv(obs2, actions).obs_logits
    assert max_diff(conv_part[:, 4], conv_part2[:, 4]) < TOL


def test_states_with_the_frame_before_merge_for_partial_resets():
    wm = frame_conv_model()
    obs, actions = random_segment(batch=3, blocks=3)
    state = wm.start_state(obs[:, :2], actions[:, :1])
    _, state = wm.step(state, actions[:, 1])
    fresh = wm.start_state(obs[:, :1], actions[:, :0], position=state.position)
    assert (fresh.previous_obs_tokens == -1).all()  # no frame before a one-frame context
    merged = state.where(torch.tensor([True, False, True]), fresh)
    assert torch.equal(merged.previous_obs_tokens[0], fresh.previous_obs_tokens[0])
    assert torch.equal(merged.previous_obs_tokens[1], state.previous_obs_tokens[1])
    copied = state.index_copy(
        torch.tensor([0, 2]),
        wm.start_state(obs[[0, 2], :1], actions[[0, 2], :0], position=state.position),
    )
    for name in ("obs_tokens", "previous_obs_tokens"):
        assert torch.equal(getattr(copied, name), getattr(merged, name))
    for a, b in zip(copied.retention, merged.retention, strict=True):
        assert torch.equal(a, b)
    plain = make_model().start_state(obs[:, :2], actions[:, :1], position=state.position)
    with pytest.raises(ValueError, match="frame conv"):
        state.where(torch.ones(3, dtype=torch.bool), plain)
    with pytest.raises(ValueError, match="frame conv"):
        state.index_copy(torch.tensor([0, 1, 2]), plain)
    with pytest.raises(ValueError, match="previous_obs_tokens"):
        wm.step(plain, actions[:, 1])  # a state without the frame before the current one


def test_frame_conv_settings_that_cannot_work_are_refused():
    with pytest.raises(ValueError, match="pop=True"):
        WorldModelConfig(pop=False, frame_conv_layers=2)
    with pytest.raises(ValueError, match="frame_conv_layers"):
        WorldModelConfig(frame_conv_layers=-1)
    with pytest.raises(ValueError, match="square grid"):
        WorldModel(WorldModelConfig(frame_conv_layers=1), A, V, tokens_per_obs=8)


def events_model(shared: bool = False) -> WorldModel:
    """A world model whose frame conv also gives event logits."""
    return trained_frame_conv(2, shared, frame_conv_events=True)


def test_new_frame_conv_events_start_as_the_model_without_them():
    torch.manual_seed(3)
    wm = make_model(frame_conv_layers=2, frame_conv_width=8)
    grown = make_model(frame_conv_layers=2, frame_conv_width=8, frame_conv_events=True)
    missing, unexpected = grown.load_state_dict(wm.state_dict(), strict=False)
    assert missing and not unexpected
    assert all(name.startswith(("frame_conv.events.", "frame_conv.event_out.")) for name in missing)
    obs, actions = random_segment()
    for a, b in zip(grown(obs, actions), wm(obs, actions), strict=True):
        assert max_diff(a, b) == 0


def test_frame_conv_events_read_the_step_its_frame_before_and_its_action_only():
    wm = events_model()
    no_events = make_model(frame_conv_layers=2, frame_conv_width=8)
    no_events.load_state_dict(wm.state_dict(), strict=False)
    obs, actions = random_segment(batch=1)

    def events(obs, actions):  # (1, T, 5): the frame conv's part of the event logits
        a, b = wm(obs, actions), no_events(obs, actions)
        return torch.cat([a.reward_logits - b.reward_logits, a.end_logits - b.end_logits], -1)

    base = events(obs, actions)
    for t, change, read in (
        (3, "frame", True),
        (4, "frame", True),
        (4, "action", True),
        (2, "frame", False),  # two frames before: the conv does not see it
        (5, "frame", False),  # the frame after the step
        (3, "action", False),
    ):
        obs2, actions2 = nudged(obs, actions, t, change)
        moved = max_diff(events(obs2, actions2)[:, 4], base[:, 4])  # step 4's events
        assert (moved > 1e-6) == read, (t, change, moved)
    assert base[:, -1].abs().max() > 1e-3  # the last block's step has events too
    assert max_diff(wm(obs, actions).obs_logits, no_events(obs, actions).obs_logits) < TOL


def test_the_copy_gate_adds_its_bonus_to_the_token_of_the_frame_before_only():
    wm = copy_model()
    no_copy = make_model(frame_conv_layers=2, frame_conv_width=8)
    no_copy.load_state_dict(wm.state_dict(), strict=False)
    obs, actions = random_segment(batch=1)
    added = wm(obs, actions).obs_logits - no_copy(obs, actions).obs_logits  # (1, T, K, V)
    assert added[:, 0].abs().max() == 0  # no frame before the first block: no bonus
    before = F.one_hot(obs[:, :-1], V).bool()  # (1, T-1, K, V): each block's frame before
    assert added[:, 1:][~before].abs().max() == 0  # the other tokens' logits are untouched
    assert added[:, 1:][before].abs().min() > 1e-6  # a bonus on every patch's token


def test_a_new_copy_gate_starts_as_the_model_without_it():
    torch.manual_seed(3)
    wm = make_model(frame_conv_layers=2, frame_conv_width=8)
    torch.nn.init.normal_(wm.frame_conv.out.weight)
    grown = make_model(frame_conv_layers=2, frame_conv_width=8, frame_conv_copy=True)
    missing, unexpected = grown.load_state_dict(wm.state_dict(), strict=False)
    assert missing and not unexpected
    assert all(name.startswith("frame_conv.copy_gate.") for name in missing)
    obs, actions = random_segment()
    for a, b in zip(grown(obs, actions), wm(obs, actions), strict=True):
        assert max_diff(a, b) == 0
    with pytest.raises(ValueError, match="frame_conv_copy"):
        WorldModelConfig(frame_conv_copy=True)
    with pytest.raises(ValueError, match="give frame t-1's"):
        grown.frame_conv(torch.zeros(1, 2, K, 32).double(), torch.zeros(1, dtype=torch.long))


# ------------------------------------------------- frame conv of more than two frames (not in REM)


def frames_model(frames: int, seed: int = 5, **parts) -> WorldModel:
    """A world model whose frame conv reads ``frames`` frames, every part of it read (the
    older frames' first-layer weights start at zero: drawn here)."""
    wm = trained_frame_conv(seed, frame_conv_frames=frames, **parts)
    with torch.no_grad():
        torch.nn.init.normal_(wm.frame_conv.layers[0].weight[:, wm.frame_conv.latest_channels :])
    return wm


@pytest.mark.parametrize("window", [0, 3, 6], ids=["no-window", "shorter-window", "longer-window"])
@pytest.mark.parametrize("context", [1, 2, 3], ids=lambda c: f"context-{c}")
def test_frame_conv_of_four_frames_imagination_teacher_forced_equals_training_forward(
    context, window
):
    wm = frames_model(4, frame_conv_events=True, frame_conv_copy=True, event_window_frames=window)
    if window:
        torch.nn.init.normal_(wm.event_window.out.weight)
    obs, actions = random_segment()
    train = wm(obs, actions)
    state = wm.start_state(obs[:, :context], actions[:, : context - 1])
    kept = max(3, window - 1)
    assert state.recent_obs_tokens.shape == (2, kept, K)
    for t in range(context - 1, T - 1):
        step, state = wm.step(state, actions[:, t], next_obs_tokens=obs[:, t + 1])
        assert max_diff(step.obs_logits, train.obs_logits[:, t + 1]) < TOL
        assert max_diff(step.reward_logits, train.reward_logits[:, t]) < TOL
        assert max_diff(step.end_logits, train.end_logits[:, t]) < TOL
        first = t + 1 - kept  # the state keeps frames t+1-kept .. t before frame t+1
        for back in range(kept):
            real = obs[:, first + back] if first + back >= 0 else torch.full_like(obs[:, 0], -1)
            assert torch.equal(state.recent_obs_tokens[:, back], real), (t, back)


def test_frame_conv_of_four_frames_reads_the_four_frames_before_only():
    wm = frames_model(4)
    no_conv = make_model()
    no_conv.load_state_dict(wm.state_dict(), strict=False)
    obs, actions = random_segment(batch=1)

    def conv_part(obs, actions):  # block 5: frames 1..4 and action 4 in the conv
        return (wm(obs, actions).obs_logits - no_conv(obs, actions).obs_logits)[:, 5]

    base = conv_part(obs, actions)
    for t, change, read in (
        (1, "frame", True),  # the oldest of the four
        (2, "frame", True),
        (4, "frame", True),
        (4, "action", True),
        (0, "frame", False),  # five frames before
        (3, "action", False),  # only the latest action is read
    ):
        obs2, actions2 = nudged(obs, actions, t, change)
        moved = max_diff(conv_part(obs2, actions2), base)
        assert (moved > 1e-6) == read, (t, change, moved)


@pytest.mark.parametrize("fewer", [2, 3])
def test_a_frame_conv_given_more_frames_starts_as_the_one_it_was(fewer):
    torch.manual_seed(6)
    small = frames_model(fewer, frame_conv_events=True, frame_conv_copy=True)
    grown = make_model(
        frame_conv_layers=2, frame_conv_width=8, frame_conv_events=True, frame_conv_copy=True,
        frame_conv_frames=5,
    )  # fmt: skip
    weights = small.state_dict()
    conv = {k[len("frame_conv.") :]: v for k, v in weights.items() if k.startswith("frame_conv.")}
    rest = {k: v for k, v in weights.items() if not k.startswith("frame_conv.")}
    missing, unexpected = grown.load_state_dict(rest, strict=False)
    assert all(k.startswith("frame_conv.") for k in missing) and not unexpected
    grown.frame_conv.load_fewer_frames(conv)
    obs, actions = random_segment()
    for a, b in zip(grown(obs, actions), small(obs, actions), strict=True):
        assert max_diff(a, b) < TOL
    assert grown.frame_conv.older.weight.abs().max() > 0  # the new frames can learn to be read


def test_frame_conv_frames_that_cannot_be_read_are_refused():
    with pytest.raises(ValueError, match="frame_conv_frames"):
        WorldModelConfig(frame_conv_layers=2, frame_conv_frames=1)
    with pytest.raises(ValueError, match="frame_conv_frames"):
        WorldModelConfig(frame_conv_frames=4)  # no frame conv to read them
    wm = frames_model(4)
    with pytest.raises(ValueError, match="reads 4 frames"):
        wm.frame_conv(torch.zeros(1, 2, K, 32).double(), torch.zeros(1, dtype=torch.long))
    wider = make_model(frame_conv_layers=2, frame_conv_width=16, frame_conv_frames=4)
    with pytest.raises(ValueError, match="does not fit"):
        wider.frame_conv.load_fewer_frames(frame_conv_model().frame_conv.state_dict())
    with pytest.raises(ValueError, match="fewer frames"):
        frame_conv_model().frame_conv.load_fewer_frames(wm.frame_conv.state_dict())
    obs, actions = random_segment(blocks=2)
    two_frame = frame_conv_model().start_state(obs, actions[:, :1])
    with pytest.raises(ValueError, match="recent_obs_tokens"):
        wm.step(two_frame, actions[:, 1])  # a state without the frames before the current one


def test_frame_conv_events_need_a_frame_conv():
    with pytest.raises(ValueError, match="frame_conv_events"):
        WorldModelConfig(frame_conv_events=True)


# ------------------------------------------------- frame conv that reads pixels too (not in REM)

PIXELS = 2  # each token a patch of 2x2 pixels: codebook rows of 3 * 2 * 2 pixels


def pixels_model(seed: int = 8, **parts) -> WorldModel:
    """A world model whose frame conv reads four frames' embeddings and the codebook's 2x2
    patches of them, every part of it read (the first layer's weights of the older frames and
    the pixels start at zero: drawn here)."""
    wm = trained_frame_conv(
        seed, frame_conv_frames=4, frame_conv_pixels=PIXELS, frame_conv_events=True,
        frame_conv_copy=True, **parts,
    )  # fmt: skip
    with torch.no_grad():
        torch.nn.init.normal_(wm.frame_conv.layers[0].weight[:, wm.frame_conv.latest_channels :])
    return wm


def pixel_codebook(seed: int = 0) -> torch.Tensor:
    """(V, 3 * 2 * 2) codebook rows: each code's pixels in [-1, 1], colour-major."""
    drawn = torch.Generator().manual_seed(seed)
    return torch.rand(V, 3 * PIXELS * PIXELS, dtype=torch.float64, generator=drawn) * 2 - 1


@pytest.mark.parametrize("context", [1, 2, 3], ids=lambda c: f"context-{c}")
def test_pixel_frame_conv_imagination_teacher_forced_equals_training_forward(context):
    wm = pixels_model(event_window_frames=3)
    torch.nn.init.normal_(wm.event_window.out.weight)
    obs, actions = random_segment()
    teacher_forced_states(wm, obs, actions, context, pixel_codebook())


def test_a_frame_conv_given_pixels_starts_as_the_one_it_was_then_reads_them():
    torch.manual_seed(9)
    plain = frames_model(4, frame_conv_events=True, frame_conv_copy=True)
    seeing = make_model(
        frame_conv_layers=2, frame_conv_width=8, frame_conv_events=True, frame_conv_copy=True,
        frame_conv_frames=4, frame_conv_pixels=PIXELS,
    )  # fmt: skip
    weights = plain.state_dict()
    conv = {k[len("frame_conv.") :]: v for k, v in weights.items() if k.startswith("frame_conv.")}
    rest = {k: v for k, v in weights.items() if not k.startswith("frame_conv.")}
    seeing.load_state_dict(rest, strict=False)
    seeing.frame_conv.load_without_pixels(conv)
    codebook = pixel_codebook()
    obs, actions = random_segment(batch=1)
    for a, b in zip(seeing(obs, actions, codebook), plain(obs, actions), strict=True):
        assert max_diff(a, b) < TOL
    with torch.no_grad():  # the pixels' weights learn: now it reads them
        torch.nn.init.normal_(seeing.frame_conv.layers[0].weight[:, -PIXEL_CHANNELS:])
    redrawn = codebook.clone()
    redrawn[obs[0, 1, 0]] = -redrawn[obs[0, 1, 0]]  # the pixels of one code in frame 1
    moved = seeing(obs, actions, redrawn).obs_logits - seeing(obs, actions, codebook).obs_logits
    assert moved[:, 5].abs().max() > 1e-6  # block 5 reads frames 1-4
    assert moved[:, :2].abs().max() == 0  # blocks 0 and 1 read no frame 1
    with pytest.raises(ValueError, match="reads no pixels"):
        seeing.frame_conv.load_without_pixels(seeing.frame_conv.state_dict())
    with pytest.raises(ValueError, match="does not fit"):
        wider = make_model(frame_conv_layers=2, frame_conv_width=16, frame_conv_frames=4,
                           frame_conv_pixels=PIXELS, frame_conv_events=True,
                           frame_conv_copy=True)  # fmt: skip
        wider.frame_conv.load_without_pixels(conv)
    with pytest.raises(ValueError, match="loads into a frame conv that reads pixels"):
        plain.frame_conv.load_without_pixels(conv)


def test_pixel_frame_conv_settings_that_cannot_work_are_refused():
    from rem_env.config import TokenizerConfig

    with pytest.raises(ValueError, match="frame_conv_pixels"):
        WorldModelConfig(frame_conv_pixels=8)  # no frame conv to read them
    with pytest.raises(ValueError, match="frame_conv_pixels"):
        WorldModelConfig(frame_conv_layers=2, frame_conv_pixels=-1)
    wm_config = WorldModelConfig(frame_conv_layers=2, frame_conv_pixels=8, shared_embeddings=False)
    with pytest.raises(ValueError, match="needs a patch tokenizer of patch_size 8"):
        REMConfig(4, TokenizerConfig(), wm_config)  # REM's VQ-VAE: no patches to read
    patch = TokenizerConfig(kind="patch", embed_dim=192, vocab_size=512)
    assert REMConfig(4, patch, wm_config).world_model.frame_conv_pixels == 8
    wm = pixels_model()
    obs, actions = random_segment()
    with pytest.raises(ValueError, match=r"pass codebook=tokenizer\.codebook"):
        wm(obs, actions)
    with pytest.raises(ValueError, match=r"frames must be \(N, 4, K, 44\)"):  # 32 + 3 * 2 * 2
        wm.frame_conv(torch.zeros(1, 4, K, 32).double(), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="reads pixels"):
        wm.frame_conv.load_fewer_frames(frame_conv_model().frame_conv.state_dict())


def test_a_world_model_whose_heads_read_nothing_skips_its_retention_pass(monkeypatch):
    """Heads whose output layers are zero (a RetNet that never trained beside a frame conv)
    give zero logits whatever the retention layers give: the step skips those layers and dreams
    exactly what the full step dreams; once a head changes, the layers run again."""
    torch.manual_seed(0)
    wm = make_model(frame_conv_layers=2, frame_conv_width=8, frame_conv_events=True)
    with torch.no_grad():
        for head in (wm.head_obs, wm.head_reward, wm.head_end):
            head[-1].weight.zero_()
            head[-1].bias.zero_()
        for p in wm.frame_conv.parameters():  # its output layers start at zero: a function
            p.normal_(0, 0.3)
    obs, actions = random_segment()
    noise = [StepNoise.draw(2, K, torch.device("cpu"), torch.Generator().manual_seed(t))
             for t in range(4)]  # fmt: skip
    calls = []
    forward = wm.decoder.forward_with_tail
    monkeypatch.setattr(wm.decoder, "forward_with_tail", lambda *a: calls.append(1) or forward(*a))

    def dream(skip: bool) -> list:
        monkeypatch.setattr(WorldModel, "_retention_unread", lambda self: skip)
        state, steps = wm.start_state(obs[:, :2], actions[:, :1]), []
        for t in range(4):
            step, state = wm.step(state, actions[:, t + 1], noise=noise[t])
            steps.append(step)
        return steps

    full, skipped = dream(False), dream(True)
    assert len(calls) == 4  # only the full dream ran the retention layers
    for a, b in zip(full, skipped, strict=True):
        for name in ("obs_tokens", "rewards", "ends", "obs_logits", "reward_logits", "end_logits"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name
    monkeypatch.undo()
    assert wm._retention_unread()
    with torch.no_grad():
        wm.head_end[-1].bias[0] = 1.0  # a head that reads them again
    assert not wm._retention_unread()
