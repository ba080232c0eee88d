"""Tests of rem_train.model_report: a model card gets the measured figures of an exported model."""

from __future__ import annotations

import json

import pytest
import torch

from rem_env import REMConfig, REMModel
from rem_env.agents import RandomAgent
from rem_env.events import EventRates
from rem_env.fidelity import run_fidelity
from rem_env.manifest import ProtocolManifest
from rem_env.rules import RuleCounts
from rem_train.config import SMOKE_TOKENIZER, SMOKE_WORLD_MODEL
from rem_train.model_report import dream_to_real_section, main


def test_model_report_writes_training_fidelity_and_dream_to_real(tmp_path):
    torch.manual_seed(0)
    model = REMModel(REMConfig(4, SMOKE_TOKENIZER, SMOKE_WORLD_MODEL, game="Breakout")).eval()
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    record = {
        "command": "rem-train --game Breakout --preset cpu --out runs/x",
        "preset": "cpu",
        "wall_time_s": 5400.0,
        "env_steps": 20000,
        "epochs": 50,
        "lpips": False,
        "note": "stopped early, then resumed",
        "evaluation": {"scores": [1.0, 3.0], "mean": 2.0, "std": 1.0},
        "config_changes": [
            {"after_epoch": 40, "changes": ["world_model.moving_weight 0.0 -> 10.0"]}
        ],
    }
    (folder / "training.json").write_text(json.dumps(record))
    report = run_fidelity(
        model, "Breakout", RandomAgent(4, seed=0), tmp_path / "fid", games=1, horizon=3,
        max_steps=60,
    )  # fmt: skip
    d2r = tmp_path / "d2r"
    d2r.mkdir()
    summary = {"mean": 2.5, "std": 0.5, "min": 2.0, "max": 3.0, "episodes": 2}
    (d2r / "dream_to_real.json").write_text(
        json.dumps(
            {
                "command": "python -m rem_train.dream_to_real --out d2r",
                "frame_stack": 4,
                "dream_steps": 1000,
                "dream_envs": 2,
                "train_seconds": 60.0,
                "protocol": "test env",
                "agent": summary,
                "random": {**summary, "mean": 1.0},
                "agent_over_random": 2.5,
            }
        )
    )
    assert main([str(folder), "--fidelity", str(tmp_path / "fid"), "--dream-to-real", str(d2r),
                 "--machine", "a test machine"]) == 0  # fmt: skip
    card = (folder / "README.md").read_text()
    assert "rem-train --game Breakout --preset cpu" in card
    assert "wall time: 90.0 min" in card and "a test machine" in card
    assert "2.00 ± 1.00 over 2 episodes" in card and "stopped early, then resumed" in card
    assert "resumed after epoch 40 with: world_model.moving_weight 0.0 -> 10.0" in card
    assert f"| 1 | {report.token_accuracy[0]:.3f} |" in card
    assert "![real vs dream](fidelity_strip.png)" in card
    assert (folder / "fidelity_strip.png").is_file() and (folder / "fidelity_curve.png").is_file()
    assert "| PPO trained only in the dream | 2.50 |" in card and "2.50x" in card
    manifest = ProtocolManifest.from_dict(json.loads((folder / "manifest.json").read_text()))
    assert manifest.evaluation.fidelity_horizon == 3
    assert manifest.evaluation.fidelity_psnr == round(sum(report.psnr) / 3, 2)
    assert f"{manifest.evaluation.fidelity_psnr:.2f} dB PSNR over 3 steps" in card
    REMModel.from_pretrained(folder)  # still a loadable model
    files = card.split("## Files")[1]
    for name in ("model.safetensors", "training.json", "fidelity_strip.png", "manifest.json"):
        assert f"`{name}` (" in files
    assert "README.md" not in files


def test_a_saved_model_card_lists_what_save_pretrained_wrote(tmp_path):
    model = REMModel(REMConfig(4, SMOKE_TOKENIZER, SMOKE_WORLD_MODEL, game="Breakout"))
    model.save_pretrained(tmp_path / "model")
    files = (tmp_path / "model" / "README.md").read_text().split("## Files")[1]
    listed = {name for name in files.split("`")[1::2]}
    on_disk = {path.name for path in (tmp_path / "model").iterdir()} - {"README.md"}
    assert listed == on_disk


def _dream_to_real_dir(
    path, command, agent_mean, random_mean, steps=1000, seed=None, temperature=None,
    event_temperature=None,
):  # fmt: skip
    path.mkdir()
    summary = {"mean": agent_mean, "std": 0.5, "min": 0.0, "max": 9.0, "episodes": 24}
    report = {
        "command": command,
        "frame_stack": 4,
        "dream_steps": steps,
        "dream_envs": 2,
        "train_seconds": 60.0,
        "protocol": "test env",
        "agent": summary,
        "random": {**summary, "mean": random_mean},
        "agent_over_random": agent_mean / random_mean,
    }
    if seed is not None:
        report["seed"] = seed
    if temperature is not None:
        report["dream_temperature"] = temperature
    if event_temperature is not None:
        report["dream_event_temperature"] = event_temperature
    (path / "dream_to_real.json").write_text(json.dumps(report))
    return path


