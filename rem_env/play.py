"""Playing inside a dream with the keyboard: a game session, its rendering, and the window loop.

The dream is pure: the world model imagines every frame from the keys you press; no emulator
runs beside it. :class:`PlaySession` holds the game logic (keys -> action -> dream step) and is
tested headless; :func:`draw` paints a session on a pygame surface; :func:`run` is the loop.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from rem_env.actions import action_for
from rem_env.dream import DreamVectorEnv

__all__ = ["HELP", "NoDisplayError", "PlaySession", "check_display", "draw", "key_controls", "run"]

HELP = "arrows: move  space: fire  R: reset  P: pause  Esc/Q: quit"
HEADLESS_DRIVERS = ("offscreen", "dummy")
"""SDL video drivers that draw nowhere: used only when asked for with ``SDL_VIDEODRIVER``."""
_NO_DISPLAY_HINT = (
    "`rem-env play` opens a window: run it on a desktop or over `ssh -X`, write a video "
    "with `rem-env dream` instead, or set SDL_VIDEODRIVER=dummy to play unseen (tests)"
)


class NoDisplayError(RuntimeError):
    """Raised when there is no display to open the game window on."""


def check_display(environ: Mapping[str, str] | None = None, platform: str | None = None) -> None:
    """Refuses to play where no window can be seen, unless SDL's video driver was chosen.

    Without a display, SDL falls back to a driver that draws into memory, and a game would
    run unseen and forever. On Linux and other X11/Wayland systems a display is named by
    ``DISPLAY`` or ``WAYLAND_DISPLAY``; a user who sets ``SDL_VIDEODRIVER`` (e.g. ``dummy``
    in tests) gets what they asked for.

    Args:
        environ: The environment (default: ``os.environ``).
        platform: ``sys.platform`` (default: this one).

    Raises:
        NoDisplayError: If no display is set on a system that needs one.

    Example:
        >>> check_display({"SDL_VIDEODRIVER": "dummy"}, "linux")
        >>> check_display({}, "linux")
        Traceback (most recent call last):
        ...
        rem_env.play.NoDisplayError: no display (neither DISPLAY nor WAYLAND_DISPLAY is set); ...
    """
    environ = os.environ if environ is None else environ
    platform = sys.platform if platform is None else platform
    if environ.get("SDL_VIDEODRIVER"):
        return
    if platform.startswith(("win", "cygwin", "darwin")):
        return  # their displays need no variable
    if not (environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY")):
        raise NoDisplayError(
            f"no display (neither DISPLAY nor WAYLAND_DISPLAY is set); {_NO_DISPLAY_HINT}"
        )


def key_controls() -> dict[int, str]:
    """pygame key -> control: arrows (and WASD) move, space fires."""
    import pygame

    return {
        pygame.K_UP: "UP",
        pygame.K_w: "UP",
        pygame.K_DOWN: "DOWN",
        pygame.K_s: "DOWN",
        pygame.K_LEFT: "LEFT",
        pygame.K_a: "LEFT",
        pygame.K_RIGHT: "RIGHT",
        pygame.K_d: "RIGHT",
        pygame.K_SPACE: "FIRE",
    }


class PlaySession:
    """One person playing one dream: keys in, dream steps out.

    Held controls are tracked from KEYDOWN/KEYUP events, so events injected with
    ``pygame.event.post`` play exactly like real key presses.

    Args:
        env: A one-env dream with ``render_mode="rgb_array"`` and ``autoreset_mode="DISABLED"``
            (an ended episode waits for the next :meth:`tick`, which starts a new one).
        meanings: The game's action meanings (:func:`rem_env.actions.action_meanings`).
        seed: Seed of the first reset.
        label: Text shown above the game, one or more lines (e.g. the env id, and that the
            model is untrained).
    """

    def __init__(
        self,
        env: DreamVectorEnv,
        meanings: tuple[str, ...],
        seed: int | None = None,
        label: str = "",
    ) -> None:
        if env.num_envs != 1 or env.render_mode != "rgb_array":
            raise ValueError("PlaySession needs a one-env dream with render_mode='rgb_array'")
        if env.autoreset_mode.name != "DISABLED":
            raise ValueError("PlaySession needs autoreset_mode='DISABLED' (it resets itself)")
        if len(meanings) != env.single_action_space.n:
            raise ValueError(
                f"{len(meanings)} action meanings for a dream of {env.single_action_space.n} "
                "actions"
            )
        self.env = env
        self.meanings = meanings
        self.label = label
        self.held: set[str] = set()
        self.running = True
        self.paused = False
        self.episodes = 0
        self.total_steps = 0
        self._controls = key_controls()
        self._seed = seed
        self.reset()

    @property
    def action(self) -> int:
        """The action the held controls ask for."""
        return action_for(self.held, self.meanings)

    def reset(self) -> None:
        """Starts a new episode (the first one with ``seed``)."""
        self.env.reset(seed=self._seed)
        self._seed = None
        self.steps = 0
        self.episode_return = 0.0
        self.last_reward = 0.0
        self.ended = False
        self.frame: np.ndarray = self.env.render()[0]

    def handle_events(self, events: Iterable[Any]) -> None:
        """Applies pygame events: controls held and released, R, P, Esc/Q and window close."""
        import pygame

        for event in events:
            if event.type == pygame.QUIT:
                self.running = False
            elif event.type == pygame.KEYDOWN:
                if event.key in (pygame.K_ESCAPE, pygame.K_q):
                    self.running = False
                elif event.key == pygame.K_r:
                    self.reset()
                elif event.key == pygame.K_p:
                    self.paused = not self.paused
                elif event.key in self._controls:
                    self.held.add(self._controls[event.key])
            elif event.type == pygame.KEYUP and event.key in self._controls:
                self.held.discard(self._controls[event.key])

    def tick(self) -> bool:
        """One dream step with the held controls' action, unless paused or quit.

        Returns:
            Whether the dream stepped.
        """
        if not self.running or self.paused:
            return False
        if self.ended:
            self.episodes += 1
            self.reset()
        _, rewards, terminated, truncated, _ = self.env.step(np.array([self.action]))
        self.last_reward = float(rewards[0])
        self.episode_return += self.last_reward
        self.steps += 1
        self.total_steps += 1
        self.ended = bool(terminated[0] or truncated[0])
        self.frame = self.env.render()[0]
        return True

    def status(self) -> list[str]:
        """The lines shown beside the game."""
        state = "PAUSED" if self.paused else "EPISODE OVER" if self.ended else ""
        return [
            line
            for line in (
                *self.label.splitlines(),
                f"step {self.steps}  return {self.episode_return:+g}  "
                f"reward {self.last_reward:+g}  {state}",
                f"action {self.meanings[self.action]}",
                HELP,
            )
            if line
        ]


def draw(surface: Any, session: PlaySession, font: Any) -> None:
    """Paints the session's frame (scaled to the surface below the text) and its status."""
    import pygame

    lines = session.status()
    line_height = font.get_linesize()
    top = line_height * len(lines)
    surface.fill((0, 0, 0))
    frame = pygame.surfarray.make_surface(np.ascontiguousarray(session.frame.transpose(1, 0, 2)))
    width, height = surface.get_size()
    surface.blit(pygame.transform.scale(frame, (width, height - top)), (0, top))
    for i, line in enumerate(lines):
        surface.blit(font.render(line, True, (255, 220, 0)), (4, i * line_height))


