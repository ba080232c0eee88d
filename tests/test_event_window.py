"""The event window (not in REM): rewards and ends read from a step's latest frames' tokens."""

import dataclasses

import pytest
import segments
import torch

from rem_env.config import WorldModelConfig
from rem_env.models.event_window import EventWindow
from rem_env.models.world_model import WorldModel

TOL = 1e-10
K, V, A, T, W = 4, 16, 3, 7, 3  # tokens per frame (a 2x2 grid), vocab, actions, blocks, window


def make_model(
    window: int = W,
    pop: bool = True,
    seed: int = 0,
    reads_next: bool = False,
    change_width: int = 0,
) -> WorldModel:
    torch.manual_seed(seed)
    config = WorldModelConfig(
        embed_dim=32, num_layers=2, num_heads=2, ffn_dim=64, dropout=0.0, max_blocks=T,
        blocks_per_chunk=3, shared_embeddings=False, pop=pop, event_window_frames=window,
        event_window_width=8, event_window_reads_next=reads_next,
        event_window_change_width=change_width,
    )  # fmt: skip
    wm = WorldModel(config, A, V, K).double().eval()
    if wm.event_window is not None:  # its output layer starts at zero: give it a function
        torch.nn.init.normal_(wm.event_window.out.weight)
        torch.nn.init.normal_(wm.event_window.out.bias)
        torch.nn.init.normal_(wm.event_window.missing)
        if change_width:
            torch.nn.init.normal_(wm.event_window.missing_change)
    return wm


def segment(batch: int = 2, blocks: int = T) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    return torch.randint(V, (batch, blocks, K)), torch.randint(A, (batch, blocks))


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("pop", [True, False], ids=["pop", "token-by-token"])
@pytest.mark.parametrize("context", [1, 2, 4], ids=["1-frame", "2-frame", "4-frame"])
def test_imagination_teacher_forced_equals_training_forward(context, pop):
    wm = make_model(pop=pop)
    obs, actions = segment()
    train = wm(obs, actions)
    state = wm.start_state(obs[:, :context], actions[:, : context - 1])
    for t in range(context - 1, T - 1):
        expected = torch.full((2, W - 1, K), -1)  # the W-1 frames before frame t; -1: none
        for j in range(W - 1):
            if t - (W - 1) + j >= 0:
                expected[:, j] = obs[:, t - (W - 1) + j]
        assert torch.equal(state.recent_obs_tokens, expected), t
        step, state = wm.step(state, actions[:, t], next_obs_tokens=obs[:, t + 1])
        assert max_diff(step.reward_logits, train.reward_logits[:, t]) < TOL
        assert max_diff(step.end_logits, train.end_logits[:, t]) < TOL
        assert max_diff(step.obs_logits, train.obs_logits[:, t + 1]) < TOL


def test_a_new_event_window_starts_as_the_model_without_it():
    wm = make_model(window=0)
    torch.manual_seed(3)
    grown = (
        WorldModel(WorldModelConfig(**{**vars(wm.config), "event_window_frames": W}), A, V, K)
        .double()
        .eval()
    )
    missing, unexpected = grown.load_state_dict(wm.state_dict(), strict=False)
    assert missing and all(name.startswith("event_window.") for name in missing)
    assert not unexpected
    obs, actions = segment()
    before, after = wm(obs, actions), grown(obs, actions)
    for name in ("obs_logits", "reward_logits", "end_logits"):
        assert max_diff(getattr(before, name), getattr(after, name)) == 0, name


def nudged(obs: torch.Tensor, actions: torch.Tensor, t: int, change: str):
    return segments.nudged(obs, actions, t, change, V, A)


@pytest.mark.parametrize(
    ("window", "reads_next", "block", "frames_read"),
    [(3, False, 5, {3, 4, 5}), (4, True, 4, {2, 3, 4, 5})],
    ids=["its-w-frames", "w-minus-2-before-the-step-and-the-next"],
)
def test_it_reads_its_frames_and_the_steps_action_only(window, reads_next, block, frames_read):
    wm = make_model(window=window, reads_next=reads_next)
    plain = make_model(window=0)
    plain.load_state_dict(wm.state_dict(), strict=False)
    obs, actions = segment(batch=1)

    def window_part(o, a):  # what the event window adds at the block
        return (wm(o, a).end_logits - plain(o, a).end_logits)[:, block]

    base = window_part(obs, actions)
    for t in range(T):
        for change, read in (("frame", t in frames_read), ("action", t == block)):
            moved = max_diff(window_part(*nudged(obs, actions, t, change)), base)
            assert (moved > 1e-6) if read else (moved < TOL), (t, change)