def test_model_card_shows_each_ppo_seed_and_their_mean(tmp_path):
    torch.manual_seed(0)
    model = REMModel(REMConfig(4, SMOKE_TOKENIZER, SMOKE_WORLD_MODEL, game="Breakout")).eval()
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    # seed recorded in the report / only in the command (reports written before it was recorded)
    first = _dream_to_real_dir(tmp_path / "s0", "dream_to_real --out s0", 3.0, 2.0, seed=0)
    second = _dream_to_real_dir(tmp_path / "s1", "dream_to_real --seed 1 --out s1", 6.0, 1.0)
    main([str(folder), "--dream-to-real", str(first), "--dream-to-real", str(second)])
    card = (folder / "README.md").read_text()
    assert "once for each of 2 PPO seeds (2 dreams batched; 1.0 and 1.0 min)" in card
    assert "dream_to_real --out s0\ndream_to_real --seed 1 --out s1\n" in card
    assert "| 0 | 3.00 ± 0.50 (24 games) | 2.00 ± 0.50 | 1.50x |" in card
    assert "| 1 | 6.00 ± 0.50 (24 games) | 1.00 ± 0.50 | 6.00x |" in card
    assert "| mean of 2 seeds | 4.50 | 1.50 | 3.00x |" in card


def test_model_card_refuses_to_average_different_protocols(tmp_path):
    first = _dream_to_real_dir(tmp_path / "a", "dream_to_real", 3.0, 2.0)
    second = _dream_to_real_dir(tmp_path / "b", "dream_to_real --seed 1", 3.0, 2.0, steps=2000)
    with pytest.raises(ValueError, match="dream_steps 2000 but"):
        dream_to_real_section([first, second])
    # reports written before --noop-max existed started every game with one no-op
    varied = _dream_to_real_dir(tmp_path / "c", "dream_to_real --noop-max 30", 3.0, 2.0)
    report = json.loads((varied / "dream_to_real.json").read_text())
    (varied / "dream_to_real.json").write_text(json.dumps({**report, "noop_max": 30}))
    with pytest.raises(ValueError, match="noop_max 30 but"):
        dream_to_real_section([first, varied])
    # a report that only scored an agent trained before has no dream of its own to show
    rescored = _dream_to_real_dir(tmp_path / "d", "dream_to_real --agent a.zip", 3.0, 2.0)
    (rescored / "dream_to_real.json").write_text(json.dumps({**report, "agent_file": "a.zip"}))
    with pytest.raises(ValueError, match="an agent trained before"):
        dream_to_real_section([first, rescored])


def test_model_card_names_the_dream_temperature_and_refuses_to_mix_them(tmp_path):
    # reports written before the option existed dreamed at temperature 1
    old = _dream_to_real_dir(tmp_path / "old", "dream_to_real", 3.0, 2.0)
    new = _dream_to_real_dir(tmp_path / "new", "dream_to_real", 3.0, 2.0, temperature=1.0)
    assert "temperature" not in dream_to_real_section([old, new])
    cool = _dream_to_real_dir(tmp_path / "a", "dream_to_real", 3.0, 2.0, temperature=0.5)
    cool_too = _dream_to_real_dir(tmp_path / "b", "dream_to_real", 4.0, 2.0, temperature=0.5)
    assert "(2 dreams batched, temperature 0.5; 1.0 and 1.0 min)" in dream_to_real_section(
        [cool, cool_too]
    )
    with pytest.raises(ValueError, match=r"dream_temperature 0\.5 but"):
        dream_to_real_section([old, cool])
    sharp = _dream_to_real_dir(tmp_path / "c", "d2r", 3.0, 2.0, temperature=0.0,
                               event_temperature=1.0)  # fmt: skip
    assert "temperature 0 (rewards and ends: 1);" in dream_to_real_section([sharp])
    argmax = _dream_to_real_dir(tmp_path / "d", "d2r", 3.0, 2.0, temperature=0.0)
    with pytest.raises(ValueError, match=r"dream_event_temperature 0\.0 but"):
        dream_to_real_section([sharp, argmax])


def test_model_card_shows_the_events_of_simple_policies(tmp_path, capsys):
    torch.manual_seed(0)
    folder = tmp_path / "model"
    REMModel(REMConfig(4, SMOKE_TOKENIZER, SMOKE_WORLD_MODEL, game="Breakout")).save_pretrained(
        folder
    )
    counts = dict(dream_steps=400, dream_ends=2, dream_rewards=3, real_steps=400, real_ends=10,
                  real_rewards=4, temperature=1.0)  # fmt: skip
    events = tmp_path / "events.json"
    rates = [EventRates(**counts), EventRates(**counts, policy="RIGHT", jitter=0.2)]
    events.write_text(json.dumps([r.to_dict() for r in rates]))  # what `rem-env events` writes
    assert main([str(folder), "--events", str(events)]) == 0
    card = (folder / "README.md").read_text()
    assert "## Episode ends and rewards under simple policies" in card
    assert "| random policy | 25.0 | 5.0 | 10.0 | 7.5 |" in card
    assert "| RIGHT held, 20% random actions | 25.0 | 5.0 | 10.0 | 7.5 |" in card
    rule = RuleCounts(rewards=4, lost=5, back=1, rewards_with_loss=3, losses_with_reward=3)
    ruled = EventRates(**counts, dream_rule=rule, real_rule=rule, reconstructed_rule=rule,
                       rule=("bricks broken", "bricks back"))  # fmt: skip
    events.write_text(json.dumps([ruled.to_dict()]))
    assert main([str(folder), "--events", str(events)]) == 0
    assert (
        "| random policy | 3 of 4 | 3 of 4 | 3 of 4 | 3 of 5 |"
        in (folder / "README.md").read_text()
    )
    events.write_text(json.dumps(EventRates(**counts).to_dict()))  # the command's first format
    assert main([str(folder), "--events", str(events)]) == 0
    assert "| random policy | 25.0 |" in (folder / "README.md").read_text()
    # Refusals and missing files are one line on stderr and exit status 2, not a traceback.
    events.write_text("[]")
    for path in (events, tmp_path / "missing.json"):
        with pytest.raises(SystemExit) as stop:
            main([str(folder), "--events", str(path)])
        assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "holds no policy's counts" in err and "missing.json" in err