def run(session: PlaySession, scale: int = 8, fps: int = 15, max_steps: int | None = None) -> None:
    """Opens a window and plays until quit (or until ``max_steps`` dream steps).

    Args:
        session: The session to play.
        scale: Window pixels per dream pixel.
        fps: Dream steps per second.
        max_steps: Stop after this many dream steps (None: until quit).

    Raises:
        NoDisplayError: If SDL found no display and fell back to a driver that draws nowhere
            (``SDL_VIDEODRIVER`` set to one of them is obeyed).
        ValueError: For a ``scale`` or ``fps`` below 1.
    """
    if scale < 1 or fps < 1:
        raise ValueError(f"scale and fps must be positive, got scale={scale}, fps={fps}")
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    import pygame

    pygame.display.init()  # no pygame.init(): the dream has no sound to open
    driver = pygame.display.get_driver()
    if driver in HEADLESS_DRIVERS and not os.environ.get("SDL_VIDEODRIVER"):
        pygame.quit()
        raise NoDisplayError(
            f"no display could be opened (SDL fell back to its {driver!r} driver, which draws "
            f"nowhere); {_NO_DISPLAY_HINT}"
        )
    pygame.font.init()
    try:
        font = pygame.font.Font(None, 20)
        h, w, _ = session.frame.shape
        text_height = font.get_linesize() * len(session.status())
        surface = pygame.display.set_mode((max(w * scale, 480), h * scale + text_height))
        pygame.display.set_caption("rem-env play")
        clock = pygame.time.Clock()
        steps = 0
        while session.running and (max_steps is None or steps < max_steps):
            session.handle_events(pygame.event.get())
            steps += session.tick()
            draw(surface, session, font)
            pygame.display.flip()
            clock.tick(fps)
    finally:
        pygame.quit()
