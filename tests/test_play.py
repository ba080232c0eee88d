"""`rem-env play` headless (SDL dummy video driver): injected keys change the dream's actions."""

from __future__ import annotations

import os

os.environ["SDL_VIDEODRIVER"] = "dummy"
os.environ["SDL_AUDIODRIVER"] = "dummy"
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

import numpy as np
import pytest
import torch

from rem_env import DreamVectorEnv, REMConfig, REMModel
from rem_env.actions import ACTION_MEANINGS, action_for, action_meanings
from rem_env.registration import ATARI_100K_GAMES

pygame = pytest.importorskip("pygame")
from rem_env.play import PlaySession, draw, run  # noqa: E402


class SpyDream(DreamVectorEnv):
    """A dream that records the actions it is stepped with."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.actions: list[int] = []

    def step(self, actions: np.ndarray):  # type: ignore[override]
        self.actions.append(int(actions[0]))
        return super().step(actions)


def make_session(game: str = "Breakout", **kwargs: object) -> tuple[PlaySession, SpyDream]:
    torch.manual_seed(0)
    model = REMModel(REMConfig.preset("tiny", num_actions=ATARI_100K_GAMES[game], game=game))
    env = SpyDream(
        model, 1, obs_type="tokens", render_mode="rgb_array", autoreset_mode="DISABLED", **kwargs
    )
    return PlaySession(env, action_meanings(game), seed=0, label=game), env


@pytest.fixture(autouse=True)
def pygame_display():
    pygame.display.init()
    pygame.display.set_mode((64, 64))
    yield
    pygame.quit()


def press(key: int) -> None:
    pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=key))


def release(key: int) -> None:
    pygame.event.post(pygame.event.Event(pygame.KEYUP, key=key))


def test_injected_keys_change_the_dreams_actions() -> None:
    session, env = make_session("Breakout")  # NOOP, FIRE, RIGHT, LEFT
    session.handle_events(pygame.event.get())
    session.tick()
    press(pygame.K_RIGHT)
    session.handle_events(pygame.event.get())
    session.tick()
    press(pygame.K_SPACE)  # RIGHT + FIRE: Breakout has no RIGHTFIRE -> RIGHT
    session.handle_events(pygame.event.get())
    session.tick()
    release(pygame.K_RIGHT)
    session.handle_events(pygame.event.get())
    session.tick()
    release(pygame.K_SPACE)
    press(pygame.K_LEFT)
    session.handle_events(pygame.event.get())
    session.tick()
    meanings = action_meanings("Breakout")
    assert [meanings[a] for a in env.actions] == ["NOOP", "RIGHT", "RIGHT", "FIRE", "LEFT"]
    assert session.steps + session.episodes >= 1


def test_key_combinations_make_combined_actions() -> None:
    session, env = make_session("Alien")  # the full 18-action set
    for key in (pygame.K_UP, pygame.K_RIGHT, pygame.K_SPACE):
        press(key)
    session.handle_events(pygame.event.get())
    session.tick()
    assert action_meanings("Alien")[env.actions[-1]] == "UPRIGHTFIRE"


def test_pause_reset_and_quit_keys() -> None:
    session, env = make_session()
    session.tick()
    press(pygame.K_p)
    session.handle_events(pygame.event.get())
    assert session.paused and not session.tick()
    press(pygame.K_p)
    press(pygame.K_r)
    session.handle_events(pygame.event.get())
    assert not session.paused and session.steps == 0 and session.episode_return == 0
    assert session.tick() and len(env.actions) == 2
    press(pygame.K_ESCAPE)
    session.handle_events(pygame.event.get())
    assert not session.running and not session.tick()


def test_episodes_restart_and_status_shows_reward_and_steps() -> None:
    session, _ = make_session()
    for _ in range(30):  # an untrained model ends episodes often
        session.tick()
    assert session.total_steps == 30
    assert session.episodes >= 1
    status = "\n".join(session.status())
    assert f"step {session.steps}" in status and "return" in status and "action NOOP" in status


def test_draw_and_run_headless() -> None:
    session, env = make_session()
    pygame.font.init()
    surface = pygame.Surface((160, 200))
    draw(surface, session, pygame.font.Font(None, 20))
    assert surface.get_at((80, 150))[:3] != (0, 0, 0) or session.frame.max() == 0
    press(pygame.K_LEFT)
    run(session, scale=4, fps=1000, max_steps=3)
    assert env.actions == [3, 3, 3]  # LEFT held through the loop


def test_play_command_runs_headless(capsys: pytest.CaptureFixture[str]) -> None:
    from rem_env.cli import main

    argv = ["play", "REM-Breakout-v0", "--random-weights", "tiny", "--max-steps", "3"]
    assert main([*argv, "--fps", "1000", "--device", "cpu"]) == 0
    assert "played 3 steps" in capsys.readouterr().out


def test_action_table_matches_ale_py() -> None:
    gym = pytest.importorskip("gymnasium")
    ale_py = pytest.importorskip("ale_py")
    gym.register_envs(ale_py)
    assert set(ACTION_MEANINGS) == set(ATARI_100K_GAMES)
    for game, meanings in ACTION_MEANINGS.items():
        env = gym.make(f"ALE/{game}-v5")
        try:
            assert tuple(env.unwrapped.get_action_meanings()) == meanings, game
        finally:
            env.close()


@pytest.mark.parametrize(
    ("held", "game", "expected"),
    [
        (set(), "Breakout", "NOOP"),
        ({"LEFT", "RIGHT"}, "Breakout", "NOOP"),
        ({"UP"}, "Freeway", "UP"),
        ({"UP", "FIRE"}, "Freeway", "UP"),
        ({"DOWN", "LEFT", "FIRE"}, "Seaquest", "DOWNLEFTFIRE"),
        ({"UP", "FIRE"}, "KungFuMaster", "UP"),
        ({"FIRE"}, "Asterix", "NOOP"),
    ],
)
def test_action_for(held: set[str], game: str, expected: str) -> None:
    meanings = action_meanings(game)
    assert meanings[action_for(held, meanings)] == expected


def test_play_session_checks_its_env() -> None:
    model = REMModel(REMConfig.preset("tiny", num_actions=4))
    env = DreamVectorEnv(model, 1, render_mode="rgb_array")
    with pytest.raises(ValueError, match="DISABLED"):
        PlaySession(env, action_meanings("Breakout"))


def test_play_without_a_display_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from rem_env.cli import main

    pygame.quit()
    monkeypatch.setenv("SDL_VIDEODRIVER", "no-such-driver")
    assert main(["play", "REM-Breakout-v0", "--random-weights", "tiny", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "cannot open a game window" in err and "Traceback" not in err
