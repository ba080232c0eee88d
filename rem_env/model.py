"""REMModel: the tokenizer and the world model as one unit that dreams, saves and loads."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from rem_env.config import REMConfig
from rem_env.models import build_tokenizer
from rem_env.models.sampling import StepNoise
from rem_env.models.world_model import ImaginationStep, WorldModel, WorldModelOutput
from rem_env.state import ImaginationState

if TYPE_CHECKING:
    from rem_env.manifest import ProtocolManifest

__all__ = ["REMModel"]

DEFAULT_NUM_START_CONTEXTS = 8


class REMModel(nn.Module):
    """A REM world model: tokenizer + RetNet world model + start contexts for resets.

    The tokenizer is REM's VQ-VAE or, not in REM, a patch codebook (``TokenizerConfig.kind``).

    Start contexts are real (or, for an untrained model, random) openings of ``context_length``
    frames as tokens, (N, C, K), and the C-1 actions between them, (N, C-1). A dream starts from
    one of them. They are buffers, so they travel with the weights.

    Args:
        config: The model's configuration.
        num_start_contexts: How many random start contexts a fresh model carries.

    Example:
        >>> import torch
        >>> from rem_env import REMConfig, REMModel
        >>> model = REMModel(REMConfig.preset("tiny", num_actions=4)).eval()
        >>> ctx_tokens, ctx_actions = model.start_tokens[:3], model.start_actions[:3]
        >>> with torch.inference_mode():
        ...     state = model.start_state(ctx_tokens, ctx_actions)
        ...     step, state = model.imagine_step(state, torch.tensor([0, 1, 2]))
        ...     frames = model.decode(step.obs_tokens)
        >>> frames.shape, step.rewards.shape
        (torch.Size([3, 3, 16, 16]), torch.Size([3]))
    """

    start_tokens: Tensor
    start_actions: Tensor
    manifest: ProtocolManifest | None = None
    """The protocol manifest the model was loaded with (None for a model built in memory)."""
    quantization: str | None = None
    """None for a float model; ``"int8"`` for a dreaming copy made by
    :func:`rem_env.quantization.quantize_model`."""

    def __init__(self, config: REMConfig, num_start_contexts: int = DEFAULT_NUM_START_CONTEXTS):
        super().__init__()
        if not isinstance(config, REMConfig):
            raise TypeError(f"config must be a REMConfig, got {type(config).__name__}")
        if num_start_contexts < 1:
            raise ValueError(f"num_start_contexts must be at least 1, got {num_start_contexts}")
        self.config = config
        tok = config.tokenizer
        self.tokenizer = build_tokenizer(tok)
        self.world_model = WorldModel(
            config.world_model, config.num_actions, tok.vocab_size, tok.tokens_per_frame
        )
        frames = config.world_model.context_length
        shape = (num_start_contexts, frames)
        self.register_buffer(
            "start_tokens", torch.randint(tok.vocab_size, (*shape, tok.tokens_per_frame))
        )
        self.register_buffer(
            "start_actions", torch.randint(config.num_actions, (num_start_contexts, frames - 1))
        )

    @property
    def num_actions(self) -> int:
        """Size of the action set."""
        return self.config.num_actions

    @property
    def num_start_contexts(self) -> int:
        """How many start contexts the model carries."""
        return self.start_tokens.shape[0]

    def set_start_contexts(self, tokens: Tensor, actions: Tensor) -> None:
        """Replaces the start contexts with (N, C, K) tokens and (N, C-1) actions."""
        k = self.config.tokenizer.tokens_per_frame
        if tokens.ndim != 3 or tokens.shape[2] != k or tokens.shape[1] < 1:
            raise ValueError(f"start tokens must be (N, C, {k}), got {tuple(tokens.shape)}")
        if actions.shape != (tokens.shape[0], tokens.shape[1] - 1):
            raise ValueError(
                f"start actions must be {(tokens.shape[0], tokens.shape[1] - 1)}, "
                f"got {tuple(actions.shape)}"
            )
        self.world_model._check_values(tokens, actions)
        device = self.start_tokens.device
        self.start_tokens = tokens.to(device=device, dtype=torch.long).clone()
        self.start_actions = actions.to(device=device, dtype=torch.long).clone()

    def encode(self, frames: Tensor) -> Tensor:
        """Tokenises (B, 3, H, W) frames in [0, 1] into (B, K) int64 tokens."""
        return self.tokenizer.encode(frames).tokens

    def decode(self, tokens: Tensor, check_values: bool = True) -> Tensor:
        """Decodes (B, K) tokens into (B, 3, H, W) frames in [0, 1].

        ``check_values=False`` skips the id-range check (a host sync) for tokens known valid.
        """
        return self.tokenizer.decode_tokens(tokens, check_values)

    def forward_segments(self, obs_tokens: Tensor, actions: Tensor) -> WorldModelOutput:
        """The world model's training forward of (B, T, K) tokens and (B, T) actions.

        A world model with an event reader also reads the tokens' decodings (decoded without
        gradient); see :meth:`WorldModel.forward`.
        """
        frames = self.segment_frames(obs_tokens)
        return self.world_model(obs_tokens, actions, self.tokenizer.codebook, frames=frames)

    def segment_frames(self, obs_tokens: Tensor) -> Tensor | None:
        """(B, T, 3, H, W) decodings of (B, T, K) tokens where the world model has an event
        reader to read them (None where it has none); no gradient."""
        if self.world_model.event_reader is None:
            return None
        with torch.no_grad():
            frames = self.decode(obs_tokens.flatten(0, 1), check_values=False)  # (B*T, 3, H, W)
        return frames.unflatten(0, obs_tokens.shape[:2])

    def start_state(
        self,
        context_tokens: Tensor,
        context_actions: Tensor,
        position: int | None = None,
        check_values: bool = True,
        history: Tensor | None = None,
    ) -> ImaginationState:
        """Imagination state from (B, C, K) context tokens and (B, C-1) actions.

        ``check_values=False`` skips the range checks (a host sync) for validated contexts.
        ``history``: (B, N, K) tokens of the real frames before the context, -1 where unknown,
        for a frame conv or event window that reads more frames than the context holds
        (:meth:`WorldModel.start_state`).
        """
        return self.world_model.start_state(
            context_tokens, context_actions, self.tokenizer.codebook, position, check_values,
            history,
        )  # fmt: skip

    def imagine_step(
        self,
        state: ImaginationState,
        actions: Tensor,
        temperature: float = 1.0,
        noise: StepNoise | None = None,
        next_obs_tokens: Tensor | None = None,
        generator: torch.Generator | None = None,
        event_temperature: float | None = None,
    ) -> tuple[ImaginationStep, ImaginationState]:
        """One batched imagination step; see :meth:`WorldModel.step`.

        A world model with an event reader reads the decoded frame before the current one and
        the current one (the current one twice where there is none before it).
        """
        frames = None
        if self.world_model.event_reader is not None:
            frames = self.reader_frames(state)
        return self.world_model.step(
            state,
            actions,
            self.tokenizer.codebook,
            temperature=temperature,
            noise=noise,
            next_obs_tokens=next_obs_tokens,
            generator=generator,
            event_temperature=event_temperature,
            frames=frames,
        )

    def reader_frames(self, state: ImaginationState) -> Tensor:
        """(B, 2, 3, H, W) decodings of the state's frame before the current one and of the
        current one, as an event reader reads them (the current one twice where the state
        has none before it)."""
        current = state.obs_tokens
        previous = state.previous_obs_tokens
        if previous is None:
            raise ValueError(
                "this imagination state keeps no frame before the current one; start it with "
                "start_state of this model"
            )
        previous = torch.where(previous >= 0, previous, current)  # (B, K)
        frames = self.decode(torch.cat([previous, current]), check_values=False)  # (2B, 3, H, W)
        return torch.stack(frames.chunk(2), dim=1)  # (B, 2, 3, H, W)

    def save_pretrained(
        self,
        folder: str | os.PathLike[str],
        manifest: ProtocolManifest | None = None,
        repo_id: str | None = None,
    ) -> str:
        """Saves the model as a folder (safetensors + JSON + model card); see
        :func:`rem_env.hub.save_pretrained`. Returns the folder."""
        from rem_env.hub import save_pretrained

        return str(save_pretrained(self, folder, manifest=manifest, repo_id=repo_id))

    @classmethod
    def from_pretrained(
        cls,
        repo_id_or_folder: str | os.PathLike[str],
        revision: str | None = None,
        map_location: str | torch.device = "cpu",
        **kwargs: Any,
    ) -> REMModel:
        """Loads a model from a folder or a Hub repo id; see :func:`rem_env.hub.load_pretrained`
        for the other arguments (``expected_protocol``, ``on_protocol_mismatch``, ...)."""
        from rem_env.hub import load_pretrained

        return load_pretrained(
            repo_id_or_folder, revision=revision, map_location=map_location, **kwargs
        )

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> Any:
        """Publishes the model to a Hub repo; see :func:`rem_env.hub.push_to_hub`."""
        from rem_env.hub import push_to_hub

        return push_to_hub(self, repo_id, **kwargs)
