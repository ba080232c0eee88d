"""The protocol manifest saved beside a model: which real game, under which rules, trained how.

A world model is only as faithful as the protocol its data was collected under. The manifest
records that protocol (ALE env id, frameskip, sticky actions, no-op starts, life loss, frame
size, action set), the library versions, the training budget and the known figures, so a
loader can warn about, or refuse, a model that does not fit what the caller expects. It also
records the size and SHA-256 of the files saved beside it, so a loader sees a corrupted file, or
files of two different saves, instead of dreaming with them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import re
from dataclasses import dataclass, field
from typing import Any

from rem_env.config import _build

__all__ = [
    "KNOWN_BAD_ALE_VERSIONS",
    "MANIFEST_FORMAT_VERSION",
    "PADDLE_GAMES",
    "AtariProtocol",
    "Evaluation",
    "FileDigest",
    "ProtocolManifest",
    "SoftwareVersions",
    "TrainingBudget",
    "protocol_problems",
]

MANIFEST_FORMAT_VERSION = 2
"""Version of the manifest's JSON layout this rem-env writes (it reads 1 and 2).

Version 2 added ``files``; version-1 manifests (no file digests) still load."""

KNOWN_BAD_ALE_VERSIONS: frozenset[str] = frozenset({"0.10.0", "0.10.1"})
"""ale-py releases whose paddle handling changed the dynamics of paddle games (fixed in 0.10.2)."""

PADDLE_GAMES: frozenset[str] = frozenset({"Breakout", "Pong"})
"""Atari 100K games driven by the paddle controller, affected by :data:`KNOWN_BAD_ALE_VERSIONS`."""


@dataclass(frozen=True)
class AtariProtocol:
    """How the real game was run when the model's training data was collected.

    Attributes:
        env_id: The ALE v4 id, e.g. ``"BreakoutNoFrameskip-v4"``.
        gymnasium_env_id: The equivalent ale-py v5 id, e.g. ``"ALE/Breakout-v5"`` (run it with
            ``frameskip=1, repeat_action_probability=0.0`` and the wrappers below).
        frameskip: Emulator frames per agent step (4).
        repeat_action_probability: Sticky-action probability (0.0 in Atari 100K).
        noop_max: Maximum number of no-op actions at reset (30).
        terminal_on_life_loss: Whether losing a life ended an episode in the training data.
        frame_size: Side of the square RGB frames the model sees (64).
        num_actions: Size of the action set.
        full_action_space: Whether the 18-action set was used instead of the minimal one.
        action_meanings: ALE names of the actions (``("NOOP", "FIRE", ...)``), or None if unknown.
    """

    env_id: str
    gymnasium_env_id: str
    num_actions: int
    frameskip: int = 4
    repeat_action_probability: float = 0.0
    noop_max: int = 30
    terminal_on_life_loss: bool = True
    frame_size: int = 64
    full_action_space: bool = False
    action_meanings: tuple[str, ...] | None = None

    @classmethod
    def atari100k(
        cls, game: str, num_actions: int, action_meanings: tuple[str, ...] | None = None
    ) -> AtariProtocol:
        """The Atari 100K protocol of REM/IRIS for ``game`` (``"Breakout"``)."""
        return cls(
            env_id=f"{game}NoFrameskip-v4",
            gymnasium_env_id=f"ALE/{game}-v5",
            num_actions=num_actions,
            action_meanings=action_meanings,
        )


@dataclass(frozen=True)
class SoftwareVersions:
    """Library versions the model was trained with (None when unknown)."""

    ale_py: str | None = None
    gymnasium: str | None = None
    torch: str | None = None
    rem_env: str | None = None

    @classmethod
    def current(cls) -> SoftwareVersions:
        """The versions installed in this Python environment."""
        return cls(*(_version(name) for name in ("ale-py", "gymnasium", "torch", "rem-env")))


@dataclass(frozen=True)
class TrainingBudget:
    """How much the model was trained (None when unknown).

    Attributes:
        env_steps: Agent steps taken in the real environment (100_000 for Atari 100K).
        epochs: Training epochs of the REM cycle.
    """

    env_steps: int | None = None
    epochs: int | None = None


@dataclass(frozen=True)
class Evaluation:
    """Figures measured for the model (None when not measured).

    Attributes:
        mean_return: Mean undiscounted return of the agent trained with it, in the real game.
        human_normalized_score: The same, human-normalised.
        episodes: Number of evaluation episodes behind the two figures above.
        fidelity_psnr: PSNR (dB) of imagined vs real frames over a fixed horizon.
        fidelity_horizon: Horizon (steps) of the fidelity measurement.
    """

    mean_return: float | None = None
    human_normalized_score: float | None = None
    episodes: int | None = None
    fidelity_psnr: float | None = None
    fidelity_horizon: int | None = None


_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class FileDigest:
    """Size and SHA-256 of one file of a saved model, as its manifest records them.

    Attributes:
        size: Length in bytes.
        sha256: Lowercase hex SHA-256 of the content.

    Example:
        >>> FileDigest.of(b"abc").sha256[:12], FileDigest.of(b"abc").size
        ('ba7816bf8f01', 3)
    """

    size: int
    sha256: str

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 0:
            raise ValueError(f"file size must be an int >= 0, got {self.size!r}")
        if not isinstance(self.sha256, str) or not _SHA256.match(self.sha256):
            raise ValueError(f"sha256 must be 64 lowercase hex digits, got {self.sha256!r}")

    @classmethod
    def of(cls, data: bytes) -> FileDigest:
        """The digest of ``data``."""
        return cls(len(data), hashlib.sha256(data).hexdigest())


@dataclass(frozen=True)
class ProtocolManifest:
    """Everything about a saved model that is not its weights: game, protocol, versions, budget.

    Attributes:
        game: Atari game name (``"Breakout"``), or None for a model of no particular game.
        protocol: How the real game was run, or None when unknown.
        versions: Library versions at training time.
        training: Training budget.
        evaluation: Known figures.
        files: File name -> size and SHA-256 of the files saved with this manifest (written by
            :func:`rem_env.hub.save_pretrained`, checked by the loader), or None (manifests
            written before rem-env recorded them, or built in memory). Not compared by ``==``:
            two manifests of the same protocol are equal whatever files they came with.
        format_version: Version of the manifest's JSON layout.

    Example:
        >>> from rem_env.manifest import AtariProtocol, ProtocolManifest
        >>> manifest = ProtocolManifest(
        ...     game="Breakout", protocol=AtariProtocol.atari100k("Breakout", num_actions=4)
        ... )
        >>> ProtocolManifest.from_dict(manifest.to_dict()) == manifest
        True
        >>> manifest.protocol.env_id
        'BreakoutNoFrameskip-v4'
    """

    game: str | None = None
    protocol: AtariProtocol | None = None
    versions: SoftwareVersions = field(default_factory=SoftwareVersions.current)
    training: TrainingBudget = field(default_factory=TrainingBudget)
    evaluation: Evaluation = field(default_factory=Evaluation)
    files: dict[str, FileDigest] | None = field(default=None, compare=False)
    format_version: int = MANIFEST_FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of this manifest (without ``files`` when it is None)."""
        data = dataclasses.asdict(self)
        if self.files is None:
            del data["files"]
        if self.protocol is not None and self.protocol.action_meanings is not None:
            data["protocol"]["action_meanings"] = list(self.protocol.action_meanings)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProtocolManifest:
        """Rebuilds a manifest from :meth:`to_dict` output.

        Raises:
            ValueError: On unknown or missing keys, or a newer ``format_version``.
        """
        if not isinstance(data, dict):
            raise ValueError(f"manifest: expected a JSON object, got {type(data).__name__}")
        data = dict(data)
        version = data.get("format_version", MANIFEST_FORMAT_VERSION)
        if not isinstance(version, int) or version > MANIFEST_FORMAT_VERSION:
            raise ValueError(
                f"manifest format_version {version!r} is newer than this rem-env understands "
                f"({MANIFEST_FORMAT_VERSION}); upgrade rem-env"
            )
        if data.get("protocol") is not None:
            protocol = dict(_as_object(data["protocol"], "protocol"))
            if protocol.get("action_meanings") is not None:
                protocol["action_meanings"] = tuple(protocol["action_meanings"])
            data["protocol"] = _build(AtariProtocol, protocol, "manifest.protocol")
        parts = {"versions": SoftwareVersions, "training": TrainingBudget, "evaluation": Evaluation}
        for key, part in parts.items():
            if key in data:
                data[key] = _build(part, data[key], f"manifest.{key}")
        if data.get("files") is not None:
            data["files"] = {
                str(name): _build(FileDigest, digest, f"manifest.files[{name!r}]")
                for name, digest in _as_object(data["files"], "files").items()
            }
        return _build(cls, data, "manifest")


