"""The action meanings of the Atari 100K games, and how held controls combine into one action.

The table is ale-py's minimal action set of each game (``ALE/<Game>-v5``,
``env.unwrapped.get_action_meanings()``), written out so that rem-env needs no ROM or emulator
to name a dream's actions; ``tests/test_play.py`` checks it against ale-py.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["ACTION_MEANINGS", "CONTROLS", "action_for", "action_meanings"]

FULL_ACTION_SET = (
    "NOOP", "FIRE", "UP", "RIGHT", "LEFT", "DOWN", "UPRIGHT", "UPLEFT", "DOWNRIGHT", "DOWNLEFT",
    "UPFIRE", "RIGHTFIRE", "LEFTFIRE", "DOWNFIRE", "UPRIGHTFIRE", "UPLEFTFIRE", "DOWNRIGHTFIRE",
    "DOWNLEFTFIRE",
)  # fmt: skip
"""ALE's 18 actions, in ALE's order."""

ACTION_MEANINGS: dict[str, tuple[str, ...]] = {
    "Alien": FULL_ACTION_SET,
    "Amidar": (
        "NOOP", "FIRE", "UP", "RIGHT", "LEFT", "DOWN", "UPFIRE", "RIGHTFIRE", "LEFTFIRE",
        "DOWNFIRE",
    ),
    "Assault": ("NOOP", "FIRE", "UP", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE"),
    "Asterix": (
        "NOOP", "UP", "RIGHT", "LEFT", "DOWN", "UPRIGHT", "UPLEFT", "DOWNRIGHT", "DOWNLEFT",
    ),
    "BankHeist": FULL_ACTION_SET,
    "BattleZone": FULL_ACTION_SET,
    "Boxing": FULL_ACTION_SET,
    "Breakout": ("NOOP", "FIRE", "RIGHT", "LEFT"),
    "ChopperCommand": FULL_ACTION_SET,
    "CrazyClimber": (
        "NOOP", "UP", "RIGHT", "LEFT", "DOWN", "UPRIGHT", "UPLEFT", "DOWNRIGHT", "DOWNLEFT",
    ),
    "DemonAttack": ("NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE"),
    "Freeway": ("NOOP", "UP", "DOWN"),
    "Frostbite": FULL_ACTION_SET,
    "Gopher": ("NOOP", "FIRE", "UP", "RIGHT", "LEFT", "UPFIRE", "RIGHTFIRE", "LEFTFIRE"),
    "Hero": FULL_ACTION_SET,
    "Jamesbond": FULL_ACTION_SET,
    "Kangaroo": FULL_ACTION_SET,
    "Krull": FULL_ACTION_SET,
    "KungFuMaster": (
        "NOOP", "UP", "RIGHT", "LEFT", "DOWN", "DOWNRIGHT", "DOWNLEFT", "RIGHTFIRE", "LEFTFIRE",
        "DOWNFIRE", "UPRIGHTFIRE", "UPLEFTFIRE", "DOWNRIGHTFIRE", "DOWNLEFTFIRE",
    ),
    "MsPacman": (
        "NOOP", "UP", "RIGHT", "LEFT", "DOWN", "UPRIGHT", "UPLEFT", "DOWNRIGHT", "DOWNLEFT",
    ),
    "Pong": ("NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE"),
    "PrivateEye": FULL_ACTION_SET,
    "Qbert": ("NOOP", "FIRE", "UP", "RIGHT", "LEFT", "DOWN"),
    "RoadRunner": FULL_ACTION_SET,
    "Seaquest": FULL_ACTION_SET,
    "UpNDown": ("NOOP", "FIRE", "UP", "DOWN", "UPFIRE", "DOWNFIRE"),
}  # fmt: skip
"""Game -> its action meanings; index ``a`` is the meaning of action ``a``."""

CONTROLS = ("UP", "DOWN", "LEFT", "RIGHT", "FIRE")
"""The controls a player holds; actions are combinations of them."""


def action_meanings(game: str) -> tuple[str, ...]:
    """The meanings of ``game``'s actions.

    Raises:
        ValueError: If ``game`` is not an Atari 100K game.

    Example:
        >>> action_meanings("Breakout")
        ('NOOP', 'FIRE', 'RIGHT', 'LEFT')
    """
    if game not in ACTION_MEANINGS:
        raise ValueError(f"unknown game {game!r}; known: {', '.join(ACTION_MEANINGS)}")
    return ACTION_MEANINGS[game]


def action_for(held: Iterable[str], meanings: tuple[str, ...]) -> int:
    """The action of ``meanings`` that the held controls ask for.

    The held controls make a name like ALE's (``UP`` + ``RIGHT`` + ``FIRE`` -> ``UPRIGHTFIRE``);
    opposite directions cancel. If the game lacks that action, the action keeping the most of the
    held controls is taken (directions before fire, horizontal before vertical), and NOOP (or
    action 0) when none fits.

    Args:
        held: Held controls, from :data:`CONTROLS`.
        meanings: The game's action meanings.

    Example:
        >>> breakout = action_meanings("Breakout")
        >>> action_for({"UP", "RIGHT"}, breakout), action_for({"FIRE"}, breakout)
        (2, 1)
        >>> action_for({"UP", "RIGHT", "FIRE"}, action_meanings("Alien"))
        14
    """
    held = set(held)
    unknown = held - set(CONTROLS)
    if unknown:
        raise ValueError(f"unknown controls {sorted(unknown)}; known: {list(CONTROLS)}")
    vertical = "" if ("UP" in held) == ("DOWN" in held) else ("UP" if "UP" in held else "DOWN")
    horizontal = (
        "" if ("LEFT" in held) == ("RIGHT" in held) else ("LEFT" if "LEFT" in held else "RIGHT")
    )
    fire = "FIRE" if "FIRE" in held else ""
    parts = [(part, weight) for part, weight in ((vertical, 2), (horizontal, 4), (fire, 1)) if part]
    subsets = [
        [p for i, p in enumerate(parts) if mask >> i & 1] for mask in range(1, 2 ** len(parts))
    ]
    subsets.sort(key=lambda kept: (-len(kept), -sum(weight for _, weight in kept)))
    for kept in subsets:
        name = "".join(part for part, _ in kept)  # ALE order: vertical, horizontal, fire
        if name in meanings:
            return meanings.index(name)
    return meanings.index("NOOP") if "NOOP" in meanings else 0
