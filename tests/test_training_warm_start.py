"""``rem-train --init-from``: warm starts from model folders and run checkpoints."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from rem_env import REMConfig, REMModel
from rem_env.actor_critic_files import save_actor_critic
from rem_env.models.actor_critic import ActorCritic
from rem_train.cli import build_config, parser
from rem_train.cli import main as rem_train
from rem_train.collect import Collector
from rem_train.config import NEVER, TrainConfig
from rem_train.model_report import training_section
from rem_train.replay import ReplayBuffer
from rem_train.trainer import Trainer
from rem_train.warm_start import (
    WarmStartError,
    architecture_options,
    parse_parts,
    read_warm_start,
)


def _config(init_from: str | None, parts: str = "all", preset: str = "smoke") -> TrainConfig:
    config = TrainConfig.from_preset(preset, "Breakout")
    common = dataclasses.replace(config.common, init_from=init_from, init_parts=parts)
    return dataclasses.replace(config, common=common)


def _source(folder: Path) -> tuple[Path, REMModel, ActorCritic]:
    """A smoke-sized model folder with an actor-critic, weights unlike a fresh run's."""
    config = _config(None)
    torch.manual_seed(1234)
    model = REMModel(config.model_config(), num_start_contexts=3)
    actor_critic = ActorCritic.from_config(model.config, config.actor_critic.hidden_size)
    model.save_pretrained(folder)
    save_actor_critic(actor_critic, folder)
    return folder, model, actor_critic


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_every_part_is_loaded_from_a_model_folder(tmp_path: Path) -> None:
    folder, model, actor_critic = _source(tmp_path / "source")
    trainer = Trainer(_config(str(folder)), tmp_path / "run")
    try:
        assert _equal(trainer.model.state_dict(), model.state_dict())
        assert _equal(trainer.actor_critic.state_dict(), actor_critic.state_dict())
        record = json.loads((tmp_path / "run" / "warm_start.json").read_text())
        assert record["source"] == str(folder)
        assert record["parts"] == ["tokenizer", "world_model", "actor_critic"]
    finally:
        trainer.close()


def test_only_the_chosen_parts_are_loaded(tmp_path: Path) -> None:
    folder, model, actor_critic = _source(tmp_path / "source")
    fresh = Trainer(_config(None), tmp_path / "fresh")
    fresh.close()
    trainer = Trainer(_config(str(folder), "tokenizer"), tmp_path / "run")
    try:
        assert _equal(trainer.model.tokenizer.state_dict(), model.tokenizer.state_dict())
        # the world model and actor-critic are the fresh run's (same seed, same init)
        assert _equal(trainer.model.world_model.state_dict(), fresh.model.world_model.state_dict())
        assert _equal(trainer.actor_critic.state_dict(), fresh.actor_critic.state_dict())
        assert not _equal(trainer.actor_critic.state_dict(), actor_critic.state_dict())
    finally:
        trainer.close()


def test_a_run_checkpoint_is_a_source(tmp_path: Path) -> None:
    folder, model, _ = _source(tmp_path / "source")
    first = Trainer(_config(str(folder)), tmp_path / "first")
    with torch.no_grad():  # the first run "trained": its weights differ from its source's
        for p in first.model.world_model.parameters():
            p.add_(0.5)
    first._save(keep_numbered=False)
    first.close()
    second = Trainer(_config(str(tmp_path / "first"), "world_model"), tmp_path / "second")
    try:
        assert _equal(second.model.world_model.state_dict(), first.model.world_model.state_dict())
        assert not _equal(second.model.world_model.state_dict(), model.world_model.state_dict())
    finally:
        second.close()


def test_sizes_that_differ_are_a_clear_error_and_leave_no_run_folder(tmp_path: Path) -> None:
    folder, _, _ = _source(tmp_path / "source")
    with pytest.raises(WarmStartError, match="does not fit this run's model sizes") as info:
        Trainer(_config(str(folder), "tokenizer", preset="cpu"), tmp_path / "run")
    assert "tokenizer." in str(info.value) and "in this run" in str(info.value)
    assert not (tmp_path / "run").exists()


