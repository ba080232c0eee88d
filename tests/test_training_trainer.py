"""End-to-end smoke run of the REM trainer on real ALE Breakout: phases, losses, export."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from shared_once import build_once

import rem_env  # noqa: F401  (registers REM-<Game>-v0)
from rem_env import REMModel
from rem_env.actor_critic_files import load_actor_critic
from rem_train.batches import ReplayTokens, frames_to_tensor
from rem_train.checkpoint import load_checkpoint
from rem_train.config import NEVER, TrainConfig
from rem_train.optim import weight_decay_groups
from rem_train.replay import ReplayBuffer
from rem_train.run_log import read_metrics
from rem_train.trainer import Trainer


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, TrainConfig]:
    """One smoke run (run folder and export) for the whole session; the tests only read it."""
    config = TrainConfig.from_preset("smoke", "Breakout")

    def train(folder: Path) -> None:
        exported = Trainer(config, folder / "run", command="pytest").run()
        assert exported == folder / "run" / "export", exported

    run_dir = build_once(tmp_path_factory, "trainer-smoke-run", train) / "run"
    return run_dir, run_dir / "export", config


def test_every_phase_ran_on_schedule(smoke_run: tuple[Path, Path, TrainConfig]) -> None:
    run_dir, _, cfg = smoke_run
    records = read_metrics(run_dir)
    assert [r["epoch"] for r in records] == list(range(1, cfg.common.epochs + 1))
    for name in ("tokenizer", "world_model", "actor_critic"):
        start = getattr(cfg, name).start_after_epoch
        ran = [r["epoch"] for r in records if name in r]
        assert ran == list(range(start + 1, cfg.common.epochs + 1)) and len(ran) >= 2, name
        steps = getattr(cfg, name).steps_per_epoch
        assert all(r[name]["num_steps"] == steps for r in records if name in r)
    assert all(r["collect"]["steps"] == cfg.common.env_steps_per_epoch for r in records)
    with ReplayBuffer(run_dir / "replay", read_only=True) as replay:
        assert replay.num_steps == cfg.common.collect_epochs * cfg.common.env_steps_per_epoch
    assert "eval" in records[-1]
    assert len(records[-1]["eval"]["scores"]) == cfg.evaluation.final_episodes
    evals = [r["epoch"] for r in records if "eval" in r]
    assert evals == [4, 5]  # eval_every 2 from epoch 4, and the last epoch


def test_each_phase_lowered_its_loss(smoke_run: tuple[Path, Path, TrainConfig]) -> None:
    """Each phase's loss went down on the data it trained on.

    * world model: the loss on each step's own batch (eval mode, so no dropout noise) is lower
      after the update than before, on average; and its mean training loss fell from its first
      epoch to its last.
    * actor-critic: the step's objective on its own imagined rollout (returns and advantages are
      the step's constants) is lower after the update than before, on average.
    * tokenizer: the reconstruction term fell from its first epoch to its last (the codebook and
      commitment terms first grow while the encoder's outputs scale up, a known VQ-VAE transient).
    """
    run_dir, _, _ = smoke_run
    records = read_metrics(run_dir)
    for name in ("world_model", "actor_critic"):
        before = np.concatenate([r[name]["check_before"] for r in records if name in r])
        after = np.concatenate([r[name]["check_after"] for r in records if name in r])
        assert len(before) >= 10
        assert np.mean(before - after) > 0, (name, before - after)
    wm = [r["world_model"]["total"] for r in records if "world_model" in r]
    assert wm[-1] < wm[0] - 0.1
    recon = [r["tokenizer"]["reconstruction"] for r in records if "tokenizer" in r]
    assert recon[-1] < 0.9 * recon[0]


def test_export_loads_and_dreams(smoke_run: tuple[Path, Path, TrainConfig]) -> None:
    run_dir, exported, cfg = smoke_run
    model = REMModel.from_pretrained(exported)
    assert model.config.game == "Breakout" and model.config.tokenizer.image_size == 64
    manifest = json.loads((exported / "manifest.json").read_text())
    assert manifest["training"] == {"env_steps": 300, "epochs": cfg.common.epochs}
    assert manifest["evaluation"]["episodes"] == cfg.evaluation.final_episodes
    training = json.loads((exported / "training.json").read_text())
    assert training["preset"] == "smoke" and training["burn_in_actions"] is True
    # Start contexts are real frames' tokens: they decode to a Breakout-like frame, and the
    # exported weights equal the final checkpoint's.
    checkpoint = load_checkpoint(run_dir / "checkpoints")
    state = {f"{k}": v for k, v in checkpoint.modules["model"].items()}
    for key, value in model.state_dict().items():
        if key not in ("start_tokens", "start_actions"):
            torch.testing.assert_close(value, state[key])
    actor_critic = load_actor_critic(exported)
    for key, value in actor_critic.state_dict().items():
        torch.testing.assert_close(value, checkpoint.modules["actor_critic"][key])
    env = gym.make("REM-Breakout-v0", model=str(exported))
    obs, _ = env.reset(seed=0)
    for _ in range(5):
        obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:  # a smoke model may end its dream at any step
            obs, _ = env.reset()
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
    env.close()


def test_weight_decay_groups_cover_matrices_only() -> None:
    cfg = TrainConfig.from_preset("smoke").model_config()
    model = REMModel(cfg)
    decay, no_decay = weight_decay_groups(model.world_model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"])
    ids = {id(p) for p in decay["params"]} | {id(p) for p in no_decay["params"]}
    assert ids == {id(p) for p in model.world_model.parameters()}
    embeddings = [
        m.weight for m in model.world_model.modules() if isinstance(m, torch.nn.Embedding)
    ]
    assert embeddings and all(id(e) not in {id(p) for p in decay["params"]} for e in embeddings)


def test_each_evaluation_checks_the_ball_in_the_next_frame(
    smoke_run: tuple[Path, Path, TrainConfig],
) -> None:
    """At every evaluation the world model's next frames on replay segments are checked for the
    ball (rem_train.object_check), with the time it took."""
    run_dir, _, _ = smoke_run
    records = read_metrics(run_dir)
    evaluated = [r for r in records if "eval" in r]
    assert [r["epoch"] for r in records if "objects" in r] == [r["epoch"] for r in evaluated]
    for record in evaluated:
        ball = record["objects"]["ball"]
        shares = (
            "reconstruction", "predicted", "predicted_anywhere", "patch_accuracy",
            "predicted_roughly", "extrapolated",
        )  # fmt: skip
        steady = ("steady_frames", "steady_predicted")
        assert set(ball) == {"frames", "patch_nll", "bands", *shares, *steady}
        assert ball["frames"] > 0  # the smoke run's replay has the ball in the open band
        assert sum(band["frames"] for band in ball["bands"]) == ball["frames"]
        for key in shares:
            assert 0.0 <= ball[key] <= 1.0
        assert ball["patch_nll"] > 0.0
        assert 0 <= ball["steady_frames"] <= ball["frames"]
        if ball["steady_frames"]:
            assert 0.0 <= ball["steady_predicted"] <= 1.0
        else:
            assert ball["steady_predicted"] is None
        assert record["timings"]["objects"] > 0


def test_each_evaluation_checks_the_reward_and_end_heads(
    smoke_run: tuple[Path, Path, TrainConfig],
) -> None:
    """At every evaluation the reward and end heads are checked against the replay's labels
    (rem_train.event_check): counts, NLLs and shares, with the time it took."""
    run_dir, _, config = smoke_run
    records = read_metrics(run_dir)
    evaluated = [r for r in records if "eval" in r]
    assert evaluated and [r["epoch"] for r in records if "events" in r] == [
        r["epoch"] for r in evaluated
    ]
    for record in evaluated:
        assert set(record["events"]) == {"reward", "end"}
        for check in record["events"].values():
            length = config.world_model.segment_length
            assert 0 < check["steps"] <= config.evaluation.event_segments * length
            assert 0 <= check["events"] <= check["steps"]
            assert check["nll"] > 0 and check["base_nll"] >= 0
        assert record["timings"]["events"] > 0


def test_tensorboard_has_losses_scores_and_images(
    smoke_run: tuple[Path, Path, TrainConfig],
) -> None:
    pytest.importorskip("torch.utils.tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _, _ = smoke_run
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    tags = events.Tags()
    for tag in ("tokenizer/total", "world_model/obs", "actor_critic/value", "eval/mean_return"):
        assert tag in tags["scalars"], tag
    assert {"tokenizer/reconstructions", "actor_critic/imagined_rollout"} <= set(tags["images"])


def test_same_seed_same_run(smoke_run: tuple[Path, Path, TrainConfig], tmp_path: Path) -> None:
    """Seeding covers everything: a shorter run with the same seed repeats the smoke run's epochs.

    (With the smoke preset's 2-episode periodic and final evaluations, epoch 4 is the same
    whether it is the last epoch or not.)
    """
    run_dir, _, config = smoke_run
    shorter = dataclasses.replace(config, common=dataclasses.replace(config.common, epochs=4))
    Trainer(shorter, tmp_path / "run").run()
    records = []
    for folder in (run_dir, tmp_path / "run"):
        runs = read_metrics(folder)[:4]
        for record in runs:
            del record["timings"], record["wall_time"]
        records.append(runs)
    assert records[0] == records[1]


def _snapshot(trainer: Trainer) -> dict[str, Any]:
    """Everything a training phase reads or changes: weights, optimizers, RNG streams."""
    return {
        "modules": {n: copy.deepcopy(m.state_dict()) for n, m in trainer._modules().items()},
        "optimizers": {n: copy.deepcopy(o.state_dict()) for n, o in trainer.optimizers.items()},
        "rng": copy.deepcopy(trainer.rng.bit_generator.state),
        "torch": torch.get_rng_state(),
    }


def _restore(trainer: Trainer, saved: dict[str, Any]) -> None:
    for name, module in trainer._modules().items():
        module.load_state_dict(saved["modules"][name])
    for name, optimizer in trainer.optimizers.items():
        optimizer.load_state_dict(copy.deepcopy(saved["optimizers"][name]))
    trainer.rng.bit_generator.state = copy.deepcopy(saved["rng"])
    torch.set_rng_state(saved["torch"])


def test_replay_token_cache_leaves_every_step_unchanged(tmp_path: Path) -> None:
    """The world-model and actor-critic phases on looked-up tokens (ReplayTokens) take the very
    steps (losses, weights, optimizer states) they take when every step encodes its frames."""
    config = TrainConfig.from_preset("smoke", "Breakout")
    config = dataclasses.replace(
        config,
        tokenizer=dataclasses.replace(config.tokenizer, steps_per_epoch=2),
        world_model=dataclasses.replace(config.world_model, steps_per_epoch=3),
        actor_critic=dataclasses.replace(config.actor_critic, steps_per_epoch=3),
    )  # a few steps of each: every step after the first starts from cached-path state
    trainer = Trainer(config, tmp_path / "run")
    try:
        trainer.collect(300)
        trainer.train_tokenizer(epoch=2)
        for name in ("world_model", "actor_critic"):
            saved = _snapshot(trainer)
            results = []
            for cached in (False, True):
                _restore(trainer, saved)
                trainer.cache_replay_tokens = cached
                metrics = getattr(trainer, f"train_{name}")(epoch=config.common.epochs)
                results.append((metrics, _snapshot(trainer)))
            assert trainer.replay_tokens is not None
            assert trainer.replay_tokens.stale_frames(trainer.model.tokenizer, trainer.replay) == 0
            (plain, plain_state), (cached, cached_state) = results
            assert plain == cached, name
            assert cached_state.pop("rng") == plain_state.pop("rng")
            torch.testing.assert_close(cached_state, plain_state, rtol=0, atol=0)
    finally:
        trainer.close()


def _world_model_epoch_recording(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    function: str,
    config: TrainConfig | None = None,
    **world_model: Any,
) -> tuple[list[tuple[Any, ...]], dict[str, Any], Trainer]:
    """One world-model epoch of 2 steps of a run (default: ``smoke`` Breakout) with
    ``world_model`` fields set, recording the arguments of every call of the trainer module's
    ``function`` (positional ones, then the values of keyword ones)."""
    import rem_train.trainer as trainer_module

    config = config or TrainConfig.from_preset("smoke", "Breakout")
    wm = dataclasses.replace(config.world_model, steps_per_epoch=2, **world_model)
    config = dataclasses.replace(config, world_model=wm)
    calls, real = [], getattr(trainer_module, function)

    def recording(*args: Any, **kwargs: Any) -> Any:
        calls.append(args + tuple(kwargs.values()))
        return real(*args, **kwargs)

    trainer = Trainer(config, tmp_path / "run")
    try:
        trainer.collect(120)
        monkeypatch.setattr(trainer_module, function, recording, raising=True)
        metrics = trainer.train_world_model(epoch=3)
    finally:
        trainer.close()
    return calls, metrics, trainer


def test_moving_weight_weighs_the_world_model_loss_by_moved_patches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``world_model.moving_weight`` > 0: each step's observation loss is weighted by the moved
    patches of the batch's own frames, read as ``world_model.moving_from`` says, and the log
    keeps the unweighted ``obs`` beside it."""
    for moving_from in ("target", "context"):
        calls, metrics, trainer = _world_model_epoch_recording(
            tmp_path / moving_from, monkeypatch, "moving_patch_weights", moving_weight=10.0,
            moving_from=moving_from,
        )  # fmt: skip
        b, t = trainer.config.world_model.batch_size, trainer.config.world_model.segment_length
        seen = [(tuple(obs.shape), obs.dtype, *rest) for obs, *rest in calls]
        expected = ((b, t, 64, 64, 3), torch.uint8, 8, 10.0, moving_from, 0)  # row offset 0
        assert seen and all(s == expected for s in seen)
        assert "obs_weighted" in metrics and metrics["obs_weighted"] != metrics["obs"]


def test_a_patch_run_on_a_moved_grid_reads_the_moved_patches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A patch model whose grid starts 3 rows above the frame (``patch_row_offset``), trained
    end to end on real frames: the moved patches and the dreamed frames' match are those of
    its grid, and the world model's losses are finite."""
    config = TrainConfig.from_preset("smoke", "Breakout")
    tokenizer = dataclasses.replace(config.tokenizer, start_after_epoch=NEVER)
    config = dataclasses.replace(config, model="patch", tokenizer=tokenizer, patch_row_offset=3)
    REMModel(config.model_config(), num_start_contexts=2).save_pretrained(tmp_path / "fit")
    common = dataclasses.replace(
        config.common, init_from=str(tmp_path / "fit"), init_parts="tokenizer"
    )
    config = dataclasses.replace(config, common=common)
    for function, fields in (
        ("moving_patch_weights", {"moving_weight": 10.0}),
        ("matching_blocks", {"dreamed_heads_weight": 1.0, "dreamed_heads_match": 0.75}),
    ):
        calls, metrics, trainer = _world_model_epoch_recording(
            tmp_path / function, monkeypatch, function, config, **fields
        )
        assert trainer.model.tokenizer.config.row_offset == 3
        assert calls and all(args[-1] == 3 for args in calls), function  # the row offset
        assert all(np.isfinite(value) for value in metrics.values() if isinstance(value, float))


def test_end_weight_and_dreamed_heads_reach_the_world_model_loss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``world_model.end_weight`` != 1 weighs the blocks that end an episode, and
    ``world_model.dreamed_heads_weight`` > 0 adds the heads' loss on the batch's frames as the
    world model dreams them; the log keeps the unweighted figures beside them."""
    calls, metrics, trainer = _world_model_epoch_recording(
        tmp_path, monkeypatch, "dreamed_frames", end_weight=50.0, dreamed_heads_weight=1.0
    )
    assert "end_weighted" in metrics and metrics["end_weighted"] != metrics["end"]
    b, t = trainer.config.world_model.batch_size, trainer.config.world_model.segment_length
    k = trainer.model.config.tokenizer.tokens_per_frame
    assert [tuple(args[1].shape) for args in calls] == [(b, t, k)] * 2  # once a step, its batch
    assert "end_dreamed" in metrics and "reward_dreamed" in metrics
    assert "obs_dreamed" not in metrics  # the observation term is its own option


def test_dreamed_heads_match_counts_the_matching_dreamed_frames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``world_model.dreamed_heads_match`` compares each step's dreamed frames with the real
    ones and logs the share that counted; without the dreamed heads, or outside [0, 1], it is
    a clear error."""
    calls, metrics, trainer = _world_model_epoch_recording(
        tmp_path, monkeypatch, "matching_blocks", dreamed_heads_weight=1.0,
        dreamed_heads_match=0.75,
    )  # fmt: skip
    b, t = trainer.config.world_model.batch_size, trainer.config.world_model.segment_length
    k = trainer.model.config.tokenizer.tokens_per_frame
    seen = [(tuple(d.shape), tuple(r.shape), tuple(o.shape), *rest) for d, r, o, *rest in calls]
    assert seen == [((b, t, k), (b, t, k), (b, t, 64, 64, 3), 8, 0.75, 0)] * 2  # row offset 0
    assert 0.0 <= metrics["dreamed_counted"] <= 1.0 and "reward_dreamed" in metrics
    config = TrainConfig.from_preset("smoke", "Breakout")
    for fields, message in (
        ({"dreamed_heads_match": 0.5}, "dreamed_heads_weight"),
        ({"dreamed_heads_match": 1.5, "dreamed_heads_weight": 1.0}, r"\[0, 1\]"),
    ):
        with pytest.raises(ValueError, match=message):
            dataclasses.replace(
                config, world_model=dataclasses.replace(config.world_model, **fields)
            )


def test_dreamed_obs_weight_alone_dreams_the_frames_and_logs_their_loss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``world_model.dreamed_obs_weight`` > 0 dreams the batch's frames even without the
    dreamed heads' weight, and the log has the observation loss on them."""
    calls, metrics, _ = _world_model_epoch_recording(
        tmp_path, monkeypatch, "dreamed_frames", dreamed_obs_weight=1.0
    )
    assert len(calls) == 2 and metrics["obs_dreamed"] > 0
    assert [args[-2] for args in calls] == [1, 1]  # steps: one step after real frames


def test_dreamed_steps_reach_the_dreams_and_need_a_dreamed_term(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``world_model.dreamed_steps`` is how many passes dream the frames of the dreamed terms;
    below 1, or without a dreamed term to use them, it is a clear error."""
    calls, metrics, _ = _world_model_epoch_recording(
        tmp_path, monkeypatch, "dreamed_frames", dreamed_obs_weight=1.0, dreamed_steps=3
    )
    assert [args[-2] for args in calls] == [3, 3] and metrics["obs_dreamed"] > 0
    config = TrainConfig.from_preset("smoke", "Breakout")
    for fields, message in (
        ({"dreamed_steps": 2}, "dreamed_heads_weight or world_model.dreamed_obs_weight"),
        ({"dreamed_steps": 0, "dreamed_obs_weight": 1.0}, "dreamed_steps must be positive"),
    ):
        with pytest.raises(ValueError, match=message):
            dataclasses.replace(
                config, world_model=dataclasses.replace(config.world_model, **fields)
            )


def test_replay_tokens_follow_the_tokenizer_and_the_buffer(tmp_path: Path) -> None:
    """Tokens are re-encoded after any in-place change of the tokenizer's weights, extended by
    the chunk that holds the new frames, and equal those of encoding the frames; padding holds
    a black frame's."""
    tokenizer = REMModel(TrainConfig.from_preset("smoke").model_config()).tokenizer.eval()
    frames = np.random.default_rng(0).integers(0, 256, (7, 64, 64, 3), dtype=np.uint8)
    cache = ReplayTokens(chunk=3)
    with ReplayBuffer(tmp_path / "replay", fsync=False) as replay:
        for t in range(5):
            replay.append(frames[t], 0, 0.0, terminated=t == 4)
        with pytest.raises(ValueError, match="update"):
            cache.lookup(torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1, dtype=torch.bool))
        assert cache.update(tokenizer, replay) == 5 and cache.stale_frames(tokenizer, replay) == 0
        for t in range(5, 7):
            replay.append(frames[t], 0, 0.0, terminated=False)
        # Records 3..6: chunks start at multiples of 3, whatever was encoded before.
        assert cache.stale_frames(tokenizer, replay) == 4 and cache.update(tokenizer, replay) == 4
        with torch.no_grad():
            direct = tokenizer.encode(frames_to_tensor(np.concatenate([frames, 0 * frames[:1]])))
        index = torch.tensor([[6, 0, 3, 2]])
        mask = torch.tensor([[True, True, True, False]])
        expected = direct.tokens[[6, 0, 3, 7]][None]  # the padded step: a black frame
        assert torch.equal(cache.lookup(index, mask), expected)
        with pytest.raises(ValueError, match="encoded"):
            cache.lookup(torch.tensor([[7]]), torch.tensor([[True]]))
        with torch.no_grad():
            tokenizer.codebook[0] += 1.0  # any in-place change makes every token stale
        assert cache.stale_frames(tokenizer, replay) == 7
        tokenizer.load_state_dict(tokenizer.state_dict())
        assert cache.update(tokenizer, replay) == 7 and cache.stale_frames(tokenizer, replay) == 0
        tokenizer.load_state_dict(tokenizer.state_dict())
        assert cache.stale_frames(tokenizer, replay) == 7


def test_the_actor_critic_dreams_at_the_configured_temperatures(tmp_path: Path) -> None:
    """``actor_critic.dream_temperature`` 0 and ``dream_event_temperature`` 1 reach the
    actor-critic's dream env: the likeliest frames, rewards and ends sampled."""
    config = TrainConfig.from_preset("smoke", "Breakout")
    ac = dataclasses.replace(
        config.actor_critic, steps_per_epoch=1, dream_temperature=0.0, dream_event_temperature=1.0
    )
    config = dataclasses.replace(config, actor_critic=ac)
    trainer = Trainer(config, tmp_path / "run")
    try:
        trainer.collect(120)
        trainer.train_actor_critic(epoch=3)
        env = trainer.imagination.env
    finally:
        trainer.close()
    assert (env.temperature, env.event_temperature) == (0.0, 1.0)


def test_retnet_only_trains_the_retnet_beside_a_fixed_frame_conv(tmp_path: Path) -> None:
    """``world_model.retnet_only``: a world-model epoch changes REM's RetNet and heads and
    leaves the frame conv and the token embedding it reads exactly as they were."""
    config = TrainConfig.from_preset("smoke", "Breakout")
    wm = dataclasses.replace(config.world_model, steps_per_epoch=2, retnet_only=True)
    config = dataclasses.replace(config, world_model=wm, world_model_frame_conv=2)
    trainer = Trainer(config, tmp_path / "run")
    try:
        world_model = trainer.model.world_model
        with torch.no_grad():  # a frame conv that gives logits, as a pretrained one does
            torch.nn.init.normal_(world_model.frame_conv.out.weight, std=0.1)
        before = {k: v.clone() for k, v in world_model.state_dict().items()}
        trainer.collect(120)
        trainer.train_world_model(epoch=3)
        after = world_model.state_dict()
        fixed = [k for k in before if k.split(".")[0] in ("frame_conv", "embedding")]
        trained = [k for k in before if k.startswith(("decoder.", "head_obs."))]
        assert fixed and trained
        assert all(torch.equal(before[k], after[k]) for k in fixed)
        assert all(not torch.equal(before[k], after[k]) for k in trained if k.endswith("weight"))
    finally:
        trainer.close()
