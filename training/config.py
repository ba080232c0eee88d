"""Typed configuration of a REM training run (REM_SPEC 7, 8): presets ``atari100k`` and ``smoke``.

Every field is documented with ``doc(default, "...")``; the text is what ``rem-train --help``
shows. Configs are frozen dataclasses; :meth:`TrainConfig.to_dict` / :meth:`TrainConfig.from_dict`
round-trip them through the run folder's ``config.json``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from rem_env.config import REMConfig, TokenizerConfig, WorldModelConfig
from rem_env.registration import ATARI_100K_GAMES
from rem_train.losses import MOVING_FROM
from rem_train.warm_start import parse_parts

__all__ = [
    "PRESETS",
    "ActorCriticPhase",
    "CollectConfig",
    "CommonConfig",
    "EvalConfig",
    "TokenizerPhase",
    "TrainConfig",
    "WorldModelPhase",
    "doc",
]

PRESET_NAMES = ("atari100k", "breakout", "cpu", "smoke")
"""Presets of :data:`PRESETS`."""
MODEL_SIZES = ("paper", "cpu", "cpu512", "patch", "smoke")
"""Model sizes a run can use: the published REM sizes, a narrow 64x64 model that learns on a
2-core CPU in about an hour and a half (``cpu``; ``cpu512`` has REM's 512 codes instead of 256;
``patch``, not in REM, the ``cpu`` world model on 512 fixed 8x8 patches instead of a VQ-VAE),
or a tiny one to check the cycle (``smoke``)."""


def doc(default: Any, text: str) -> Any:
    """A dataclass field with a default and a help text (shown by the CLI)."""
    return field(default=default, metadata={"doc": text})


@dataclass(frozen=True)
class CommonConfig:
    """Schedule of the run as a whole."""

    epochs: int = doc(600, "training epochs")
    collect_epochs: int = doc(500, "real env steps are collected in epochs 1..collect_epochs only")
    env_steps_per_epoch: int = doc(200, "real env steps collected per epoch (1 env)")
    seed: int = doc(1, "seed of python, numpy, torch and the envs")
    checkpoint_every: int = doc(
        50, "keep a numbered checkpoint every N epochs (resume state: every epoch)"
    )
    eval_every: int = doc(10, "evaluate every N epochs ...")
    eval_start_epoch: int = doc(5, "... from this epoch on (and always after the last epoch)")
    max_raw_frames: int | None = doc(None, "raw-frame limit of the train env (None: REM's 20000)")
    replay_fsync: bool = doc(
        True, "fsync every replay append (survives power loss, not only kills)"
    )
    track_progress: bool = doc(
        False,
        "record each step's loss on its own batch before and after the update (extra forwards)",
    )
    progress_bars: bool = doc(True, "show tqdm progress bars for the phases (on a terminal)")
    init_from: str | None = doc(
        None,
        "start from the weights of this model folder, Hub repo id, run folder or checkpoint "
        "file (sizes must match the preset's; optimizers and schedule start fresh)",
    )
    init_parts: str = doc(
        "all",
        "parts taken from --init-from: comma-separated tokenizer, world_model, actor_critic, "
        "or all",
    )


@dataclass(frozen=True)
class CollectConfig:
    """Phase 1: acting in the real env with the actor-critic (also before it trains)."""

    temperature: float = doc(1.0, "policy temperature while collecting")
    epsilon: float = doc(0.01, "probability of a uniform random action while collecting")
    scripted_share: float = doc(
        0.0,
        "share of episodes played by the game's scripted player (reads the RAM; Breakout) "
        "instead of the actor-critic; 0 is REM",
    )
    scripted_serve_wait: int = doc(
        0,
        "the scripted player waits a uniform 0 to N steps before each serve, moving at random "
        "without FIRE, so the replay shows that only FIRE serves (Breakout; 0: serves at once)",
    )
    parked_share: float = doc(
        0.0,
        "share of episodes played by the game's screen-blind policy with its paddle parked at a "
        "wall drawn per episode (Breakout: LEFT or RIGHT, FIRE with probability 0.1), so the "
        "replay shows lives lost at either wall; 0: none (REM)",
    )


@dataclass(frozen=True)
class TokenizerPhase:
    """Phase 2: the VQ-VAE tokenizer on single frames."""

    start_after_epoch: int = doc(5, "train in epochs > this")
    steps_per_epoch: int = doc(200, "gradient steps per epoch")
    batch_size: int = doc(128, "frames per batch")
    lr: float = doc(1e-4, "AdamW learning rate")
    weight_decay: float = doc(0.01, "AdamW weight decay (all parameters)")
    grad_clip: float = doc(10.0, "gradient-norm clip")
    beta: float = doc(1.0, "commitment weight")
    lpips: bool = doc(
        True, "add LPIPS if its weights were fetched (python -m rem_train.lpips fetch)"
    )
    foreground_weight: float = doc(
        0.0,
        "extra weight of the reconstruction error on pixels that differ from the background "
        "(per-pixel median of replay frames); 0 is REM's loss",
    )
    restart_dead_codes_every: int = doc(
        0,
        "every N steps, move the codes no frame used in those steps onto random encoder "
        "outputs of the batch (fights codebook collapse); 0 is REM (never)",
    )


@dataclass(frozen=True)
class WorldModelPhase:
    """Phase 3: the world model on right-padded segments of real blocks."""

    start_after_epoch: int = doc(25, "train in epochs > this")
    steps_per_epoch: int = doc(200, "gradient steps per epoch")
    batch_size: int = doc(64, "segments per batch")
    segment_length: int = doc(10, "blocks per segment (right-padded, >= 3 real)")
    lr: float = doc(2e-4, "AdamW learning rate")
    weight_decay: float = doc(
        0.05, "AdamW weight decay on weight matrices only (not biases, norms, embeddings)"
    )
    grad_clip: float = doc(100.0, "gradient-norm clip")
    moving_weight: float = doc(
        0.0,
        "extra weight of the observation loss on patches that moved since the previous frame "
        "(with their neighbours); 0 is REM's loss",
    )
    moving_from: str = doc(
        "target",
        "where moving_weight reads the movement: 'target', the predicted frame against the one "
        "before it (the weights depend on the answer, which raises the odds of a change the "
        "frames before cannot tell up to 1 + moving_weight times), or 'context', the frame "
        "before against the one before that (the best prediction stays unbiased)",
    )
    end_weight: float = doc(
        1.0,
        "weight of the blocks that end an episode (a lost life) in the end cross-entropy, "
        "then a weighted mean; 1 is REM's loss",
    )
    retnet_only: bool = doc(
        False,
        "train only REM's part of the world model (its RetNet, prediction tokens and heads): the "
        "frame conv, event reader and event window and the token embedding they read keep their "
        "weights, and the RetNet learns what they miss, its heads' logits added to theirs (not in "
        "REM)",
    )
    dreamed_heads_weight: float = doc(
        0.0,
        "weight of a second reward and end cross-entropy on the same segments with their frames "
        "replaced by the world model's own one-step samples (its heads learn to read dreamed "
        "frames; one more forward and a forward of twice the batch per step); 0 is REM's loss",
    )
    dreamed_heads_match: float = doc(
        0.0,
        "count a dreamed frame in the dreamed heads' terms only where at least this share of "
        "the patches that moved since the frame before have the real frame's tokens (1: all): "
        "elsewhere the real reward and end may not be the dreamed frame's own; needs "
        "dreamed_heads_weight > 0; 0 counts every dreamed frame (not in REM)",
    )
    dreamed_steps: int = doc(
        1,
        "passes that dream the frames of the dreamed terms: each samples them again from the "
        "frames of the pass before, so the first N predicted frames of a segment are a dream of "
        "N steps from its real context (one forward each); 1 dreams each frame one step after "
        "real frames",
    )
    dreamed_obs_weight: float = doc(
        0.0,
        "weight of a second observation cross-entropy on those segments: the real frames "
        "predicted from the world model's own one-step samples (it learns to go on from frames "
        "it dreamed; as costly as the dreamed heads, free beside them); 0 is REM's loss",
    )


@dataclass(frozen=True)
class ActorCriticPhase:
    """Phase 4: the actor-critic in imagination, from burn-in on real segments."""

    start_after_epoch: int = doc(50, "train in epochs > this")
    steps_per_epoch: int = doc(100, "gradient steps per epoch")
    batch_size: int = doc(128, "imagined trajectories per batch (dream envs)")
    burn_in: int = doc(
        20, "real frames fed to the LSTM before imagination (segments of burn_in+1, left-padded)"
    )
    horizon: int = doc(10, "imagination horizon; horizon-1 imagined steps enter the loss")
    burn_in_actions: bool = doc(
        True, "feed actions during burn-in (intended; False = published REM, REM_SPEC 11.1)"
    )
    hidden_size: int = doc(512, "width of the actor-critic's linear layer and LSTM")
    lr: float = doc(1e-4, "AdamW learning rate")
    weight_decay: float = doc(0.01, "AdamW weight decay (torch's default)")
    grad_clip: float = doc(3.0, "gradient-norm clip")
    gamma: float = doc(0.995, "discount")
    lambda_: float = doc(0.95, "lambda of the lambda-returns")
    entropy_weight: float = doc(0.001, "weight of the entropy bonus")
    dream_temperature: float = doc(
        1.0, "sampling temperature of the world model in imagination (0: argmax)"
    )
    dream_event_temperature: float | None = doc(
        None, "sampling temperature of the imagined rewards and ends (None: dream_temperature)"
    )
    real_history: bool = doc(
        True,
        "a world model's frame conv or event window that reads more frames than its context "
        "starts each dream with the burn-in segment's real frames before the context (not in "
        "REM, whose world model reads none; False: only the context's frames)",
    )


@dataclass(frozen=True)
class EvalConfig:
    """Atari 100K evaluation in the test env (REM_SPEC 8)."""

    temperature: float = doc(0.5, "policy temperature (epsilon is 0)")
    num_envs: int = doc(8, "test envs stepped together; they run in rounds of one episode each")
    episodes: int = doc(16, "episodes of a periodic evaluation")
    final_episodes: int = doc(100, "episodes of the final evaluation (rounded up to whole rounds)")
    max_raw_frames: int | None = doc(None, "raw-frame limit of the test env (None: REM's 108000)")
    object_segments: int = doc(
        64,
        "replay segments on which each evaluation checks the world model's next frame for the "
        "game's objects (Breakout's ball; rem_train.object_check); 0: no check",
    )
    event_segments: int = doc(
        64,
        "replay segments on which each evaluation checks the world model's reward and end heads "
        "against the real labels (rem_train.event_check); 0: no check",
    )


@dataclass(frozen=True)
class TrainConfig:
    """A whole training run: game, schedule, the four phases, evaluation and model sizes.

    Example:
        >>> cfg = TrainConfig.from_preset("atari100k", "Breakout")
        >>> cfg.world_model.lr, cfg.actor_critic.steps_per_epoch
        (0.0002, 100)
    """

    game: str = doc("Breakout", "Atari 100K game")
    preset: str = doc(
        "atari100k", "preset the run started from (atari100k, breakout, cpu or smoke)"
    )
    model: str = doc(
        "paper",
        "model sizes: paper, cpu (narrow, 2 layers), cpu512 (cpu, 512 codes), patch (not in "
        "REM: cpu on 512 fixed 8x8 patches, python -m rem_train.fit_patch_tokenizer), smoke",
    )
    patch_row_offset: int = doc(
        0,
        "not in REM: rows the patch tokenizer's grid starts above the frame (--model patch; "
        "the fitted tokenizer's own, python -m rem_train.fit_patch_tokenizer --row-offset)",
    )
    patch_vocab_size: int = doc(
        512,
        "not in REM: codes of the patch tokenizer (--model patch; the fitted tokenizer's own, "
        "python -m rem_train.fit_patch_tokenizer --vocab-size)",
    )
    world_model_layers: int | None = doc(
        None,
        "RetNet layers of the world model (None: the model sizes' own, 2 for cpu and cpu512, 5 "
        "for paper); with --init-from a world model of fewer layers, its layers come first and "
        "the added ones start as the identity",
    )
    world_model_frame_conv: int = doc(
        0,
        "not in REM: layers of a frame conv, a small conv net over the latest frames' token "
        "grids whose logits the world model adds to its observation head's (0: off); with "
        "--init-from a world model without one, it starts at zero",
    )
    world_model_frame_conv_width: int = doc(
        128,
        "not in REM: channels of the frame conv's layers (python -m "
        "rem_train.pretrain_frame_conv --width); with --init-from they must match the source's",
    )
    world_model_frame_conv_events: bool = doc(
        False,
        "not in REM: the frame conv also gives each step's reward and end logits (from the "
        "step's frame, the one before and the action), added to the heads'; needs "
        "--world-model-frame-conv; with --init-from a frame conv without them, they start at zero",
    )
    world_model_frame_conv_copy: bool = doc(
        False,
        "not in REM: the frame conv also adds, per patch, a bonus to the logit of the patch's "
        "token in the frame before (a copy gate); needs --world-model-frame-conv; with "
        "--init-from a frame conv without one, it starts at zero",
    )
    world_model_frame_conv_frames: int = doc(
        2,
        "not in REM: frames the frame conv reads before the predicted one (2: the two latest; "
        "more: also the older ones, each mapped down to a few channels per patch); needs "
        "--world-model-frame-conv; with --init-from a frame conv of fewer frames, the older "
        "frames' channels start at zero",
    )
    world_model_frame_conv_pixels: bool = doc(
        False,
        "not in REM: the frame conv also reads the frames' pixels (each token as its codebook "
        "patch, through a convolution over the pixels of all its frames), beside the token "
        "embeddings; needs --world-model-frame-conv and a patch tokenizer (--model patch)",
    )
    world_model_frame_conv_completion: int = doc(
        0,
        "not in REM: dilated convolutions of the frame conv's completion, which reads the tokens "
        "of a frame already drawn: dreams draw each frame in rounds, so that a new object comes "
        "in one place (0: off; python -m rem_train.pretrain_frame_conv --completion N trains "
        "one); needs --world-model-frame-conv",
    )
    world_model_event_reader: int = doc(
        0,
        "not in REM: channels of the first layer of an event reader, a small conv net over the "
        "decoded pixels of each step's frame and the one before whose reward and end logits "
        "are added to the heads' (0: off; python -m rem_train.train_event_reader trains one "
        "alone); with --init-from a world model without one, it starts at zero",
    )
    world_model_event_window: int = doc(
        0,
        "not in REM: frames of an event window, a small conv net over the token grids of each "
        "step's frame and the frames before it whose reward and end logits are added to the "
        "heads' (0: off; python -m rem_train.train_event_window trains one alone); with "
        "--init-from a world model without one, it starts at zero",
    )
    world_model_event_window_reads_next: bool = doc(
        False,
        "not in REM: the event window ends at the frame each step leads to (the frames before "
        "the step's, the step's and the next), so that a reward is read from what the step did "
        "(needs --world-model-event-window >= 2)",
    )
    world_model_event_window_change_width: int = doc(
        0,
        "not in REM: channels of the event window's path over the change between its last two "
        "frames, read cell by cell (0: off; needs --world-model-event-window >= 2)",
    )
    device: str = doc("cpu", "torch device (cpu, cuda, cuda:1, mps)")
    common: CommonConfig = field(default_factory=CommonConfig)
    collect: CollectConfig = field(default_factory=CollectConfig)
    tokenizer: TokenizerPhase = field(default_factory=TokenizerPhase)
    world_model: WorldModelPhase = field(default_factory=WorldModelPhase)
    actor_critic: ActorCriticPhase = field(default_factory=ActorCriticPhase)
    evaluation: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        if self.game not in ATARI_100K_GAMES:
            raise ValueError(
                f"unknown game {self.game!r}; choose one of the Atari 100K games: "
                f"{', '.join(sorted(ATARI_100K_GAMES))}"
            )
        if self.preset not in PRESET_NAMES:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {PRESET_NAMES}")
        if self.model not in MODEL_SIZES:
            raise ValueError(f"unknown model sizes {self.model!r}; choose one of {MODEL_SIZES}")
        _check_positive(self)
        if self.world_model.moving_from not in MOVING_FROM:
            raise ValueError(
                f"world_model.moving_from must be one of {', '.join(MOVING_FROM)}, got "
                f"{self.world_model.moving_from!r}"
            )
        if self.world_model_layers is not None and self.world_model_layers < 1:
            raise ValueError(f"world_model_layers must be >= 1, got {self.world_model_layers}")
        if self.world_model_frame_conv < 0:
            raise ValueError(
                f"world_model_frame_conv must be >= 0 (0: off), got {self.world_model_frame_conv}"
            )
        if self.world_model_event_window < 0:
            raise ValueError(
                "world_model_event_window must be >= 0 (0: off), got "
                f"{self.world_model_event_window}"
            )
        if self.world_model_event_window_reads_next and self.world_model_event_window < 2:
            raise ValueError(
                "world_model_event_window_reads_next needs an event window of at least 2 frames "
                f"(world_model_event_window), got {self.world_model_event_window}"
            )
        if self.world_model_event_window_change_width < 0 or (
            self.world_model_event_window_change_width and self.world_model_event_window < 2
        ):
            raise ValueError(
                "world_model_event_window_change_width must be 0 (off) or positive with an event "
                f"window of at least 2 frames, got {self.world_model_event_window_change_width} "
                f"with world_model_event_window {self.world_model_event_window}"
            )
        if self.world_model_event_reader < 0:
            raise ValueError(
                "world_model_event_reader must be >= 0 (0: off), got "
                f"{self.world_model_event_reader}"
            )
        if self.world_model_frame_conv_width < 1:
            raise ValueError(
                "world_model_frame_conv_width must be >= 1, got "
                f"{self.world_model_frame_conv_width}"
            )
        if self.world_model_frame_conv_frames < 2:
            raise ValueError(
                "world_model_frame_conv_frames must be >= 2, got "
                f"{self.world_model_frame_conv_frames}"
            )
        if self.world_model_frame_conv_frames > 2 and not self.world_model_frame_conv:
            raise ValueError(
                "world_model_frame_conv_frames are read by the frame conv: set "
                "world_model_frame_conv (--world-model-frame-conv N) too"
            )
        flags = ("events", "copy", "pixels")
        for flag in (f"world_model_frame_conv_{name}" for name in flags):
            if getattr(self, flag) and not self.world_model_frame_conv:
                raise ValueError(
                    f"{flag} is a setting of the frame conv: set world_model_frame_conv "
                    "(--world-model-frame-conv N) too"
                )
        if self.world_model_frame_conv_completion < 0:
            raise ValueError(
                "world_model_frame_conv_completion must be >= 0 (0: off), got "
                f"{self.world_model_frame_conv_completion}"
            )
        if self.world_model_frame_conv_completion and not self.world_model_frame_conv:
            raise ValueError(
                "world_model_frame_conv_completion reads the frame conv's features: set "
                "world_model_frame_conv (--world-model-frame-conv N) too"
            )
        if self.patch_row_offset and self.model != "patch":
            raise ValueError(
                "patch_row_offset moves a patch tokenizer's grid: set model to 'patch' "
                f"(--model patch), got {self.model!r}"
            )
        if self.patch_vocab_size != PATCH_TOKENIZER.vocab_size and self.model != "patch":
            raise ValueError(
                "patch_vocab_size sizes a patch tokenizer's codebook: set model to 'patch' "
                f"(--model patch), got {self.model!r}"
            )
        if self.patch_vocab_size < 2:
            raise ValueError(f"patch_vocab_size must be >= 2, got {self.patch_vocab_size}")
        if self.world_model_frame_conv_pixels and self.model != "patch":
            raise ValueError(
                "world_model_frame_conv_pixels reads the pixels of a patch tokenizer's codes: "
                f"set model to 'patch' (--model patch), got {self.model!r}"
            )
        if self.model == "patch" and self.tokenizer.start_after_epoch < self.common.epochs:
            raise ValueError(
                "the patch model's tokenizer is fitted by k-means, not trained: set "
                f"--tokenizer.start-after-epoch {NEVER} and start from a fitted one with "
                "--init-from FOLDER --init-parts tokenizer (python -m "
                "rem_train.fit_patch_tokenizer)"
            )
        if self.world_model.dreamed_steps > 1 and not (
            self.world_model.dreamed_heads_weight or self.world_model.dreamed_obs_weight
        ):
            raise ValueError(
                "world_model.dreamed_steps dreams the frames of the dreamed terms: set "
                "world_model.dreamed_heads_weight or world_model.dreamed_obs_weight > 0 too"
            )
        match = self.world_model.dreamed_heads_match
        if not 0.0 <= match <= 1.0:
            raise ValueError(f"world_model.dreamed_heads_match must lie in [0, 1], got {match}")
        if match and not self.world_model.dreamed_heads_weight:
            raise ValueError(
                "world_model.dreamed_heads_match picks the dreamed frames of the dreamed heads' "
                "terms: set world_model.dreamed_heads_weight > 0 too"
            )
        ac = self.actor_critic
        if ac.horizon < 3:
            raise ValueError(
                f"actor_critic.horizon must be >= 3 (2 imagined steps), got {ac.horizon}"
            )
        if self.evaluation.temperature <= 0 or self.collect.temperature <= 0:
            raise ValueError("collect.temperature and evaluation.temperature must be positive")
        parse_parts(self.common.init_parts)  # checks the names
        if not 0.0 <= self.collect.epsilon <= 1.0:
            raise ValueError(f"collect.epsilon must lie in [0, 1], got {self.collect.epsilon}")
        if not 0.0 <= self.collect.scripted_share <= 1.0:
            raise ValueError(
                f"collect.scripted_share must lie in [0, 1], got {self.collect.scripted_share}"
            )
        if not 0.0 <= self.collect.parked_share <= 1.0 - self.collect.scripted_share:
            raise ValueError(
                f"collect.parked_share must lie in [0, 1 - collect.scripted_share] (the shares of "
                f"episodes add up to at most 1), got {self.collect.parked_share} with "
                f"collect.scripted_share {self.collect.scripted_share}"
            )

    @classmethod
    def from_preset(cls, name: str, game: str = "Breakout", **top: Any) -> TrainConfig:
        """The named preset for ``game``; ``top`` overrides top-level fields (``device=...``).

        Raises:
            ValueError: If the preset or the game is unknown.
        """
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return dataclasses.replace(PRESETS[name], game=game, **top)

    @property
    def num_actions(self) -> int:
        """Size of the game's minimal action set."""
        return ATARI_100K_GAMES[self.game]

    @property
    def imagined_steps(self) -> int:
        """Imagined steps per actor-critic trajectory (horizon - 1)."""
        return self.actor_critic.horizon - 1

    def untrained_tokenizer_problem(self) -> str | None:
        """Why a new run of this config would train a world model on a random tokenizer, or None.

        The world model learns the tokens of the tokenizer; one that never trains in the run
        (``tokenizer.start_after_epoch >= common.epochs``) must come from ``--init-from``.
        """
        never = self.tokenizer.start_after_epoch >= self.common.epochs
        learns = self.world_model.start_after_epoch < self.common.epochs
        given = self.common.init_from is not None and "tokenizer" in parse_parts(
            self.common.init_parts
        )
        if never and learns and not given:
            if self.model == "patch":
                return (
                    "a patch tokenizer is fitted, not trained: fit one with `python -m "
                    "rem_train.fit_patch_tokenizer` and start from it with --init-from FOLDER "
                    "--init-parts tokenizer"
                )
            return (
                f"the {self.preset} preset does not train the tokenizer (tokenizer.start_after_"
                f"epoch {self.tokenizer.start_after_epoch} >= {self.common.epochs} epochs): start "
                "from a pretrained one with --init-from FOLDER --init-parts tokenizer (`python -m "
                "rem_train.pretrain_tokenizer` trains one), or set --tokenizer.start-after-epoch"
            )
        return None

    def model_config(self) -> REMConfig:
        """The REM model configuration of this run."""
        if self.model == "paper":
            config = REMConfig.preset("paper", num_actions=self.num_actions, game=self.game)
        else:
            tokenizer, world_model = _MODEL_SIZES[self.model]
            tokenizer = dataclasses.replace(tokenizer, row_offset=self.patch_row_offset)
            if self.model == "patch":
                tokenizer = dataclasses.replace(tokenizer, vocab_size=self.patch_vocab_size)
            config = REMConfig(self.num_actions, tokenizer, world_model, game=self.game)
        world_model = config.world_model
        if self.world_model_layers is not None:
            world_model = dataclasses.replace(world_model, num_layers=self.world_model_layers)
        if self.world_model_frame_conv:
            world_model = dataclasses.replace(
                world_model,
                frame_conv_layers=self.world_model_frame_conv,
                frame_conv_width=self.world_model_frame_conv_width,
                frame_conv_events=self.world_model_frame_conv_events,
                frame_conv_copy=self.world_model_frame_conv_copy,
                frame_conv_frames=self.world_model_frame_conv_frames,
                frame_conv_pixels=(
                    config.tokenizer.patch_size if self.world_model_frame_conv_pixels else 0
                ),
                frame_conv_completion=self.world_model_frame_conv_completion,
            )
        if self.world_model_event_reader:
            world_model = dataclasses.replace(
                world_model, event_reader_width=self.world_model_event_reader
            )
        if self.world_model_event_window:
            world_model = dataclasses.replace(
                world_model,
                event_window_frames=self.world_model_event_window,
                event_window_reads_next=self.world_model_event_window_reads_next,
                event_window_change_width=self.world_model_event_window_change_width,
            )
        return dataclasses.replace(config, world_model=world_model)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of this config."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Rebuilds a config from :meth:`to_dict` output, rejecting unknown keys.

        A run saved before ``actor_critic.real_history`` existed dreamed without the history,
        and is read with it off.

        Example:
            >>> data = TrainConfig.from_preset("smoke").to_dict()
            >>> TrainConfig.from_dict(data).actor_critic.real_history
            True
            >>> del data["actor_critic"]["real_history"]
            >>> TrainConfig.from_dict(data).actor_critic.real_history
            False
        """
        section = data.get("actor_critic") if isinstance(data, dict) else None
        if isinstance(section, dict) and "real_history" not in section:
            data = {**data, "actor_critic": {**section, "real_history": False}}
        return _build(cls, data, "config")

    def differences(
        self, other: TrainConfig, ignore: tuple[str, ...] = ("device", "common.progress_bars")
    ) -> list[str]:
        """Dotted names of the fields that differ between two configs (``ignore`` skipped)."""
        mine, theirs = flatten(self.to_dict()), flatten(other.to_dict())
        keys = sorted(set(mine) | set(theirs))
        return [k for k in keys if k not in ignore and mine.get(k) != theirs.get(k)]


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known keys are {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        sub = _SECTIONS.get(name) if cls is TrainConfig else None
        kwargs[name] = _build(sub, value, f"{where}.{name}") if sub else value
    return cls(**kwargs)


def _check_positive(config: TrainConfig) -> None:
    """Counts, sizes and learning rates must be positive (start epochs and flags excepted)."""
    for section in _SECTIONS:
        part = getattr(config, section)
        for f in dataclasses.fields(part):
            value = getattr(part, f.name)
            if f.name.startswith("start_after") or isinstance(value, bool) or value is None:
                continue
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{section}.{f.name} must be a finite number, got {value!r}")
            if f.name in (
                "epsilon",
                "weight_decay",
                "lambda_",
                "entropy_weight",
                "seed",
                "foreground_weight",
                "restart_dead_codes_every",
                "scripted_share",
                "scripted_serve_wait",
                "parked_share",
                "object_segments",
                "event_segments",
                "moving_weight",
                "dreamed_heads_weight",
                "dreamed_heads_match",
                "dreamed_obs_weight",
                "dream_temperature",
                "dream_event_temperature",
            ):
                if value < 0:
                    raise ValueError(f"{section}.{f.name} must be >= 0, got {value!r}")
                continue
            if isinstance(value, (int, float)) and not value > 0:
                raise ValueError(f"{section}.{f.name} must be positive, got {value!r}")


_SECTIONS: dict[str, type] = {
    "common": CommonConfig,
    "collect": CollectConfig,
    "tokenizer": TokenizerPhase,
    "world_model": WorldModelPhase,
    "actor_critic": ActorCriticPhase,
    "evaluation": EvalConfig,
}

PHASES = ("tokenizer", "world_model", "actor_critic")
"""The learning phases of an epoch, in order: the config sections with a ``start_after_epoch``."""

NEVER = 1_000_000
"""A ``start_after_epoch`` no run reaches, however far it is extended: the phase never trains."""

SMOKE_TOKENIZER = TokenizerConfig(
    image_size=64, base_channels=8, num_downsamples=3, vocab_size=32, embed_dim=32
)
"""64x64 frames, 8x8 = 64 tokens (as in REM), but a small codebook and few channels."""
SMOKE_WORLD_MODEL = WorldModelConfig(embed_dim=32, num_layers=1, num_heads=2, ffn_dim=64)
"""One RetNet layer of width 32 (head dim 16)."""

CPU_TOKENIZER = TokenizerConfig(
    image_size=64, base_channels=16, num_downsamples=3, vocab_size=256, embed_dim=128
)
"""64x64 frames and 8x8 = 64 tokens as in REM; half the codebook and half the channels."""
CPU_WORLD_MODEL = WorldModelConfig(
    embed_dim=128, num_layers=2, num_heads=4, ffn_dim=512, dropout=0.0
)
"""Two RetNet layers of width 128 (head dim 32), no dropout (its RNG costs ~40% of a CPU step)."""

CPU512_TOKENIZER = dataclasses.replace(CPU_TOKENIZER, vocab_size=512)
"""The ``cpu`` tokenizer with REM's 512 codes (room for Breakout's ball at every position)."""

PATCH_TOKENIZER = TokenizerConfig(
    image_size=64, num_downsamples=3, vocab_size=512, embed_dim=192, kind="patch"
)
"""Not in REM: 512 fixed 8x8 patches, fitted by k-means on real frames
(``python -m rem_train.fit_patch_tokenizer``)."""

PATCH_WORLD_MODEL = dataclasses.replace(CPU_WORLD_MODEL, shared_embeddings=False)
"""The ``cpu`` world model with its own token embeddings (a patch's 192 pixels are no embedding)."""

_MODEL_SIZES = {
    "cpu": (CPU_TOKENIZER, CPU_WORLD_MODEL),
    "cpu512": (CPU512_TOKENIZER, CPU_WORLD_MODEL),
    "patch": (PATCH_TOKENIZER, PATCH_WORLD_MODEL),
    "smoke": (SMOKE_TOKENIZER, SMOKE_WORLD_MODEL),
}

PRESETS: dict[str, TrainConfig] = {
    "atari100k": TrainConfig(game="Breakout", preset="atari100k", model="paper"),
    "smoke": TrainConfig(
        game="Breakout",
        preset="smoke",
        model="smoke",
        common=CommonConfig(
            epochs=5,
            collect_epochs=5,
            env_steps_per_epoch=60,
            checkpoint_every=2,
            eval_every=2,
            eval_start_epoch=4,
            max_raw_frames=2000,
            replay_fsync=False,
            track_progress=True,
        ),
        tokenizer=TokenizerPhase(
            start_after_epoch=1,
            steps_per_epoch=12,
            batch_size=16,
            lpips=False,
            foreground_weight=10.0,
        ),
        world_model=WorldModelPhase(start_after_epoch=2, steps_per_epoch=10, batch_size=8),
        actor_critic=ActorCriticPhase(
            start_after_epoch=3, steps_per_epoch=6, batch_size=8, hidden_size=64
        ),
        evaluation=EvalConfig(
            num_envs=2,
            episodes=2,
            final_episodes=2,
            max_raw_frames=400,
            object_segments=8,
            event_segments=8,
        ),
    ),
    "cpu": TrainConfig(
        game="Breakout",
        preset="cpu",
        model="cpu",
        common=CommonConfig(
            epochs=40,
            collect_epochs=40,
            env_steps_per_epoch=500,
            checkpoint_every=10,
            eval_every=20,
            eval_start_epoch=20,
            replay_fsync=False,
        ),
        tokenizer=TokenizerPhase(
            start_after_epoch=1,
            steps_per_epoch=40,
            batch_size=64,
            lr=3e-4,
            lpips=False,
            foreground_weight=50.0,
            restart_dead_codes_every=10,
        ),
        world_model=WorldModelPhase(start_after_epoch=5, steps_per_epoch=80, batch_size=16),
        actor_critic=ActorCriticPhase(start_after_epoch=15, steps_per_epoch=20, batch_size=64),
        evaluation=EvalConfig(episodes=8, final_episodes=16),
    ),
    "breakout": TrainConfig(
        game="Breakout",
        preset="breakout",
        model="cpu512",
        common=CommonConfig(
            epochs=40,
            collect_epochs=40,
            env_steps_per_epoch=500,
            checkpoint_every=5,
            eval_every=10,
            eval_start_epoch=10,
            replay_fsync=False,
        ),
        collect=CollectConfig(scripted_share=0.5),
        tokenizer=TokenizerPhase(start_after_epoch=NEVER, lpips=False),
        world_model=WorldModelPhase(start_after_epoch=1, steps_per_epoch=80, batch_size=16),
        actor_critic=ActorCriticPhase(start_after_epoch=8, steps_per_epoch=20, batch_size=64),
        evaluation=EvalConfig(episodes=8, final_episodes=16),
    ),
}
"""The paper's schedule; ``cpu``: 20,000 real steps (a fifth of Atari 100K), a narrow model, and
a tokenizer without LPIPS (too slow on a CPU) whose reconstruction error weighs 51x on pixels that
differ from the background and whose unused codes are restarted every 10 steps, so that the ball
and the paddle survive; about 75 minutes on 2 CPU cores; ``breakout``: the recipe of the VQ-VAE
Breakout model bundled before the patch model (``warm_starts/Breakout-vqvae``): the ``cpu``
sizes with 512 codes, a tokenizer pretrained on real frames (``python -m
rem_train.pretrain_tokenizer``, given with ``--init-from``, never trained further:
``tokenizer.start_after_epoch`` is :data:`NEVER`), half
of the episodes played by a scripted player that keeps the ball in play (20,000 real steps);
``smoke``: a whole four-phase cycle in about a minute."""