def test_segment_logits_equal_the_windows_read_one_by_one():
    window = EventWindow(V, A, K, frames=W, width=8).double()
    torch.nn.init.normal_(window.out.weight)
    torch.nn.init.normal_(window.missing)
    obs, actions = segment()
    together = window.segment_logits(obs, actions)  # (B, T, 5)
    padded = torch.cat([torch.full((2, W - 1, K), -1), obs], dim=1)
    for t in range(T):
        alone = window(padded[:, t : t + W], actions[:, t])
        assert max_diff(alone, together[:, t]) < TOL


def test_states_with_the_window_merge_for_partial_resets():
    wm = make_model()
    obs, actions = segment(batch=3, blocks=4)
    state = wm.start_state(obs[:, :3], actions[:, :2])
    _, state = wm.step(state, actions[:, 2])
    fresh = wm.start_state(obs[:, :1], actions[:, :0], position=state.position)
    assert (fresh.recent_obs_tokens == -1).all()
    merged = state.where(torch.tensor([True, False, True]), fresh)
    assert torch.equal(merged.recent_obs_tokens[0], fresh.recent_obs_tokens[0])
    assert torch.equal(merged.recent_obs_tokens[1], state.recent_obs_tokens[1])
    copied = state.index_copy(
        torch.tensor([0, 2]),
        wm.start_state(obs[[0, 2], :1], actions[[0, 2], :0], position=state.position),
    )
    assert torch.equal(copied.recent_obs_tokens, merged.recent_obs_tokens)
    plain = make_model(window=0).start_state(obs[:, :2], actions[:, :1], position=state.position)
    with pytest.raises(ValueError, match="event window"):
        state.where(torch.ones(3, dtype=torch.bool), plain)
    with pytest.raises(ValueError, match="event window"):
        state.index_copy(torch.tensor([0, 1, 2]), plain)
    with pytest.raises(ValueError, match="recent_obs_tokens"):
        wm.step(plain, actions[:, 1])  # a state without the window's frames


def test_settings_that_cannot_work_are_refused():
    with pytest.raises(ValueError, match="event_window_frames"):
        WorldModelConfig(event_window_frames=-1)
    with pytest.raises(ValueError, match="event_window_width"):
        WorldModelConfig(event_window_frames=2, event_window_width=0)
    with pytest.raises(ValueError, match="square"):
        WorldModel(WorldModelConfig(event_window_frames=2), A, V, tokens_per_obs=8)
    window = EventWindow(V, A, K, frames=W, width=8)
    with pytest.raises(ValueError, match=r"\(N, 3, K\)"):
        window(torch.zeros(2, W + 1, K, dtype=torch.long), torch.zeros(2, dtype=torch.long))


def test_the_model_card_names_the_parts_not_in_rem() -> None:
    import dataclasses

    from rem_env.config import REMConfig
    from rem_env.manifest import ProtocolManifest
    from rem_env.model_card import render_model_card

    config = REMConfig.preset("tiny", 4, "Breakout")
    plain = render_model_card(config, ProtocolManifest("Breakout"), None)
    assert "Parallel Observation Prediction) that runs" in plain
    world_model = dataclasses.replace(
        config.world_model, frame_conv_layers=2, event_window_frames=16
    )
    card = render_model_card(
        dataclasses.replace(config, world_model=world_model), ProtocolManifest(), None
    )
    assert (
        "Parallel Observation Prediction, with a frame conv, an event window of 16 frames "
        "(not in REM)) that runs"
    ) in card