def test_a_model_folder_that_does_not_fit_says_which_options_build_its_shape(
    tmp_path: Path,
) -> None:
    bundled = Path(__file__).resolve().parent.parent / "rem_env" / "weights" / "Breakout"
    config = _config(str(bundled), "tokenizer,world_model", preset="breakout")
    with pytest.raises(WarmStartError, match="does not fit this run's model sizes") as info:
        Trainer(config, tmp_path / "run")
    hint = str(info.value).split("The source's own shape is built by: ")[1]
    assert hint.split() == architecture_options(json.loads((bundled / "config.json").read_text()))
    assert hint.startswith("--model patch --world-model-layers 2 --world-model-frame-conv 4")


def _deeper(init_from: str | None, layers: int) -> TrainConfig:
    return dataclasses.replace(
        _config(init_from, "tokenizer,world_model"), world_model_layers=layers
    )


def test_a_deeper_world_model_starts_as_the_shallower_source(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, model, _ = _source(tmp_path / "source")
    assert model.config.world_model.num_layers == 1
    trainer = Trainer(_deeper(str(folder), 3), tmp_path / "run")
    try:
        deeper = trainer.model
        assert deeper.config.world_model.num_layers == 3
        source_state, state = model.world_model.state_dict(), deeper.world_model.state_dict()
        for key, value in source_state.items():
            assert torch.equal(state[key], value), key
        for layer in (1, 2):
            for name in ("retention.out_proj", "linear2"):
                for kind in ("weight", "bias"):
                    key = f"decoder.layers.{layer}.{name}.{kind}"
                    assert state[key].abs().sum() == 0, key
            # The rest of an added layer is a fresh initialisation, not zeros.
            assert state[f"decoder.layers.{layer}.linear1.weight"].abs().sum() > 0
        generator = torch.Generator().manual_seed(0)
        vocab = model.config.tokenizer.vocab_size
        tokens = torch.randint(
            vocab, (2, 4, model.config.tokenizer.tokens_per_frame), generator=generator
        )
        actions = torch.randint(4, (2, 4), generator=generator)
        model.eval(), deeper.eval()  # the smoke world model has dropout
        want = model.world_model(tokens, actions, model.tokenizer.codebook)
        got = deeper.world_model(tokens, actions, deeper.tokenizer.codebook)
        for a, b in zip(want, got, strict=True):
            assert torch.equal(a, b)
        # The added layers learn: their zeroed projections get a gradient at once.
        got.obs_logits.logsumexp(-1).sum().backward()
        grad = deeper.world_model.decoder.layers[2].retention.out_proj.weight.grad
        assert grad is not None and grad.abs().sum() > 0
        assert "layers 1-2 of 3 start as the identity" in capsys.readouterr().out
    finally:
        trainer.close()


def test_a_shallower_world_model_than_the_source_is_a_clear_error(tmp_path: Path) -> None:
    source = tmp_path / "source"
    REMModel(_deeper(None, 2).model_config()).save_pretrained(source)
    with pytest.raises(WarmStartError, match="does not fit this run's model sizes") as info:
        Trainer(_deeper(str(source), 1), tmp_path / "run")
    assert "decoder.layers.1" in str(info.value)
    assert not (tmp_path / "run").exists()


def test_world_model_layers_is_an_option_and_checked(tmp_path: Path) -> None:
    from rem_train.cli import build_config, parser

    args = vars(parser().parse_args(["--preset", "smoke", "--world-model-layers", "3"]))
    config = build_config(args)
    assert config.world_model_layers == 3
    assert config.model_config().world_model.num_layers == 3
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="world_model_layers must be >= 1"):
        dataclasses.replace(config, world_model_layers=0)
    assert TrainConfig.from_preset("smoke").model_config().world_model.num_layers == 1


