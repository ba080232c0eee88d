"""SB3DreamVecEnv: stable-baselines3 conventions, VecMonitor, and PPO/A2C/DQN learning on dreams."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium.vector import AutoresetMode
from stable_baselines3 import A2C, DQN, PPO
from stable_baselines3.common.env_checker import check_env
from stable_baselines3.common.vec_env import VecMonitor

from rem_env import DreamEnv, DreamVectorEnv, REMConfig, REMModel, TokenizerConfig, WorldModelConfig
from rem_env.sb3 import SB3DreamVecEnv


@pytest.fixture(scope="module")
def tiny() -> REMModel:
    return REMModel(REMConfig.preset("tiny", num_actions=4, game="Breakout"))


@pytest.fixture(scope="module")
def model64() -> REMModel:
    """64x64 frames (NatureCNN needs >= 36x36) with a small tokenizer and world model."""
    config = REMConfig(
        num_actions=4,
        tokenizer=TokenizerConfig(
            image_size=64, base_channels=8, num_downsamples=3, vocab_size=16, embed_dim=32
        ),
        world_model=WorldModelConfig(embed_dim=32, num_layers=1, num_heads=2, ffn_dim=64),
        game="Breakout",
    )
    return REMModel(config)


@pytest.mark.parametrize("obs_type", ["rgb", "tokens", "latent"])
def test_sb3_check_env_on_dream_env(tiny: REMModel, obs_type: str) -> None:
    check_env(DreamEnv(tiny, obs_type=obs_type), warn=False)


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
def test_vec_env_conventions(tiny: REMModel, mode: AutoresetMode) -> None:
    dream = DreamVectorEnv(tiny, 4, obs_type="tokens", autoreset_mode=mode, max_episode_steps=3)
    venv = VecMonitor(SB3DreamVecEnv(dream))
    assert venv.observation_space == dream.single_observation_space
    assert venv.get_attr("render_mode") == [None] * 4
    venv.seed(3)
    obs = venv.reset()
    assert obs.shape == (4, 16)
    frames = {tuple(t) for t in tiny.start_tokens[:, -1].tolist()}
    episodes = 0
    for _ in range(12):
        obs, rewards, dones, infos = venv.step(np.random.randint(0, 4, 4))
        assert rewards.dtype == np.float32 and dones.dtype == np.bool_ and len(infos) == 4
        for i, done in enumerate(dones):
            if done:
                episodes += 1
                assert infos[i]["terminal_observation"].shape == (16,)
                assert isinstance(infos[i]["TimeLimit.truncated"], bool)
                assert "episode" in infos[i]  # VecMonitor
                assert tuple(obs[i]) in frames  # already reset
    assert episodes > 0
    venv.close()


def test_seeded_resets_are_reproducible(tiny: REMModel) -> None:
    def run() -> list[np.ndarray]:
        venv = SB3DreamVecEnv(DreamVectorEnv(tiny, 3, obs_type="tokens"))
        venv.seed(7)
        out = [venv.reset()]
        out += [venv.step(np.array([0, 1, 2]))[0] for _ in range(5)]
        return out

    for a, b in zip(run(), run(), strict=True):
        assert np.array_equal(a, b)


def test_rejects_torch_output(tiny: REMModel) -> None:
    with pytest.raises(ValueError, match="numpy"):
        SB3DreamVecEnv(DreamVectorEnv(tiny, 2, output="torch"))


def test_ppo_cnn_policy_learns(model64: REMModel) -> None:
    venv = SB3DreamVecEnv(DreamVectorEnv(model64, 4, obs_type="rgb", max_episode_steps=20))
    agent = PPO("CnnPolicy", VecMonitor(venv), n_steps=32, batch_size=64, n_epochs=1, seed=0)
    agent.learn(256)
    assert agent.num_timesteps >= 256


def test_a2c_learns(tiny: REMModel) -> None:
    venv = SB3DreamVecEnv(DreamVectorEnv(tiny, 4, obs_type="tokens", max_episode_steps=20))
    agent = A2C("MlpPolicy", VecMonitor(venv), n_steps=8, seed=0)
    agent.learn(256)
    assert agent.num_timesteps >= 256


def test_dqn_learns(tiny: REMModel) -> None:
    dream = DreamVectorEnv(tiny, 2, obs_type="latent", autoreset_mode="same_step")
    agent = DQN(
        "MlpPolicy", VecMonitor(SB3DreamVecEnv(dream)), learning_starts=64, buffer_size=1000, seed=0
    )
    agent.learn(300)
    assert agent.num_timesteps >= 300