@pytest.mark.parametrize("pop", [True, False], ids=["pop", "token-by-token"])
@pytest.mark.parametrize("window", [2, 4], ids=["2-frame-window", "4-frame-window"])
@pytest.mark.parametrize("context", [1, 3], ids=["1-frame", "3-frame"])
def test_a_window_that_reads_the_next_frame_in_imagination_equals_training(context, window, pop):
    wm = make_model(window=window, pop=pop, reads_next=True)
    obs, actions = segment()
    train = wm(obs, actions)
    state = wm.start_state(obs[:, :context], actions[:, : context - 1])
    before = window - 2  # the frames before the step's own that the state keeps
    for t in range(context - 1, T - 1):  # the last step's next frame is not in the segment
        assert state.recent_obs_tokens.shape == (2, before, K)
        for j in range(before):
            seen = t - before + j
            assert (state.recent_obs_tokens[:, j] == (obs[:, seen] if seen >= 0 else -1)).all()
        step, state = wm.step(state, actions[:, t], next_obs_tokens=obs[:, t + 1])
        assert max_diff(step.reward_logits, train.reward_logits[:, t]) < TOL
        assert max_diff(step.end_logits, train.end_logits[:, t]) < TOL
        assert max_diff(step.obs_logits, train.obs_logits[:, t + 1]) < TOL


def test_a_dreamed_step_reads_the_frame_it_draws():
    wm = make_model(window=2, reads_next=True)
    obs, actions = segment()
    state = wm.start_state(obs[:, :2], actions[:, :1])
    logits = [
        wm.step(state, actions[:, 1], next_obs_tokens=obs[:, t])[0].reward_logits for t in (2, 3)
    ]
    assert max_diff(*logits) > 1e-6  # the same state and action, two next frames
    step, _ = wm.step(state, actions[:, 1], generator=torch.Generator().manual_seed(0))
    forced, _ = wm.step(state, actions[:, 1], next_obs_tokens=step.obs_tokens)
    assert max_diff(step.reward_logits, forced.reward_logits) < TOL


def test_segment_logits_of_a_window_that_reads_the_next_frame():
    window = EventWindow(V, A, K, frames=W, width=8, reads_next=True).double()
    torch.nn.init.normal_(window.out.weight)
    torch.nn.init.normal_(window.missing)
    obs, actions = segment()
    together = window.segment_logits(obs, actions)  # (B, T, 5)
    unknown = torch.full((2, 1, K), -1)
    padded = torch.cat([unknown.expand(2, W - 2, K), obs, unknown], dim=1)
    for t in range(T):
        alone = window(padded[:, t : t + W], actions[:, t])
        assert max_diff(alone, together[:, t]) < TOL


def test_a_window_that_reads_the_next_frame_needs_two_frames():
    with pytest.raises(ValueError, match="event_window_reads_next"):
        WorldModelConfig(event_window_frames=1, event_window_reads_next=True)
    with pytest.raises(ValueError, match="event_window_reads_next"):
        WorldModelConfig(event_window_reads_next=True)
    with pytest.raises(ValueError, match="frames >= 2"):
        EventWindow(V, A, K, frames=1, reads_next=True)


@pytest.mark.parametrize("reads_next", [True, False], ids=["reads-next", "own-frame"])
@pytest.mark.parametrize("context", [1, 3], ids=["1-frame", "3-frame"])
def test_a_window_that_reads_the_change_in_imagination_equals_training(context, reads_next):
    wm = make_model(reads_next=reads_next, change_width=4)
    obs, actions = segment()
    train = wm(obs, actions)
    state = wm.start_state(obs[:, :context], actions[:, : context - 1])
    for t in range(context - 1, T - 1):
        step, state = wm.step(state, actions[:, t], next_obs_tokens=obs[:, t + 1])
        assert max_diff(step.reward_logits, train.reward_logits[:, t]) < TOL
        assert max_diff(step.end_logits, train.end_logits[:, t]) < TOL


def test_the_change_path_is_read_only_where_both_last_frames_exist():
    window = EventWindow(V, A, tokens_per_obs=16, frames=3, width=8, change_width=4).double()
    torch.nn.init.normal_(window.out.weight)
    torch.nn.init.normal_(window.missing_change)
    torch.manual_seed(2)
    tokens, actions = torch.randint(V, (2, 3, 16)), torch.tensor([1, 2])
    features = window.frame_features(tokens.flatten(0, 1)).view(2, 3, -1)
    change = window.change_features(tokens[:, -2], tokens[:, -1])
    other = torch.randn_like(change)
    known = torch.ones(2, 3, dtype=torch.bool)
    assert (
        max_diff(window(tokens, actions), window.window_logits(features, known, actions, change))
        < TOL
    )
    assert max_diff(window.window_logits(features, known, actions, other),
                    window.window_logits(features, known, actions, change)) > 1e-6  # fmt: skip
    known[:, -2] = False  # the step's frame missing: the learned vector instead
    assert max_diff(window.window_logits(features, known, actions, other),
                    window.window_logits(features, known, actions, change)) < TOL  # fmt: skip
    plain = EventWindow(V, A, tokens_per_obs=16, frames=3, width=8)
    assert window.hidden[0].in_features == plain.hidden[0].in_features + 8
    with pytest.raises(ValueError, match="frames >= 2"):
        EventWindow(V, A, K, frames=1, change_width=4)
    with pytest.raises(ValueError, match="event_window_change_width"):
        WorldModelConfig(event_window_frames=1, event_window_change_width=4)