def _assert_same_function(source: REMModel, grown: REMModel, wider: tuple[str, ...] = ()) -> None:
    """``grown`` holds every world-model tensor of ``source`` (but those named in ``wider``,
    which it holds more inputs of) and computes the same logits (to rounding with ``wider``:
    a longer sum)."""
    state = grown.world_model.state_dict()
    for key, value in source.world_model.state_dict().items():
        assert key in wider or torch.equal(state[key], value), key
    tokens = torch.randint(source.config.tokenizer.vocab_size, (2, 4, 64))
    actions = torch.randint(4, (2, 4))
    source.eval(), grown.eval()  # the smoke world model has dropout
    want = source.world_model(tokens, actions, source.tokenizer.codebook)
    got = grown.world_model(tokens, actions, grown.tokenizer.codebook)
    for a, b in zip(want, got, strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-5) if wider else torch.equal(a, b)


def test_a_world_model_with_a_frame_conv_starts_as_the_source_without_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, model, _ = _source(tmp_path / "source")
    config = dataclasses.replace(_deeper(str(folder), 2), world_model_frame_conv=2)
    trainer = Trainer(config, tmp_path / "run")
    try:
        grown = trainer.model.world_model
        assert grown.frame_conv is not None and len(grown.frame_conv.layers) == 4
        assert grown.frame_conv.out.weight.abs().sum() == 0
        _assert_same_function(model, trainer.model)
        out = capsys.readouterr().out
        assert "a frame conv added" in out and "layers 1-1 of 2 start as the identity" in out
    finally:
        trainer.close()
    source = tmp_path / "with_conv"  # the other way round: a source's frame conv has no place
    with_conv = dataclasses.replace(_config(None), world_model_frame_conv=2)
    REMModel(with_conv.model_config()).save_pretrained(source)
    with pytest.raises(WarmStartError, match="unknown to this run") as info:
        Trainer(_config(str(source), "tokenizer,world_model"), tmp_path / "run2")
    assert "frame_conv." in str(info.value)
    with pytest.raises(ValueError, match="world_model_frame_conv must be >= 0"):
        dataclasses.replace(config, world_model_frame_conv=-1)


def _source_with_conv(folder: Path, seed: int, **options: Any) -> REMModel:
    """A smoke model with a 2-layer frame conv (``options``: more TrainConfig settings) whose
    output layer is drawn, as if trained (it starts at zero), saved to ``folder``."""
    config = dataclasses.replace(_config(None), world_model_frame_conv=2, **options)
    torch.manual_seed(seed)
    model = REMModel(config.model_config())
    torch.nn.init.normal_(model.world_model.frame_conv.out.weight)
    model.save_pretrained(folder)
    return model


@pytest.mark.parametrize(
    ("copy", "added", "flag"),
    [
        (False, "event layers", "world_model_frame_conv_events"),
        (True, "event layers and copy gate", "world_model_frame_conv_copy"),
    ],
)
def test_frame_conv_parts_are_added_at_zero_to_a_source_frame_conv_without_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], copy: bool, added: str, flag: str
) -> None:
    model = _source_with_conv(tmp_path / "source", 5)
    config = dataclasses.replace(
        _config(str(tmp_path / "source"), "tokenizer,world_model"),
        world_model_frame_conv=2,
        world_model_frame_conv_events=True,
        world_model_frame_conv_copy=copy,
    )
    trainer = Trainer(config, tmp_path / "run")
    try:
        conv = trainer.model.world_model.frame_conv
        assert conv.event_out.weight.abs().sum() == 0
        assert (conv.copy_gate is not None) == copy
        if copy:
            assert conv.copy_gate.weight.abs().sum() == 0
        _assert_same_function(model, trainer.model)
        assert f"the frame conv's {added} added" in capsys.readouterr().out
    finally:
        trainer.close()
    with pytest.raises(ValueError, match=f"{flag} is a setting of the frame conv"):
        off = {"world_model_frame_conv_events": False, "world_model_frame_conv_copy": False}
        dataclasses.replace(config, world_model_frame_conv=0, **{**off, flag: True})


