"""Typed, frozen configuration of the REM models (tokenizer, RetNet world model)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["REMConfig", "TokenizerConfig", "WorldModelConfig"]

PresetName = Literal["paper", "tiny"]
TOKENIZER_KINDS = ("vqvae", "patch")
"""What :attr:`TokenizerConfig.kind` may be."""


def _require(condition: bool, field_name: str, message: str) -> None:
    """Raises a ValueError naming the offending field when ``condition`` is false."""
    if not condition:
        raise ValueError(f"invalid config field '{field_name}': {message}")


@dataclass(frozen=True)
class TokenizerConfig:
    """Sizes of the tokenizer: REM's VQ-VAE (REM_SPEC section 3) or, not in REM, a patch codebook.

    Attributes:
        image_size: Height and width of the square RGB frames (64 in the paper).
        in_channels: Colour channels of the frames (3).
        base_channels: Channels after the first conv; doubled by each downsample (32).
        num_downsamples: Stride-2 downsampling steps; tokens per frame = (image_size / 2**n) ** 2.
        vocab_size: Number of codebook entries (512).
        embed_dim: Dimension of each codebook vector (256).
        norm_groups: Groups of every GroupNorm (8).
        kind: ``"vqvae"``: REM's VQ-VAE (:class:`~rem_env.models.tokenizer.Tokenizer`).
            ``"patch"`` (not in REM): each patch of ``2**num_downsamples`` pixels square is the id
            of the nearest of ``vocab_size`` fixed patches, fitted by k-means on real frames
            (:class:`~rem_env.models.patch_tokenizer.PatchTokenizer`); its ``embed_dim`` is the
            patch's pixel count times ``in_channels`` (192 for 8x8 RGB patches), and
            ``base_channels`` and ``norm_groups`` are unused.
        row_offset: Not in REM (0). A patch tokenizer's grid starts this many rows above the
            frame: the frame is read moved down by ``row_offset`` rows (black above it), and
            its bottom ``row_offset`` rows are not read and decode as black, so they must be
            black in the game (Breakout's rows 60-63 of 64 are, in the frames measured). It
            lets a row of patches end where a game's objects do (Breakout's bricks end at row
            28: offset 3). Only for ``kind="patch"``, below ``patch_size``.
    """

    image_size: int = 64
    in_channels: int = 3
    base_channels: int = 32
    num_downsamples: int = 3
    vocab_size: int = 512
    embed_dim: int = 256
    norm_groups: int = 8
    kind: Literal["vqvae", "patch"] = "vqvae"
    row_offset: int = 0

    def __post_init__(self) -> None:
        _require(
            self.kind in TOKENIZER_KINDS,
            "kind",
            f"must be one of {TOKENIZER_KINDS}, got {self.kind!r}",
        )
        _require(
            self.row_offset == 0 or self.kind == "patch",
            "row_offset",
            f"only a patch tokenizer's grid can be moved (kind='patch'), got {self.row_offset}",
        )
        for name in ("image_size", "in_channels", "base_channels", "vocab_size", "embed_dim"):
            _require(getattr(self, name) > 0, name, f"must be positive, got {getattr(self, name)}")
        _require(self.num_downsamples >= 1, "num_downsamples", "must be at least 1")
        _require(
            self.image_size % (2**self.num_downsamples) == 0,
            "image_size",
            f"{self.image_size} is not divisible by 2**num_downsamples = {2**self.num_downsamples}",
        )
        if self.kind == "patch":
            _require(
                0 <= self.row_offset < self.patch_size,
                "row_offset",
                f"must lie in [0, patch_size = {self.patch_size}), got {self.row_offset}",
            )
            pixels = self.in_channels * self.patch_size**2
            _require(
                self.embed_dim == pixels,
                "embed_dim",
                f"a patch tokenizer's codes are its patches' pixels: embed_dim must be "
                f"in_channels * patch_size**2 = {pixels}, got {self.embed_dim}",
            )
            return
        _require(self.norm_groups > 0, "norm_groups", "must be positive")
        _require(
            self.base_channels % self.norm_groups == 0,
            "base_channels",
            f"{self.base_channels} is not divisible by norm_groups={self.norm_groups}",
        )
        _require(
            self.embed_dim % self.norm_groups == 0,
            "embed_dim",
            f"{self.embed_dim} is not divisible by norm_groups={self.norm_groups}",
        )

    @property
    def patch_size(self) -> int:
        """Side in pixels of the square patch one token stands for (8 in the paper)."""
        return 2**self.num_downsamples

    @property
    def latent_size(self) -> int:
        """Side of the token grid (8 for 64x64 frames and 3 downsamples)."""
        return self.image_size // (2**self.num_downsamples)

    @property
    def tokens_per_frame(self) -> int:
        """Tokens per frame (64 in the paper), in raster (h-major) order."""
        return self.latent_size**2


@dataclass(frozen=True)
class WorldModelConfig:
    """Sizes and options of the RetNet world model (REM_SPEC sections 4 and 5).

    Attributes:
        embed_dim: Width of the RetNet (256). Must equal the tokenizer's ``embed_dim`` when
            ``shared_embeddings`` is on.
        num_layers: RetNet decoder layers (5).
        num_heads: Retention heads (4); ``embed_dim / num_heads`` must be a multiple of 8.
        ffn_dim: Hidden width of the swish feed-forward block (1024).
        dropout: Dropout probability in retention output and feed-forward blocks (0.1).
        max_blocks: Frames (blocks) per training segment (10).
        blocks_per_chunk: Blocks per chunk of the chunkwise POP training forward (3).
        context_length: Real frames given before the first predicted frame (2).
        shared_embeddings: Embed observation tokens with the tokenizer's codebook vectors (True),
            or with the world model's own embedding table (False, the paper's ablation).
        pop: Parallel Observation Prediction (True, REM). False is the paper's "no POP"
            ablation: IRIS-style next-token prediction, imagined one token at a time.
        shared_prediction_token: One prediction embedding for all slots instead of one per slot.
        identical_layer_init: Start all layers with identical weights, as the reference code does
            (it deep-copies one layer).
        rope_base: Base of the rotation frequencies (10000).
        min_decay_window: Effective window 1/(1-gamma) of the fastest-decaying head (32).
        max_decay_window: Effective window of the slowest-decaying head (512).
        frame_conv_layers: Not in REM (0: off, as in every preset). Convolutional layers of a
            *frame conv*: a small net over the 2-D grids of the two (``frame_conv_frames``)
            latest frames' token embeddings and the action after the latest, whose logits are
            added to the observation head's (see :class:`~rem_env.models.frame_conv.FrameConv`).
            It needs POP and a square grid of tokens.
        frame_conv_width: Channels of the frame conv's layers (128).
        frame_conv_events: Not in REM (False). The frame conv also gives logits of each step's
            reward and episode end, from frames t-1 and t and the action after t, added to the
            reward and end heads'. It needs ``frame_conv_layers > 0``.
        frame_conv_copy: Not in REM (False). The frame conv also gives each patch a bonus, from
            its features, added to the logit of the token the patch has in the frame before: a
            patch that stays can keep its token as surely as the bonus says, which the output
            layer's few channels cannot give each of hundreds of codes. It needs
            ``frame_conv_layers > 0``.
        frame_conv_frames: Not in REM (2). Frames the frame conv reads before the predicted
            one: 2 reads frames t-2 and t-1; more also read the frames before them, each mapped
            down to a few channels per patch (where a small object went over the last steps:
            Breakout's ball gone down past the paddle, not up into the wall). Imagination
            states then keep the F - 1 frames before the current one.
        frame_conv_pixels: Not in REM (0: off). With a patch tokenizer, the frame conv also
            reads the frames' pixels (each token's codebook patch of this many pixels square,
            the tokenizer's ``patch_size``) through a convolution over the pixels of all its
            frames, beside the world model's token embeddings. It needs
            ``frame_conv_layers > 0``.
        frame_conv_completion: Not in REM (0: off). Dilated convolutions of a *completion*
            that gives the frame conv's logits of a patch's token given the tokens of the same
            frame already drawn: imagination then draws each frame in rounds (the patches it is
            sure of, then the least sure one at a time, :data:`~rem_env.models.world_model.
            COMPLETION_ROUNDS` of them, then the rest), so that a new object comes in one place.
            It needs ``frame_conv_layers > 0``.
        event_reader_width: Not in REM (0: off, as in every preset). Channels of the first layer
            of an *event reader*: a small net over the decoded pixels of frames t-1 and t and the
            action after t, whose logits are added to the reward and end heads' (see
            :class:`~rem_env.models.event_reader.EventReader`). A dream then decodes its frames
            at every step, whatever its observation type.
        event_window_frames: Not in REM (0: off, as in every preset). Frames W of an *event
            window*: a small net over the token grids of each step's frame and the W - 1 frames
            before it, and the action after the step's frame, whose logits are added to the
            reward and end heads' (see :class:`~rem_env.models.event_window.EventWindow`): it
            reads events decided several steps back, such as Breakout's life lost about ten
            steps after the ball was last seen. It needs a square grid of tokens.
        event_window_width: Channels of the event window's convolutions (64).
        event_window_reads_next: Not in REM (False). The event window ends at the frame each
            step leads to (the W - 2 frames before the step's, the step's and the next): a
            reward is read from what the step did, e.g. a brick gone, so that a dream's rewards
            come with the dreamed frames that show them. It needs an event window of W >= 2.
        event_window_change_width: Not in REM (0: off). Channels of the event window's path
            over the change between its last two frames, read cell by cell (a brick gone is one
            cell of the grid, which the pooled features of each frame barely show). It needs an
            event window of W >= 2.
    """

    embed_dim: int = 256
    num_layers: int = 5
    num_heads: int = 4
    ffn_dim: int = 1024
    dropout: float = 0.1
    max_blocks: int = 10
    blocks_per_chunk: int = 3
    context_length: int = 2
    shared_embeddings: bool = True
    pop: bool = True
    shared_prediction_token: bool = False
    identical_layer_init: bool = True
    rope_base: float = 10000.0
    min_decay_window: float = 32.0
    max_decay_window: float = 512.0
    frame_conv_layers: int = 0
    frame_conv_width: int = 128
    frame_conv_events: bool = False
    frame_conv_copy: bool = False
    frame_conv_frames: int = 2
    frame_conv_pixels: int = 0
    frame_conv_completion: int = 0
    event_reader_width: int = 0
    event_window_frames: int = 0
    event_window_width: int = 64
    event_window_reads_next: bool = False
    event_window_change_width: int = 0

    def __post_init__(self) -> None:
        for name in ("embed_dim", "num_layers", "num_heads", "ffn_dim", "max_blocks"):
            _require(getattr(self, name) > 0, name, f"must be positive, got {getattr(self, name)}")
        _require(
            self.embed_dim % self.num_heads == 0,
            "num_heads",
            f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}",
        )
        _require(
            (self.embed_dim // self.num_heads) % 8 == 0,
            "num_heads",
            f"head_dim = {self.embed_dim // self.num_heads} must be a multiple of 8",
        )
        _require(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")
        _require(self.blocks_per_chunk >= 1, "blocks_per_chunk", "must be at least 1")
        _require(
            1 <= self.context_length < self.max_blocks,
            "context_length",
            f"must be in [1, max_blocks={self.max_blocks}), got {self.context_length}",
        )
        _require(self.rope_base > 1.0, "rope_base", "must be greater than 1")
        _require(
            1.0 < self.min_decay_window <= self.max_decay_window,
            "min_decay_window",
            "must satisfy 1 < min_decay_window <= max_decay_window",
        )
        _require(self.frame_conv_layers >= 0, "frame_conv_layers", "must be 0 (off) or more")
        _require(self.frame_conv_width > 0, "frame_conv_width", "must be positive")
        _require(
            self.pop or not self.frame_conv_layers,
            "frame_conv_layers",
            "the frame conv predicts whole frames: it needs pop=True",
        )
        _require(
            self.frame_conv_layers > 0 or not self.frame_conv_events,
            "frame_conv_events",
            "the events are read from the frame conv's features: set frame_conv_layers > 0",
        )
        _require(
            self.frame_conv_layers > 0 or not self.frame_conv_copy,
            "frame_conv_copy",
            "the copy bonus is read from the frame conv's features: set frame_conv_layers > 0",
        )
        _require(
            self.frame_conv_frames >= 2,
            "frame_conv_frames",
            f"the frame conv reads at least 2 frames, got {self.frame_conv_frames}",
        )
        _require(
            self.frame_conv_layers > 0 or self.frame_conv_frames == 2,
            "frame_conv_frames",
            "the frames are read by the frame conv: set frame_conv_layers > 0",
        )
        _require(self.frame_conv_pixels >= 0, "frame_conv_pixels", "must be 0 (off) or more")
        _require(
            self.frame_conv_layers > 0 or not self.frame_conv_pixels,
            "frame_conv_pixels",
            "the pixels are read by the frame conv: set frame_conv_layers > 0",
        )
        _require(
            self.frame_conv_completion >= 0, "frame_conv_completion", "must be 0 (off) or more"
        )
        _require(
            self.frame_conv_layers > 0 or not self.frame_conv_completion,
            "frame_conv_completion",
            "the completion reads the frame conv's features: set frame_conv_layers > 0",
        )
        _require(self.event_reader_width >= 0, "event_reader_width", "must be 0 (off) or more")
        _require(self.event_window_frames >= 0, "event_window_frames", "must be 0 (off) or more")
        _require(self.event_window_width > 0, "event_window_width", "must be positive")
        _require(
            self.event_window_frames >= 2 or not self.event_window_reads_next,
            "event_window_reads_next",
            "the window reads the step's frame and the next one: set event_window_frames >= 2",
        )
        _require(
            self.event_window_change_width == 0 or self.event_window_frames >= 2,
            "event_window_change_width",
            "the change is read between the event window's last two frames: set "
            "event_window_frames >= 2",
        )
        _require(
            self.event_window_change_width >= 0, "event_window_change_width", "must be 0 or more"
        )

    @property
    def head_dim(self) -> int:
        """Dimension of each retention head (64 in the paper)."""
        return self.embed_dim // self.num_heads


_PRESETS: dict[str, tuple[TokenizerConfig, WorldModelConfig]] = {
    "paper": (TokenizerConfig(), WorldModelConfig()),
    "tiny": (
        TokenizerConfig(
            image_size=16, base_channels=8, num_downsamples=2, vocab_size=16, embed_dim=32
        ),
        WorldModelConfig(embed_dim=32, num_layers=2, num_heads=2, ffn_dim=64, max_blocks=6),
    ),
}


@dataclass(frozen=True)
class REMConfig:
    """Everything needed to build an :class:`rem_env.REMModel`.

    Attributes:
        num_actions: Size of the game's minimal action set.
        tokenizer: Tokenizer sizes.
        world_model: World-model sizes and options.
        game: Atari game the model simulates (e.g. ``"Breakout"``), or None for a generic model.
        format_version: Version of this config's JSON layout.

    Example:
        >>> from rem_env import REMConfig
        >>> cfg = REMConfig.preset("paper", num_actions=4, game="Breakout")
        >>> cfg.tokenizer.tokens_per_frame, cfg.world_model.num_layers
        (64, 5)
    """

    num_actions: int
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    world_model: WorldModelConfig = field(default_factory=WorldModelConfig)
    game: str | None = None
    format_version: int = 1

    def __post_init__(self) -> None:
        _require(
            isinstance(self.num_actions, int) and self.num_actions > 0,
            "num_actions",
            f"must be a positive int, got {self.num_actions!r}",
        )
        if not isinstance(self.tokenizer, TokenizerConfig):
            raise TypeError(f"tokenizer must be a TokenizerConfig, got {type(self.tokenizer)}")
        if not isinstance(self.world_model, WorldModelConfig):
            raise TypeError(f"world_model must be a WorldModelConfig, got {type(self.world_model)}")
        if self.world_model.shared_embeddings:
            _require(
                self.world_model.embed_dim == self.tokenizer.embed_dim,
                "world_model.embed_dim",
                f"shared_embeddings needs world_model.embed_dim ({self.world_model.embed_dim}) "
                f"== tokenizer.embed_dim ({self.tokenizer.embed_dim})",
            )
        pixels = self.world_model.frame_conv_pixels
        if pixels:
            _require(
                self.tokenizer.kind == "patch" and self.tokenizer.patch_size == pixels,
                "world_model.frame_conv_pixels",
                f"a frame conv that reads patches of {pixels} pixels needs a patch tokenizer of "
                f"patch_size {pixels} (got kind {self.tokenizer.kind!r}, patch_size "
                f"{self.tokenizer.patch_size})",
            )

    @classmethod
    def preset(cls, name: PresetName, num_actions: int, game: str | None = None) -> REMConfig:
        """Builds a named preset.

        Args:
            name: ``"paper"`` (the published sizes) or ``"tiny"`` (16x16 frames, vocab 16,
                2 layers; for tests and CPU smoke runs).
            num_actions: Size of the game's action set.
            game: Optional game name recorded in the config.

        Raises:
            ValueError: If the preset name is unknown.
        """
        if name not in _PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(_PRESETS)}")
        tokenizer, world_model = _PRESETS[name]
        return cls(num_actions=num_actions, tokenizer=tokenizer, world_model=world_model, game=game)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of this config."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> REMConfig:
        """Rebuilds a config from :meth:`to_dict` output, rejecting unknown keys.

        Raises:
            ValueError: On unknown or missing keys, or a newer ``format_version``.
        """
        data = dict(data)
        version = data.get("format_version", 1)
        if not isinstance(version, int) or version > 1:
            raise ValueError(
                f"config format_version {version!r} is newer than this rem-env understands (1); "
                "upgrade rem-env"
            )
        sub = {"tokenizer": TokenizerConfig, "world_model": WorldModelConfig}
        for key, sub_cls in sub.items():
            if key in data:
                data[key] = _build(sub_cls, data[key], key)
        return _build(cls, data, "config")


def _build(cls: type, data: Any, where: str) -> Any:
    """Instantiates dataclass ``cls`` from ``data``, raising ValueError on unknown keys."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known keys are {sorted(names)}")
    try:
        return cls(**data)
    except TypeError as err:
        raise ValueError(f"{where}: {err}") from err