def test_a_window_without_a_change_path_says_so():
    plain = EventWindow(V, A, tokens_per_obs=16, frames=3, width=8)
    tokens = torch.randint(V, (2, 16))
    with pytest.raises(ValueError, match="reads no change"):
        plain.change_features(tokens, tokens)
    window = EventWindow(V, A, tokens_per_obs=16, frames=3, width=8, change_width=4)
    features = window.frame_features(torch.randint(V, (6, 16))).view(2, 3, -1)
    with pytest.raises(ValueError, match="pass change"):
        window.window_logits(features, torch.ones(2, 3, dtype=torch.bool), torch.tensor([0, 1]))


@pytest.mark.parametrize("reads_next", [False, True], ids=["own-frame", "next-frame"])
def test_history_before_a_short_context_fills_only_the_windows_frames(reads_next):
    wm = make_model(window=4, reads_next=reads_next)
    obs, actions = segment()
    long = wm.start_state(obs[:, :5], actions[:, :4])  # five real frames
    short = wm.start_state(obs[:, 3:5], actions[:, 3:4])  # the last two only
    told = wm.start_state(obs[:, 3:5], actions[:, 3:4], history=obs[:, :3])  # and the three
    assert (short.recent_obs_tokens[:, 0] == -1).all()  # without history: unknown
    assert torch.equal(told.recent_obs_tokens, long.recent_obs_tokens)
    for mine, plain in zip(told.retention, short.retention, strict=True):
        assert torch.equal(mine, plain)  # the retention layers never see the history
    unknown = wm.start_state(obs[:, 3:5], actions[:, 3:4], history=torch.full((2, 3, K), -1))
    assert torch.equal(unknown.recent_obs_tokens, short.recent_obs_tokens)
    step_told, _ = wm.step(told, actions[:, 4], next_obs_tokens=obs[:, 5])
    step_short, _ = wm.step(short, actions[:, 4], next_obs_tokens=obs[:, 5])
    assert max_diff(step_told.reward_logits, step_short.reward_logits) > 1e-6  # the window read it
    assert max_diff(step_told.obs_logits, step_short.obs_logits) < TOL  # the retention did not


def test_history_of_the_wrong_shape_or_values_is_refused():
    wm = make_model(window=4)
    obs, actions = segment()
    with pytest.raises(ValueError, match="history tokens must be"):
        wm.start_state(obs[:, 3:5], actions[:, 3:4], history=obs[:1, :3])
    with pytest.raises(ValueError, match="history tokens must be in"):
        wm.start_state(obs[:, 3:5], actions[:, 3:4], history=torch.full((2, 3, K), -2))


@pytest.mark.parametrize("reads_next", [False, True], ids=["own-frame", "next-frame"])
def test_a_dream_keeps_each_frames_window_features_from_when_it_was_drawn(reads_next):
    wm = make_model(window=4, reads_next=reads_next)
    window = wm.event_window
    obs, actions = segment()
    state = wm.start_state(obs[:, :2], actions[:, :1])
    bare = dataclasses.replace(state, window_features=None)  # computed at each step instead
    for t in range(1, 5):
        frames = torch.cat([state.recent_obs_tokens, state.obs_tokens[:, None]], dim=1)
        frames = frames[:, frames.shape[1] - window.frames_before - 1 :]
        assert max_diff(state.window_features, window.frames_features(frames)) < TOL
        step, state = wm.step(state, actions[:, t], next_obs_tokens=obs[:, t + 1])
        again, bare = wm.step(bare, actions[:, t], next_obs_tokens=obs[:, t + 1])
        assert max_diff(step.reward_logits, again.reward_logits) < TOL
        assert max_diff(step.end_logits, again.end_logits) < TOL
        bare = dataclasses.replace(bare, window_features=None)