def test_a_completion_is_added_at_zero_to_a_source_frame_conv_without_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _source_with_conv(tmp_path / "source", 7)
    config = dataclasses.replace(
        _config(str(tmp_path / "source"), "tokenizer,world_model"),
        world_model_frame_conv=2,
        world_model_frame_conv_completion=2,
    )
    trainer = Trainer(config, tmp_path / "run")
    try:
        conv = trainer.model.world_model.frame_conv
        assert len(conv.completion) == 4 and conv.completion_out.weight.abs().sum() == 0
        _assert_same_function(model, trainer.model)
        assert "the frame conv's completion added" in capsys.readouterr().out
    finally:
        trainer.close()
    with pytest.raises(ValueError, match="completion reads the frame conv's features"):
        dataclasses.replace(config, world_model_frame_conv=0)
    with pytest.raises(ValueError, match="world_model_frame_conv_completion must be >= 0"):
        dataclasses.replace(config, world_model_frame_conv_completion=-1)


def test_a_frame_conv_of_another_width_is_taken_at_its_width(tmp_path: Path) -> None:
    model = _source_with_conv(tmp_path / "source", 6, world_model_frame_conv_width=8)
    source = _config(str(tmp_path / "source"), "tokenizer,world_model")
    config = dataclasses.replace(source, world_model_frame_conv=2, world_model_frame_conv_width=8)
    trainer = Trainer(config, tmp_path / "run")
    try:
        assert trainer.model.world_model.frame_conv.out.weight.shape[1] == 8
        _assert_same_function(model, trainer.model)
    finally:
        trainer.close()
    wide = dataclasses.replace(config, world_model_frame_conv_width=128)
    with pytest.raises(WarmStartError, match="does not fit this run's model sizes"):
        Trainer(wide, tmp_path / "run2")
    with pytest.raises(ValueError, match="world_model_frame_conv_width must be >= 1"):
        dataclasses.replace(config, world_model_frame_conv_width=0)


def test_a_frame_conv_of_more_frames_starts_as_the_source_of_fewer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _source_with_conv(tmp_path / "source", 7)
    source = _config(str(tmp_path / "source"), "tokenizer,world_model")
    config = dataclasses.replace(
        source, world_model_frame_conv=2, world_model_frame_conv_frames=5,
        world_model_frame_conv_events=True,
    )  # fmt: skip
    trainer = Trainer(config, tmp_path / "run")
    try:
        conv = trainer.model.world_model.frame_conv
        assert conv.frames == 5 and conv.older is not None
        assert conv.layers[0].weight[:, conv.latest_channels :].abs().sum() == 0
        first = "frame_conv.layers.0.weight"
        theirs = model.world_model.state_dict()[first]
        assert torch.equal(conv.layers[0].weight[:, : theirs.shape[1]], theirs)
        _assert_same_function(model, trainer.model, wider=(first,))
        out = capsys.readouterr().out
        assert "the frame conv reads 5 frames, more than the source's" in out
        assert "the frame conv's event layers added" in out
        trainer.model.save_pretrained(tmp_path / "five")
    finally:
        trainer.close()
    fewer = dataclasses.replace(
        _config(str(tmp_path / "five"), "tokenizer,world_model"), world_model_frame_conv=2,
        world_model_frame_conv_events=True,
    )  # fmt: skip
    with pytest.raises(WarmStartError, match="does not fit this run's model sizes"):
        Trainer(fewer, tmp_path / "run2")  # a frame conv of 5 frames does not fit one of 2
    with pytest.raises(ValueError, match="world_model_frame_conv_frames must be >= 2"):
        dataclasses.replace(config, world_model_frame_conv_frames=1)
    with pytest.raises(ValueError, match="world_model_frame_conv_frames are read by"):
        dataclasses.replace(_config(None), world_model_frame_conv_frames=3)


