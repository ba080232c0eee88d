"""``python -m rem_train.score``: an actor-critic scored on the real game, from any source."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from rem_env import REMModel
from rem_env.actor_critic_files import save_actor_critic
from rem_env.models.actor_critic import ActorCritic
from rem_train import evaluate as evaluate_module
from rem_train.config import TrainConfig
from rem_train.evaluate import evaluate
from rem_train.score import main
from rem_train.sources import load_source
from rem_train.trainer import Trainer

GAMES = ["--episodes", "2", "--num-envs", "2", "--max-raw-frames", "4000"]


def _config() -> TrainConfig:
    config = TrainConfig.from_preset("smoke", "Breakout")
    return dataclasses.replace(config, common=dataclasses.replace(config.common, seed=3))


def _expected(model: REMModel, actor_critic: ActorCritic, seed: int) -> tuple[list, list]:
    """Scores and lengths ``evaluate`` gives the same weights, games and sampling stream."""
    torch.manual_seed(seed)
    with torch.inference_mode():
        result = evaluate(
            model.tokenizer, actor_critic, "Breakout", 2, 2, 0.5, seed=seed, max_raw_frames=4000
        )
    return result.scores, result.lengths


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _scrambled(module: torch.nn.Module) -> None:
    """Weights a fresh module of the same seed would not have."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p))


def test_a_model_folders_actor_critic_is_scored_as_evaluate_scores_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config()
    torch.manual_seed(7)
    model = REMModel(config.model_config()).eval()
    actor_critic = ActorCritic.from_config(model.config, config.actor_critic.hidden_size).eval()
    _scrambled(actor_critic)
    model.save_pretrained(tmp_path / "model")
    save_actor_critic(actor_critic, tmp_path / "model")
    assert main([str(tmp_path / "model"), *GAMES, "--seed", "5", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "score.json").read_text())
    assert report["game"] == "Breakout" and report["epoch"] is None
    assert (report["scores"], report["lengths"]) == _expected(model, actor_critic, 5)
    assert report["mean"] == sum(report["scores"]) / 2 and report["temperature"] == 0.5
    # Breakout's screen-blind policy played the same games, after the actor-critic
    assert len(report["blind"]["scores"]) == 2 and "never looks" in report["blind"]["policy"]
    assert report["noop_max"] == 1  # REM's test protocol: every game starts alike

    opened = []  # the same, each game started after 1-30 no-op frames
    vector_env = evaluate_module.make_atari_vector_env
    monkeypatch.setattr(
        evaluate_module,
        "make_atari_vector_env",
        lambda *a, **kw: opened.append(kw["noop_max"]) or vector_env(*a, **kw),
    )
    assert main([str(tmp_path / "model"), *GAMES, "--noop-max", "30", "--out", str(tmp_path)]) == 0
    assert opened == [30, 30]  # the actor-critic's games, then the screen-blind policy's
    assert json.loads((tmp_path / "score.json").read_text())["noop_max"] == 30


def test_a_checkpoint_of_a_run_is_scored_with_that_checkpoints_weights(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trainer = Trainer(_config(), tmp_path / "run")
    try:
        _scrambled(trainer.actor_critic)
        trainer._save(keep_numbered=True)
        expected = _expected(trainer.model.eval(), trainer.actor_critic.eval(), 0)
        model_state = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    finally:
        trainer.close()
    (checkpoint,) = (tmp_path / "run" / "checkpoints").glob("epoch_*.safetensors")
    # after the numbered one, the run goes on: its last checkpoint no longer holds those weights
    later = Trainer(_config(), tmp_path / "run", resume=True)
    try:
        _scrambled(later.actor_critic)
        _scrambled(later.model)
        later._save(keep_numbered=False)
    finally:
        later.close()
    loaded = load_source(str(checkpoint), need_actor_critic=False)
    assert _equal(loaded.model.state_dict(), model_state) and loaded.epoch == 0
    assert main([str(checkpoint), *GAMES, "--out", str(tmp_path / "numbered")]) == 0
    report = json.loads((tmp_path / "numbered" / "score.json").read_text())
    assert (report["scores"], report["lengths"]) == expected and report["epoch"] == 0
    assert "(epoch 0):" in capsys.readouterr().out


def test_sources_without_an_actor_critic_are_clear_errors(tmp_path: Path) -> None:
    model = REMModel(_config().model_config())
    model.save_pretrained(tmp_path / "no_actor")
    with pytest.raises(SystemExit, match="ships no actor-critic"):
        main([str(tmp_path / "no_actor"), *GAMES])
    with pytest.raises(SystemExit, match="neither a model folder, a run folder nor a checkpoint"):
        main([str(tmp_path / "missing"), *GAMES])
    with pytest.raises(SystemExit, match="--temperature must be a positive number"):
        main([str(tmp_path / "no_actor"), "--temperature", "0"])
    with pytest.raises(SystemExit, match="--noop-max must be positive"):
        main([str(tmp_path / "no_actor"), "--noop-max", "0"])
