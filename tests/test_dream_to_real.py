"""Tests of rem_train.dream_to_real: frame stacking as in the dream, and a whole tiny run."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3.common.vec_env.stacked_observations import StackedObservations

from rem_env import REMConfig, REMModel
from rem_train import evaluate as evaluate_module
from rem_train.config import SMOKE_TOKENIZER, SMOKE_WORLD_MODEL
from rem_train.dream_to_real import StackedSB3Policy, dream_episodes, main, seeds_table, table


class _Recorder:
    def __init__(self) -> None:
        self.seen: list[np.ndarray] = []

    def predict(self, obs: np.ndarray, deterministic: bool) -> tuple[np.ndarray, None]:
        self.seen.append(obs.copy())
        return np.zeros(len(obs), dtype=np.int64), None


def test_stacked_policy_sees_what_vec_frame_stack_gives():
    rng = np.random.default_rng(0)
    space = spaces.Box(0, 255, (4, 4, 3), np.uint8)
    reference = StackedObservations(3, 4, space, "last")
    recorder = _Recorder()
    policy = StackedSB3Policy(recorder, num_envs=3, n_stack=4)
    obs = rng.integers(0, 256, (3, 4, 4, 3), dtype=np.uint8)
    expected = [reference.reset(obs)]
    policy.episodes_ended(np.ones(3, dtype=bool))
    policy.act(obs)
    for _ in range(9):
        obs = rng.integers(0, 256, (3, 4, 4, 3), dtype=np.uint8)
        dones = rng.random(3) < 0.3
        infos = [{"terminal_observation": obs[i]} if d else {} for i, d in enumerate(dones)]
        stacked, _ = reference.update(obs, dones, infos)
        expected.append(stacked)
        policy.episodes_ended(dones)
        policy.act(obs)
    for mine, theirs in zip(recorder.seen, expected, strict=True):
        np.testing.assert_array_equal(mine, theirs)


def test_a_tiny_dream_to_real_run(tmp_path, capsys, monkeypatch):
    made = []
    make_vec = gym.make_vec
    monkeypatch.setattr(gym, "make_vec", lambda *a, **kw: made.append(kw) or make_vec(*a, **kw))
    torch.manual_seed(0)
    model = REMModel(REMConfig(4, SMOKE_TOKENIZER, SMOKE_WORLD_MODEL, game="Breakout"))
    model.save_pretrained(tmp_path / "model")
    out = tmp_path / "out"
    code = main(
        ["--model", str(tmp_path / "model"), "--steps", "64", "--num-envs", "2",
         "--episodes", "2", "--eval-envs", "2", "--max-raw-frames", "400", "--out", str(out),
         "--temperature", "0.5"]
    )  # fmt: skip
    assert code == 0
    report = json.loads((out / "dream_to_real.json").read_text())
    assert report["agent"]["episodes"] == report["random"]["episodes"] == 2
    assert len(report["agent"]["scores"]) == 2
    assert report["dream_steps"] == 64 and report["frame_stack"] == 4
    assert report["seed"] == 0  # --seed's default, recorded for model cards of several seeds
    assert report["dream_temperature"] == 0.5 and made[0]["temperature"] == 0.5
    assert (out / "ppo_dream.zip").is_file()
    assert report["dream_episodes"]["max_steps"] == 2000
    # Breakout's screen-blind policy played the same real games
    assert report["blind"]["episodes"] == 2 and "never looks" in report["blind"]["policy"]
    printed = capsys.readouterr().out
    assert "PPO trained only in the dream" in printed and "RIGHT, FIRE with probability" in printed
    assert "(real game, test protocol)" in printed and report["noop_max"] == 1

    # the saved agent scored again, its games started after 1-30 no-op frames
    opened = []
    vector_env = evaluate_module.make_atari_vector_env
    monkeypatch.setattr(
        evaluate_module,
        "make_atari_vector_env",
        lambda *a, **kw: opened.append(kw["noop_max"]) or vector_env(*a, **kw),
    )
    again = tmp_path / "again"
    code = main(
        ["--agent", str(out / "ppo_dream.zip"), "--noop-max", "30", "--episodes", "2",
         "--eval-envs", "2", "--max-raw-frames", "400", "--out", str(again)]
    )  # fmt: skip
    assert code == 0 and opened == [30, 30, 30]  # the agent, random and the screen-blind policy
    rescored = json.loads((again / "dream_to_real.json").read_text())
    assert rescored["agent_file"] == str(out / "ppo_dream.zip") and rescored["noop_max"] == 30
    assert "dream_steps" not in rescored and not (again / "ppo_dream.zip").exists()
    assert "1-30 no-op frames at the start" in rescored["protocol"]
    assert "(real game, test protocol, 1-30 no-op frames at the start)" in capsys.readouterr().out


def test_an_agent_trains_on_in_a_second_leg(tmp_path, capsys):
    from stable_baselines3 import PPO

    torch.manual_seed(0)
    model = REMModel(REMConfig(4, SMOKE_TOKENIZER, SMOKE_WORLD_MODEL, game="Breakout"))
    model.save_pretrained(tmp_path / "model")
    common = ["--model", str(tmp_path / "model"), "--steps", "64", "--num-envs", "2",
              "--episodes", "1", "--eval-envs", "1", "--max-raw-frames", "200"]  # fmt: skip
    assert main([*common, "--out", str(tmp_path / "first")]) == 0
    first = PPO.load(tmp_path / "first" / "ppo_dream.zip")
    assert first.num_timesteps == 256  # one rollout of 128 steps in each of 2 dreams
    code = main(
        [*common, "--continue-from", str(tmp_path / "first" / "ppo_dream.zip"), "--seed", "3",
         "--out", str(tmp_path / "second")]
    )  # fmt: skip
    assert code == 0
    second = PPO.load(tmp_path / "second" / "ppo_dream.zip")
    assert second.num_timesteps == 512 and second._n_updates == 2 * first._n_updates
    changed = [
        not torch.equal(a, b)
        for a, b in zip(first.policy.parameters(), second.policy.parameters(), strict=True)
    ]
    assert any(changed)  # it learned on from the first leg's weights
    report = json.loads((tmp_path / "second" / "dream_to_real.json").read_text())
    assert report["earlier_steps"] == 256 and report["dream_steps"] == 64
    assert report["all_steps"] == 512  # PPO trains whole rollouts: 64 asked, 256 done
    assert report["continued_from"] == str(tmp_path / "first" / "ppo_dream.zip")
    assert "which had trained 256 steps: 512 in all" in capsys.readouterr().out

    # an agent of other spaces, a file that is no agent, and both --agent and --continue-from
    cartpole = PPO("MlpPolicy", "CartPole-v1", n_steps=16, batch_size=16)
    cartpole.save(tmp_path / "cartpole.zip")
    with pytest.raises(SystemExit, match=r"cartpole\.zip cannot go on in this env"):
        main([*common, "--continue-from", str(tmp_path / "cartpole.zip"), "--out",
              str(tmp_path / "no")])  # fmt: skip
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(SystemExit, match="not an SB3 agent's zip"):
        main([*common, "--continue-from", str(tmp_path / "junk.zip"), "--out",
              str(tmp_path / "no2")])  # fmt: skip
    assert not (tmp_path / "no2").exists()
    with pytest.raises(SystemExit, match="not both"):
        main(["--agent", str(tmp_path / "cartpole.zip"), "--continue-from",
              str(tmp_path / "cartpole.zip"), "--out", str(tmp_path / "no3")])  # fmt: skip


def _scores(mean: float) -> dict[str, object]:
    return {"mean": mean, "std": 0.0, "min": mean, "max": mean, "episodes": 2, "lengths": [30, 32]}


def test_the_table_says_an_agent_that_scored_nothing_did_zero_times_random():
    text = table({"agent": _scores(0.0), "random": _scores(1.88), "agent_over_random": 0.0})
    assert "Dream-trained agent / random: 0.00x" in text
    assert "random scored 0" not in text  # random scored 1.88: only the agent scored nothing
    text = table({"agent": _scores(2.0), "random": _scores(0.0), "agent_over_random": None})
    assert "random scored 0" in text


def test_the_report_says_how_the_dream_episodes_went_beside_the_real_ones():
    class Trained:  # what SB3's VecMonitor leaves in an algorithm: one dict per finished episode
        def __init__(self) -> None:
            self.ep_info_buffer = [{"r": 1.0, "l": 2000, "t": 0.0}, {"r": 0.0, "l": 400, "t": 0.0}]

    dream = dream_episodes(Trained(), max_steps=2000)
    assert dream == {
        "episodes": 2, "mean_length": 1200.0, "mean_return": 0.5, "truncated": 1, "max_steps": 2000
    }  # fmt: skip
    text = table({"agent": _scores(0.0), "random": _scores(1.88), "agent_over_random": 0.0,
                  "dream_episodes": dream})  # fmt: skip
    assert "its last 2 episodes lasted 1200 steps and returned 0.50" in text
    assert "(1 cut at 2000 steps); on the real game it lasted 31 steps and scored 0.00" in text
    assert dream_episodes(object(), 2000)["episodes"] == 0  # no episode finished: no line


def test_a_negative_dream_temperature_is_refused_before_any_work(tmp_path):
    with pytest.raises(SystemExit, match="--temperature must be a finite number >= 0"):
        main(["--steps", "64", "--temperature", "-1", "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match="--event-temperature must be a finite number >= 0"):
        main(["--event-temperature", "nan", "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match="--noop-max must be positive"):
        main(["--noop-max", "0", "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match="no such file"):
        main(["--agent", str(tmp_path / "missing.zip"), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_the_seeds_table_shows_the_screen_blind_policy_when_every_run_played_it():
    policy = "RIGHT, FIRE with probability 0.1 (never looks at the screen)"
    blind = {**_scores(7.5), "policy": policy}
    runs = [
        {"seed": 0, "agent": _scores(6.0), "random": _scores(2.0), "agent_over_random": 3.0,
         "blind": blind},
        {"seed": 1, "agent": _scores(4.0), "random": _scores(1.0), "agent_over_random": 4.0,
         "blind": {**blind, "mean": 8.5}},
    ]  # fmt: skip
    text = seeds_table(runs)
    assert "| never looks at the screen |" in text.splitlines()[0]
    assert text.splitlines()[1] == "|---|---|---|---|---|"
    assert "| mean of 2 seeds | 5.00 | 1.50 | 3.33x | 8.00 |" in text
    assert "The last column's policy: RIGHT, FIRE with probability 0.1" in text
    older = [{k: v for k, v in run.items() if k != "blind"} for run in runs[:1]] + runs[1:]
    assert "never looks" not in seeds_table(older)  # a report written before it was played


def test_ppo_trained_on_the_real_game_is_scored_as_the_reference(tmp_path, capsys, monkeypatch):
    from rem_train import dream_to_real

    trained_on = []
    train_ppo = dream_to_real._train_ppo
    monkeypatch.setattr(
        dream_to_real, "_train_ppo", lambda venv, *a: trained_on.append(venv) or train_ppo(venv, *a)
    )
    out = tmp_path / "game"
    code = main(
        ["--train-on", "game", "--steps", "64", "--num-envs", "2", "--episodes", "2",
         "--eval-envs", "2", "--max-raw-frames", "400", "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    training_game = trained_on[0].envs[0]
    assert training_game.observation_space.shape == (64, 64, 3)  # what the dream shows
    assert [training_game.reward(r) for r in (7.0, 1.0, 0.0, -3.0)] == [1.0, 1.0, 0.0, -1.0]
    report = json.loads((out / "dream_to_real.json").read_text())
    assert report["trained_on"] == "game" and report["game_steps"] == 64
    assert report["game_episodes"]["max_steps"] == 5000 and "model" not in report
    assert (out / "ppo_game.zip").is_file() and not (out / "ppo_dream.zip").exists()
    printed = capsys.readouterr().out
    assert (
        "| PPO trained on the real game |" in printed and "Game-trained agent / random" in printed
    )
    with pytest.raises(SystemExit, match="--train-on game trains on the real game"):
        main(["--train-on", "game", "--temperature", "0.5", "--out", str(tmp_path / "no")])
    assert not (tmp_path / "no").exists()


def test_the_seeds_table_says_where_the_agents_trained_and_keeps_them_apart():
    runs = [
        {"seed": s, "agent": _scores(6.0), "random": _scores(2.0), "agent_over_random": 3.0,
         "trained_on": "game"}
        for s in (0, 1)
    ]  # fmt: skip
    header = seeds_table(runs).splitlines()[0]
    assert "PPO trained on the real game" in header and "game-trained / random" in header
    older = {"seed": 2, "agent": _scores(1.0), "random": _scores(2.0), "agent_over_random": 0.5}
    assert "PPO trained only in the dream" in seeds_table([older])  # reports of before: dream
    with pytest.raises(ValueError, match="one table per --train-on"):
        seeds_table([*runs, older])