def test_a_part_the_source_lacks_is_a_clear_error(tmp_path: Path) -> None:
    config = _config(None)
    model = REMModel(config.model_config())
    model.save_pretrained(tmp_path / "no_agent")  # no actor-critic files
    with pytest.raises(WarmStartError, match="has no actor_critic"):
        Trainer(_config(str(tmp_path / "no_agent")), tmp_path / "run")


def test_the_cli_takes_init_from_and_reports_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = rem_train(
        ["--preset", "smoke", "--out", str(tmp_path / "run"), "--init-parts", "brain"]
    )
    assert status == 2
    assert "unknown part" in capsys.readouterr().err
    status = rem_train(
        ["--preset", "smoke", "--out", str(tmp_path / "r2"), "--init-from", str(tmp_path / "x")]
    )
    assert status == 2
    assert "--init-from" in capsys.readouterr().err
    assert parse_parts("all") == ("tokenizer", "world_model", "actor_critic")


def test_the_export_records_the_lineage(tmp_path: Path) -> None:
    folder, _, _ = _source(tmp_path / "source")
    (folder / "training.json").write_text(
        json.dumps(
            {
                "command": "rem-train --preset smoke --out a",
                "preset": "smoke",
                "env_steps": 300,
                "lineage": [{"command": "rem-train --out older", "env_steps": 100}],
            }
        )
    )
    trainer = Trainer(_config(str(folder)), tmp_path / "run")
    try:
        trainer.collect(40)
        exported = trainer.export(tmp_path / "export")
    finally:
        trainer.close()
    record = json.loads((exported / "training.json").read_text())
    assert record["init_from"] == {
        "source": str(folder),
        "parts": ["tokenizer", "world_model", "actor_critic"],
    }
    assert [step.get("env_steps") for step in record["lineage"]] == [100, 300, None]
    assert record["lineage"][-1]["kind"] == "model folder"
    card = training_section(record, "test machine")
    assert "Warm-started" in card and "rem-train --out older" in card