def protocol_problems(manifest: ProtocolManifest, expected: AtariProtocol | None) -> list[str]:
    """Reasons why a model with ``manifest`` may not simulate the game the caller expects.

    Lists a known-bad ale-py version for paddle games, and every protocol field that differs
    from ``expected`` (fields that are None on either side are not compared).

    Example:
        >>> from rem_env.manifest import AtariProtocol, ProtocolManifest, SoftwareVersions
        >>> proto = AtariProtocol.atari100k("Pong", num_actions=6)
        >>> bad = ProtocolManifest("Pong", proto, SoftwareVersions(ale_py="0.10.1"))
        >>> sticky = dataclasses.replace(proto, repeat_action_probability=0.25)
        >>> for problem in protocol_problems(bad, sticky):
        ...     print(problem.split(";")[0])
        trained with ale-py 0.10.1, whose paddle handling changed the dynamics of Pong
        repeat_action_probability is 0.0 in the model's protocol but 0.25 is expected
    """
    problems = []
    ale = manifest.versions.ale_py
    if ale in KNOWN_BAD_ALE_VERSIONS and manifest.game in PADDLE_GAMES:
        problems.append(
            f"trained with ale-py {ale}, whose paddle handling changed the dynamics of "
            f"{manifest.game}; the model dreams a game that differs from ale-py >= 0.10.2 and "
            "< 0.10 (retrain with a fixed ale-py)"
        )
    if expected is not None:
        if manifest.protocol is None:
            problems.append("the model's manifest records no protocol, but one is expected")
            return problems
        for f in dataclasses.fields(AtariProtocol):
            have, want = getattr(manifest.protocol, f.name), getattr(expected, f.name)
            if have is not None and want is not None and have != want:
                problems.append(
                    f"{f.name} is {have!r} in the model's protocol but {want!r} is expected"
                )
    return problems


def _as_object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"manifest.{where}: expected a JSON object, got {type(value).__name__}")
    return value


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
