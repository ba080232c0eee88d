"""Start contexts of dreams: the model's bundled ones drawn per env, or the caller's own."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from rem_env.model import REMModel

__all__ = ["StartContexts", "check_contexts", "draw_start_contexts"]


class StartContexts(NamedTuple):
    """Real openings a batch of dreams starts from.

    Attributes:
        tokens: (n, C, K) int64 tokens of C context frames; the last is the first observation.
        actions: (n, C-1) int64 actions taken between the context frames.
        history: (n, N, K) int64 tokens of the real frames before the first context frame, -1
            where unknown, or None (see :meth:`rem_env.model.REMModel.start_state`).
    """

    tokens: Tensor
    actions: Tensor
    history: Tensor | None = None


def draw_start_contexts(model: REMModel, uniforms: Tensor) -> StartContexts:
    """Picks one of the model's start contexts per env from (n,) uniforms in [0, 1).

    Example:
        >>> import torch
        >>> from rem_env import REMConfig, REMModel
        >>> from rem_env.contexts import draw_start_contexts
        >>> model = REMModel(REMConfig.preset("tiny", num_actions=4))
        >>> ctx = draw_start_contexts(model, torch.tensor([0.0, 0.99]))
        >>> tuple(ctx.tokens.shape), tuple(ctx.actions.shape)
        ((2, 2, 16), (2, 1))
    """
    count = model.num_start_contexts
    index = (uniforms * count).long().clamp_(0, count - 1)  # (n,)
    return StartContexts(model.start_tokens[index], model.start_actions[index])


def check_contexts(
    model: REMModel,
    contexts: object,
    count: int,
    device: torch.device,
    history: object = None,
) -> StartContexts:
    """Validates caller-supplied contexts for ``count`` envs and moves them to ``device``.

    Args:
        model: The model the contexts must fit (tokens per frame, vocabulary, actions).
        contexts: A pair ``(tokens (count, C, K), actions (count, C-1))`` of integer arrays or
            tensors.
        count: How many envs are being reset.
        device: Where the dreams live.
        history: None, or ``(count, N, K)`` tokens of the real frames before the contexts,
            -1 where a frame is unknown (what a frame conv or an event window reads of them).

    Example:
        >>> import torch
        >>> from rem_env import REMConfig, REMModel
        >>> model = REMModel(REMConfig.preset("tiny", num_actions=4))
        >>> pair = (torch.zeros(1, 2, 16, dtype=torch.long), torch.zeros(1, 1, dtype=torch.long))
        >>> before = torch.full((1, 5, 16), -1)
        >>> check_contexts(model, pair, 1, torch.device("cpu"), before).history.shape
        torch.Size([1, 5, 16])

    Raises:
        TypeError: If ``contexts`` is not a pair of integer arrays or tensors.
        ValueError: On wrong shapes or out-of-range values.
    """
    if not isinstance(contexts, (tuple, list)) or len(contexts) != 2:
        raise TypeError(
            "options['contexts'] must be a pair (tokens (n, C, K), actions (n, C-1)), "
            f"got {type(contexts).__name__}"
        )
    tokens, actions = (
        _as_long_tensor(x, name, device)
        for x, name in zip(contexts, ("tokens", "actions"), strict=True)
    )
    k = model.config.tokenizer.tokens_per_frame
    if tokens.ndim != 3 or tokens.shape[0] != count or tokens.shape[2] != k or tokens.shape[1] < 1:
        raise ValueError(
            f"context tokens must have shape ({count}, C, {k}) for {count} env(s) being reset, "
            f"got {tuple(tokens.shape)}"
        )
    frames = tokens.shape[1]
    if tuple(actions.shape) != (count, frames - 1):
        raise ValueError(
            f"context actions must have shape ({count}, {frames - 1}) for {frames} context "
            f"frames, got {tuple(actions.shape)}"
        )
    vocab = model.config.tokenizer.vocab_size
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab):
        raise ValueError(f"context tokens must be in [0, {vocab})")
    if actions.numel() and (int(actions.min()) < 0 or int(actions.max()) >= model.num_actions):
        raise ValueError(f"context actions must be in [0, {model.num_actions})")
    if history is None:
        return StartContexts(tokens, actions)
    before = _as_long_tensor(history, "history", device)
    if before.ndim != 3 or before.shape[0] != count or before.shape[2] != k:
        raise ValueError(
            f"history tokens must have shape ({count}, N, {k}) for {count} env(s) being reset, "
            f"got {tuple(before.shape)}"
        )
    if before.numel() and (int(before.min()) < -1 or int(before.max()) >= vocab):
        raise ValueError(f"history tokens must be in [0, {vocab}), or -1 for an unknown frame")
    return StartContexts(tokens, actions, before)


def _as_long_tensor(value: object, name: str, device: torch.device) -> Tensor:
    """An int64 tensor on ``device`` from an integer array or tensor."""
    if isinstance(value, Tensor):
        if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
            raise TypeError(f"context {name} must be integers, got dtype {value.dtype}")
        return value.to(device=device, dtype=torch.long)
    array = np.asarray(value)
    if not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"context {name} must be integers, got dtype {array.dtype}")
    return torch.as_tensor(array.astype(np.int64), device=device)