def test_a_run_that_would_learn_a_random_tokenizers_tokens_is_refused(tmp_path: Path) -> None:
    config = TrainConfig.from_preset("breakout", "Breakout")  # its tokenizer never trains
    assert "--init-from" in (config.untrained_tokenizer_problem() or "")
    with pytest.raises(ValueError, match="does not train the tokenizer"):
        Trainer(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    given = dataclasses.replace(
        config,
        common=dataclasses.replace(config.common, init_from="x", init_parts="tokenizer"),
    )
    assert given.untrained_tokenizer_problem() is None


def _collected(collector: Any, steps: int, folder: Path) -> ReplayBuffer:
    """``steps`` real steps of ``collector`` (closed after) into a new replay buffer in
    ``folder``, with the smoke preset's (untrained) actor-critic for the episodes it plays."""
    config = TrainConfig.from_preset("smoke", "Breakout")
    model = REMModel(config.model_config())
    actor_critic = ActorCritic.from_config(model.config, config.actor_critic.hidden_size)
    replay = ReplayBuffer(folder, fsync=False)
    try:
        collector.collect(model, actor_critic, replay, steps)
    finally:
        collector.close()
    return replay


def test_scripted_episodes_are_collected_and_score(tmp_path: Path) -> None:
    config = TrainConfig.from_preset("smoke", "Breakout")
    scripted = Collector("Breakout", 0, 1.0, 0.0, 4, True, scripted_share=1.0)
    with _collected(scripted, 400, tmp_path / "replay") as replay:
        rewards = np.asarray(replay._records()["reward"])
    assert len(rewards) == 400
    assert float(np.abs(rewards).sum()) >= 4  # random play scores ~1.7 in a whole game
    with pytest.raises(ValueError, match="has none"):
        Collector("Pong", 0, 1.0, 0.0, 4, True, scripted_share=0.5)
    waits = dataclasses.replace(config.collect, scripted_share=1.0, scripted_serve_wait=7)
    patient = Collector.from_config(dataclasses.replace(config, collect=waits), seed=0)
    assert patient.player.max_serve_wait == 7  # type: ignore[union-attr]
    patient.close()


def test_parked_episodes_are_played_at_both_walls_and_lose_lives_there(tmp_path: Path) -> None:
    fire, right, left = 1, 2, 3
    config = TrainConfig.from_preset("smoke", "Breakout")
    parked = Collector("Breakout", 0, 1.0, 0.0, 4, True, parked_share=1.0)
    with _collected(parked, 600, tmp_path / "replay") as replay:
        episodes = [replay.episode(i) for i in range(replay.num_episodes)]
    walls = [set(e.actions.tolist()) - {fire} for e in episodes]
    assert all(w in ({right}, {left}) for w in walls), walls  # one wall an episode, never looks
    lost = [w for w, e in zip(walls, episodes, strict=True) if e.terminated[-1]]
    assert {right} in lost and {left} in lost  # the replay shows lives lost at either wall
    with pytest.raises(ValueError, match="needs a screen-blind policy"):
        Collector("Pong", 0, 1.0, 0.0, 4, True, parked_share=0.5)
    shares = dataclasses.replace(config.collect, scripted_share=0.8, parked_share=0.3)
    with pytest.raises(ValueError, match="shares of episodes add up to at most 1"):
        dataclasses.replace(config, collect=shares)


def test_world_model_frame_conv_pixels_is_an_option_of_patch_models() -> None:
    from rem_train.cli import build_config, parser

    argv = ["--preset", "smoke", "--model", "patch", "--tokenizer.start-after-epoch", "1000000",
            "--world-model-frame-conv", "2", "--world-model-frame-conv-pixels", "true"]  # fmt: skip
    config = build_config(vars(parser().parse_args(argv)))
    assert config.model_config().world_model.frame_conv_pixels == 8  # the patches' side
    assert TrainConfig.from_dict(config.to_dict()) == config
    conv = REMModel(config.model_config()).world_model.frame_conv
    assert conv.pixels == 8 and conv.pixel_layers is not None
    with pytest.raises(ValueError, match="is a setting of the frame conv"):
        dataclasses.replace(config, world_model_frame_conv=0)
    with pytest.raises(ValueError, match="set model to 'patch'"):
        dataclasses.replace(_config(None), world_model_frame_conv=2,
                            world_model_frame_conv_pixels=True)  # fmt: skip


@pytest.mark.parametrize(
    "folder",
    [
        Path(__file__).resolve().parent.parent / "rem_env" / "weights" / "Breakout",
        Path(__file__).resolve().parent.parent / "warm_starts" / "Breakout-vqvae",
        Path(__file__).resolve().parent.parent / "warm_starts" / "Breakout-moved-grid-1024",
    ],
    ids=["bundled-patch-model", "vqvae-model", "patch-model-of-1024-codes"],
)
def test_architecture_options_build_a_run_of_the_models_shape(folder: Path) -> None:
    """The options benchmarks/gpu_check.sh gives a run warm-started from a model folder: the
    `breakout` preset with them builds that model's tokenizer and world model, field for field
    (a patch model's frame conv and event window included)."""
    raw = json.loads((folder / "config.json").read_text())
    saved = REMConfig.from_dict(raw).to_dict()  # older files leave defaults out
    argv = ["--preset", "breakout", *architecture_options(raw)]
    built = build_config(vars(parser().parse_args(argv))).model_config().to_dict()
    assert built["tokenizer"] == saved["tokenizer"]
    assert built["world_model"] == saved["world_model"]


def test_a_patch_tokenizer_of_more_codes_is_taken_with_its_option(tmp_path: Path) -> None:
    """A patch model of 1,024 codes (``fit_patch_tokenizer --vocab-size 1024``): a run with
    ``--patch-vocab-size 1024`` takes its tokenizer and world model whole; a run of the default
    512 codes refuses it, naming the option, which architecture_options gives too."""
    base = _config(None)
    tokenizer = dataclasses.replace(base.tokenizer, start_after_epoch=NEVER)
    base = dataclasses.replace(base, model="patch", tokenizer=tokenizer)
    more = dataclasses.replace(base, patch_vocab_size=1024)
    torch.manual_seed(7)
    model = REMModel(more.model_config(), num_start_contexts=2)
    assert model.config.tokenizer.vocab_size == 1024
    model.save_pretrained(tmp_path / "source")
    raw = json.loads((tmp_path / "source" / "config.json").read_text())
    assert architecture_options(raw)[:4] == ["--model", "patch", "--patch-vocab-size", "1024"]
    common = dataclasses.replace(
        base.common, init_from=str(tmp_path / "source"), init_parts="tokenizer,world_model"
    )
    with pytest.raises(WarmStartError, match="--patch-vocab-size 1024"):
        Trainer(dataclasses.replace(base, common=common), tmp_path / "run")
    assert not (tmp_path / "run").exists()
    trainer = Trainer(dataclasses.replace(more, common=common), tmp_path / "run")
    try:
        assert _equal(trainer.model.state_dict(), model.state_dict())
    finally:
        trainer.close()
    argv = ["--preset", "breakout", "--model", "patch", "--patch-vocab-size", "1024"]
    built = build_config(vars(parser().parse_args(argv))).model_config()
    assert built.tokenizer.vocab_size == 1024
    with pytest.raises(ValueError, match="patch_vocab_size sizes a patch tokenizer's codebook"):
        dataclasses.replace(more, model="cpu")
    with pytest.raises(ValueError, match="patch_vocab_size must be >= 2"):
        dataclasses.replace(more, patch_vocab_size=1)


def test_a_patch_grid_that_starts_elsewhere_is_a_clear_error(tmp_path: Path) -> None:
    """The same tensors on a grid moved by another row offset mean other pixels: refused, with
    the option that builds the source's grid, which architecture_options gives too."""
    base = _config(None)
    tokenizer = dataclasses.replace(base.tokenizer, start_after_epoch=NEVER)
    base = dataclasses.replace(base, model="patch", tokenizer=tokenizer)
    moved = dataclasses.replace(base, patch_row_offset=3)
    model = REMModel(moved.model_config(), num_start_contexts=2)
    model.save_pretrained(tmp_path / "source")
    raw = json.loads((tmp_path / "source" / "config.json").read_text())
    assert architecture_options(raw)[:4] == ["--model", "patch", "--patch-row-offset", "3"]
    common = dataclasses.replace(base.common, init_from=str(tmp_path / "source"))
    for parts in ("tokenizer", "tokenizer,world_model"):
        run = dataclasses.replace(base, common=dataclasses.replace(common, init_parts=parts))
        with pytest.raises(WarmStartError, match="set --patch-row-offset 3"):
            Trainer(run, tmp_path / "run")
        assert not (tmp_path / "run").exists()
    run = dataclasses.replace(moved, common=dataclasses.replace(common, init_parts="tokenizer"))
    trainer = Trainer(run, tmp_path / "run")
    assert trainer.model.config.tokenizer.row_offset == 3
    assert torch.equal(trainer.model.tokenizer.codebook, model.tokenizer.codebook)
    trainer._save(keep_numbered=False)
    trainer.close()
    # a run's checkpoint carries its grid in the run's config
    checkpoint = tmp_path / "run" / "checkpoints" / "last.safetensors"
    assert read_warm_start(checkpoint).row_offset == 3
    common = dataclasses.replace(common, init_from=str(tmp_path / "run"), init_parts="tokenizer")
    with pytest.raises(WarmStartError, match="set --patch-row-offset 3"):
        Trainer(dataclasses.replace(base, common=common), tmp_path / "again")
