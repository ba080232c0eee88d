"""Training losses of REM's three components and lambda-returns, as pure functions.

Every loss returns ``(loss, metrics)``: a scalar tensor to back-propagate and a
``dict[str, float]`` of detached values for logging. Nothing here owns parameters; the
perceptual network, if any, is passed in (see :mod:`rem_train.lpips`).

Formulas follow REM_SPEC section 3 (tokenizer), section 4 (world model: three
cross-entropies) and section 6 (actor-critic: lambda-returns, policy gradient with the value as
baseline, entropy bonus, value regression). Beside them, inputs of the options that are not in
REM: :func:`moving_patch_weights` and :func:`dreamed_frames` (the world model's own samples of
a batch's frames, for the losses on dreamed frames).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from rem_env.models.patch_tokenizer import shift_rows
from rem_env.models.sampling import sample_categorical
from rem_env.models.tokenizer import TokenizerReconstruction
from rem_env.models.world_model import WorldModel, WorldModelOutput

__all__ = [
    "IGNORE_INDEX",
    "MOVING_FROM",
    "Metrics",
    "actor_critic_loss",
    "dreamed_frames",
    "foreground_weights",
    "lambda_returns",
    "matching_blocks",
    "moving_patch_weights",
    "predicted_blocks",
    "reward_classes",
    "tokenizer_loss",
    "world_model_loss",
]

Metrics = dict[str, float]
"""Detached scalar values of a loss and its terms, keyed by name, for logging."""

IGNORE_INDEX = -100
"""Label value that a cross-entropy skips (padded blocks, context blocks)."""

PerceptualLoss = Callable[[Tensor, Tensor], Tensor]
"""``(x, x_hat) -> (B,)`` distances of images in [-1, 1], e.g. :class:`rem_train.lpips.LPIPS`."""


def foreground_weights(
    frames: Tensor, background: Tensor, weight: float, threshold: float = 0.1
) -> Tensor:
    """(B, 1, H, W) pixel weights: ``1 + weight`` where a frame differs from the background.

    A pixel is foreground where any channel differs from ``background`` by more than
    ``threshold`` (frames in [0, 1]). In Atari games the moving objects (Breakout's ball and
    paddle) cover a few pixels of a mostly static screen; weighting them lets a tokenizer trained
    without a perceptual loss keep them.

    Args:
        frames: (B, C, H, W) frames in [0, 1].
        background: (C, H, W) the game's static picture, e.g. the per-pixel median of many frames.
        weight: Extra weight of foreground pixels (0: all pixels weigh 1).
        threshold: Difference that makes a pixel foreground.
    """
    moving = (frames - background).abs().amax(dim=1, keepdim=True) > threshold  # (B, 1, H, W)
    return 1.0 + weight * moving.to(frames.dtype)


def motion_weights(
    frames: Tensor, previous: Tensor, weight: float, threshold: float = 8 / 255
) -> Tensor:
    """(B, 1, H, W) pixel weights: ``1 + weight`` where a frame changed since the frame before.

    Game-agnostic: the pixels that move between consecutive frames are the small objects whose
    dynamics matter (Breakout's ball covers ~4 of a 64x64 frame's 4,096 pixels, but ~15% of the
    ~28 that move). Add to :func:`foreground_weights` (subtract 1 from one of the two).

    Args:
        frames: (B, C, H, W) frames in [0, 1].
        previous: (B, C, H, W) the frames one step earlier.
        weight: Extra weight of the moving pixels.
        threshold: Change of any channel that makes a pixel moving (default 8 grey levels).

    Example:
        >>> frames, previous = torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4)
        >>> frames[0, 0, 1, 2] = 1.0
        >>> motion_weights(frames, previous, 9.0)[0, 0].tolist()[1]
        [1.0, 1.0, 10.0, 1.0]
    """
    moving = (frames - previous).abs().amax(dim=1, keepdim=True) > threshold  # (B, 1, H, W)
    return 1.0 + weight * moving.to(frames.dtype)


MOVING_FROM = ("target", "context")
"""What :func:`moving_patch_weights` reads movement from: the predicted frame itself, or the
last frame before it."""


def moving_patch_weights(
    obs: Tensor,
    latent_size: int,
    weight: float,
    threshold: int = 8,
    moving_from: str = "target",
    row_offset: int = 0,
) -> Tensor:
    """(B, T, K) token weights: ``1 + weight`` on patches that moved, 1 elsewhere.

    With ``moving_from="target"`` a patch of block t moved where any of its pixels, or of its 8
    neighbouring patches' pixels, changed since block t-1 (by more than ``threshold`` grey
    levels in a channel); block 0 has no frame before it and weighs 1. The neighbours take in
    where an object went *to*, seen from the patch it left. Game-agnostic: in Breakout these
    are the ball's and the paddle's patches, ~2% of the tokens, which the world model's mean
    cross-entropy otherwise barely sees.

    Such weights depend on the answer: a patch that changes weighs ``1 + weight`` times one that
    could have changed and did not, so the probabilities that minimise the weighted loss put
    up to ``1 + weight`` times the real odds on a change that the frames before cannot tell
    (in Breakout a ball that comes from nowhere). ``moving_from="context"`` reads the movement
    from the frames the prediction is made from instead: block t's patches weigh ``1 +
    weight`` where they or a neighbour changed between blocks t-2 and t-1 (where something
    was moving, and so where it can be next), and blocks 0 and 1 weigh 1. Those weights
    depend on the context only, so each context's best prediction is the real distribution
    of its next frame, whatever the weight.

    Args:
        obs: (B, T, H, W, C) uint8 frames of the segments (padding is masked out by the loss).
        latent_size: Patches per side (K = latent_size ** 2 tokens per frame).
        weight: Extra weight of the moved patches (0: every token weighs 1).
        threshold: Change of a channel, in grey levels, that counts as movement.
        moving_from: ``"target"`` or ``"context"`` (see above).
        row_offset: Rows the token grid starts above the frame (a patch tokenizer's
            ``row_offset``).

    Raises:
        ValueError: If ``moving_from`` is neither.

    Example:
        >>> obs = torch.zeros(1, 3, 8, 8, 3, dtype=torch.uint8)
        >>> obs[0, 1, 0, 0] = 255  # a pixel of the top-left patch changes at block 1
        >>> moving_patch_weights(obs, 4, 9.0)[0, 1].view(4, 4)[:2].tolist()
        [[10.0, 10.0, 1.0, 1.0], [10.0, 10.0, 1.0, 1.0]]
        >>> moving_patch_weights(obs, 4, 9.0, moving_from="context")[0, 2].view(4, 4)[:2].tolist()
        [[10.0, 10.0, 1.0, 1.0], [10.0, 10.0, 1.0, 1.0]]
    """
    if moving_from not in MOVING_FROM:
        raise ValueError(f"moving_from must be one of {MOVING_FROM}, got {moving_from!r}")
    b, t = obs.shape[:2]
    changed = _changed_patches(obs, latent_size, threshold, row_offset)  # (B, T-1, s, s)
    patches = changed.flatten(0, 1)  # (B*(T-1), s, s)
    moved = F.max_pool2d(patches[:, None].float(), kernel_size=3, stride=1, padding=1) > 0
    moved = moved.view(b, t - 1, -1).float()  # (B, T-1, K): block t+1 against block t
    weights = torch.ones(b, t, latent_size**2, device=obs.device)
    if moving_from == "target":
        weights[:, 1:] += weight * moved  # with neighbours
    else:  # block t reads the movement of block t-1 against t-2
        weights[:, 2:] += weight * moved[:, :-1]
    return weights


def _changed_patches(obs: Tensor, latent_size: int, threshold: int, row_offset: int = 0) -> Tensor:
    """(B, T-1, s, s) bool: patches of blocks 1.. with a pixel changed since the block before
    (the grid starting ``row_offset`` rows above the frame)."""
    b, t, h, w, _ = obs.shape
    if h % latent_size or w % latent_size:
        raise ValueError(f"frames of {h}x{w} do not split into {latent_size}x{latent_size} patches")
    changed = (obs[:, 1:].short() - obs[:, :-1].short()).abs().amax(-1) > threshold  # (B,T-1,H,W)
    changed = shift_rows(changed, row_offset, fill=False)  # rows of the token grid
    patches = F.max_pool2d(
        changed.flatten(0, 1)[:, None].float(), kernel_size=(h // latent_size, w // latent_size)
    )  # (B*(T-1), 1, s, s)
    return patches.view(b, t - 1, latent_size, latent_size) > 0


def matching_blocks(
    dreamed_tokens: Tensor,
    obs_tokens: Tensor,
    obs: Tensor,
    latent_size: int,
    share: float = 1.0,
    threshold: int = 8,
    row_offset: int = 0,
) -> Tensor:
    """(B, T) True where a dreamed frame has the real tokens at the patches that moved.

    A patch of block t moved where any of its pixels changed since block t-1 (by more than
    ``threshold`` grey levels in a channel; in Breakout the ball's and the paddle's patches).
    A dreamed frame matches where at least ``share`` of those patches have the real frame's
    tokens: there the real step's reward and end are the dreamed frame's own; where the dream
    drew the ball elsewhere they may not be. Block 0, with no frame before it, counts all its
    patches as moved; a block where nothing moved matches.

    Args:
        dreamed_tokens: (B, T, K) int64 tokens of the dreamed frames (:func:`dreamed_frames`).
        obs_tokens: (B, T, K) int64 tokens of the real frames.
        obs: (B, T, H, W, C) uint8 real frames.
        latent_size: Patches per side (K = latent_size ** 2).
        share: Share of the moved patches that must have the real tokens, in (0, 1].
        threshold: Change of a channel, in grey levels, that counts as movement.
        row_offset: Rows the token grid starts above the frame (a patch tokenizer's
            ``row_offset``).

    Example:
        >>> obs = torch.zeros(1, 2, 8, 8, 3, dtype=torch.uint8)
        >>> obs[0, 1, 0, 0] = 255  # block 1: the top-left patch moved
        >>> obs[0, 1, 7, 7] = 255  # ... and the bottom-right one
        >>> real = torch.zeros(1, 2, 16, dtype=torch.long)
        >>> dreamed = real.clone(); dreamed[0, 1, 1] = 3  # a still patch differs
        >>> matching_blocks(dreamed, real, obs, 4).tolist()
        [[True, True]]
        >>> dreamed[0, 1, 15] = 3  # one of the two moved patches differs
        >>> matching_blocks(dreamed, real, obs, 4).tolist()
        [[True, False]]
        >>> matching_blocks(dreamed, real, obs, 4, share=0.5).tolist()
        [[True, True]]
    """
    if dreamed_tokens.shape != obs_tokens.shape:
        raise ValueError(
            f"dreamed_tokens {tuple(dreamed_tokens.shape)} and obs_tokens "
            f"{tuple(obs_tokens.shape)} must have the same shape"
        )
    if not 0.0 < share <= 1.0:
        raise ValueError(f"share must lie in (0, 1], got {share}")
    moved = torch.ones(obs_tokens.shape, dtype=torch.bool, device=obs_tokens.device)
    changed = _changed_patches(obs, latent_size, threshold, row_offset)  # (B, T-1, s, s)
    moved[:, 1:] = changed.flatten(2)  # (B, T-1, K)
    right = ((dreamed_tokens == obs_tokens) & moved).sum(-1)  # (B, T)
    return right >= share * moved.sum(-1)


def tokenizer_loss(
    output: TokenizerReconstruction,
    frames: Tensor,
    beta: float = 1.0,
    perceptual: PerceptualLoss | None = None,
    pixel_weights: Tensor | None = None,
) -> tuple[Tensor, Metrics]:
    """The VQ-VAE loss of REM (REM_SPEC 3), every term with weight 1.

    ``L = mse(codes, sg(z)) + beta * mse(z, sg(codes)) + mse(x, x_hat) [+ mean LPIPS(x, x_hat)]``
    with images in [-1, 1]. The first term (codebook) is the only one that reaches the codebook;
    the commitment and reconstruction terms reach the encoder (the latter straight-through).
    With ``pixel_weights`` the reconstruction term is the weighted mean
    ``sum(w * (x - x_hat)^2) / sum(w)`` over pixels and channels (equal to the mse for w = 1).

    Args:
        output: :meth:`rem_env.models.tokenizer.Tokenizer.forward` of ``frames``.
        frames: The input frames, float in [0, 1], shape (B, C, H, W).
        beta: Weight of the commitment term (1.0 in REM).
        perceptual: Optional perceptual distance on [-1, 1] images returning (B,) values;
            None trains without it.
        pixel_weights: Optional (B, 1, H, W) weights of the reconstruction error (not in REM;
            see :func:`foreground_weights`).

    Returns:
        The loss and metrics ``codebook``, ``commitment``, ``reconstruction``, ``perceptual``
        (only with a perceptual network) and ``total``.

    Raises:
        TypeError: If ``frames`` is not a floating-point tensor.
        ValueError: If ``frames`` and the reconstruction differ in shape.
    """
    if not isinstance(frames, Tensor) or not frames.dtype.is_floating_point:
        raise TypeError("frames must be a floating-point tensor in [0, 1] (uint8 / 255)")
    x_hat = output.reconstruction
    if tuple(frames.shape) != tuple(x_hat.shape):
        raise ValueError(
            f"frames {tuple(frames.shape)} and reconstruction {tuple(x_hat.shape)} differ in shape"
        )
    x = frames.to(x_hat.dtype) * 2.0 - 1.0
    codebook = F.mse_loss(output.codes, output.z.detach())
    commitment = F.mse_loss(output.z, output.codes.detach())
    if pixel_weights is None:
        reconstruction = F.mse_loss(x_hat, x)
    else:
        weights = pixel_weights.expand_as(x)
        reconstruction = (weights * (x_hat - x).square()).sum() / weights.sum()
    loss = codebook + beta * commitment + reconstruction
    metrics: Metrics = {
        "codebook": codebook.item(),
        "commitment": commitment.item(),
        "reconstruction": reconstruction.item(),
    }
    if perceptual is not None:
        lpips = perceptual(x, x_hat).mean()
        loss = loss + lpips
        metrics["perceptual"] = lpips.item()
    metrics["total"] = loss.item()
    return loss, metrics


def reward_classes(rewards: Tensor) -> Tensor:
    """Reward labels of the world model: ``sign(r) + 1`` in {0, 1, 2}, int64."""
    return (torch.sign(rewards) + 1).long()


def _masked_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy over labels != IGNORE_INDEX; 0 (with grad) when there are none."""
    total = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),  # (N, classes)
        labels.reshape(-1),  # (N,)
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    count = (labels != IGNORE_INDEX).sum().clamp(min=1)
    return total / count


def predicted_blocks(mask: Tensor, context_length: int) -> Tensor:
    """(B, T) bool: the blocks the world-model loss predicts (real, after the context).

    Every term of :func:`world_model_loss` is a mean over these blocks' labels (K observation
    tokens, one reward, one end each).

    Example:
        >>> predicted_blocks(torch.tensor([[True, True, True, False]]), 2)
        tensor([[False, False,  True, False]])
    """
    predicted = mask.bool().clone()
    predicted[:, :context_length] = False
    return predicted


def dreamed_frames(
    world_model: WorldModel,
    obs_tokens: Tensor,
    actions: Tensor,
    mask: Tensor,
    codebook: Tensor | None = None,
    context_length: int = 2,
    generator: torch.Generator | None = None,
    steps: int = 1,
    frames_of: Callable[[Tensor], Tensor | None] | None = None,
) -> Tensor:
    """The segments' frames as the world model dreams them, ``steps`` deep at most.

    Each predicted block (see :func:`predicted_blocks`) is replaced by a sample, at temperature
    1 and without dropout, of the world model's distribution of it given the blocks before it.
    The first pass samples every predicted block from the real blocks before it: what a dream's
    frame looks like one step after real frames. Each further pass samples them again, with the
    same random numbers, from the frames of the pass before; after ``steps`` passes the first
    ``steps`` predicted blocks of a segment are exactly a dream of that many steps from its
    real context, and each later block is a sample given blocks dreamed ``steps - 1`` passes
    deep. The context and padded blocks keep their tokens. No gradient; the module's
    train/eval mode is restored.

    Args:
        world_model: The world model.
        obs_tokens: (B, T, K) int64 real tokens.
        actions: (B, T) int64 actions.
        mask: (B, T) bool, True for real blocks.
        codebook: The tokenizer's codebook, for shared embeddings.
        context_length: Leading blocks kept real.
        generator: Random stream of the samples (None: torch's global one).
        steps: Passes, >= 1 (one forward each).
        frames_of: (B, T, K) tokens -> their (B, T, 3, H, W) decodings, for a world model with
            an event reader (:meth:`rem_env.model.REMModel.segment_frames`).

    Returns:
        (B, T, K) int64 tokens.

    Raises:
        ValueError: If ``steps`` < 1.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    predicted = predicted_blocks(mask, context_length)[..., None]  # (B, T, 1)
    frames = obs_tokens.long()
    uniforms = torch.rand(
        frames.shape, generator=generator, device=frames.device, dtype=torch.float32
    )  # (B, T, K): one draw, kept for every pass
    was_training = world_model.training
    world_model.eval()
    try:
        with torch.no_grad():
            for _ in range(steps):
                pixels = None if frames_of is None else frames_of(frames)
                logits = world_model(frames, actions, codebook, frames=pixels).obs_logits
                frames = torch.where(predicted, sample_categorical(logits, uniforms), frames)
    finally:
        world_model.train(was_training)
    return frames


def _head_losses(
    output: WorldModelOutput, reward_labels: Tensor, end_labels: Tensor, end_weight: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Reward and end cross-entropies of (B, T) labels; the end one weighted, and unweighted."""
    reward_loss = _masked_cross_entropy(output.reward_logits, reward_labels)
    plain_end = _masked_cross_entropy(output.end_logits, end_labels)
    if end_weight == 1.0:
        return reward_loss, plain_end, plain_end
    per_block = F.cross_entropy(
        output.end_logits.reshape(-1, 2),  # (B*T, 2)
        end_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    )  # (B*T,), 0 where ignored
    labels = end_labels.reshape(-1)
    block_weights = torch.where(labels == 1, end_weight, 1.0) * (labels != IGNORE_INDEX)
    end_loss = (per_block * block_weights).sum() / block_weights.sum().clamp(min=1e-12)
    return reward_loss, end_loss, plain_end


def _observation_losses(
    logits: Tensor, labels: Tensor, predicted: Tensor, token_weights: Tensor | None
) -> tuple[Tensor, Tensor]:
    """The observation cross-entropy of (B, T, K) labels: (weighted mean, plain mean).

    Without ``token_weights`` both are the same tensor, REM's loss.
    """
    if token_weights is None:
        plain = _masked_cross_entropy(logits, labels)
        return plain, plain
    b, t, k = labels.shape
    per_token = F.cross_entropy(
        logits.flatten(0, 2),  # (B*T*K, vocab)
        labels.flatten(),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(b, t, k)
    weights = token_weights * predicted[..., None]  # (B, T, K), 0 where not a target
    weighted = (per_token * weights).sum() / weights.sum().clamp(min=1e-12)
    plain = per_token.sum() / (predicted.sum() * k).clamp(min=1)
    return weighted, plain


def world_model_loss(
    output: WorldModelOutput,
    obs_tokens: Tensor,
    rewards: Tensor,
    ends: Tensor,
    mask: Tensor,
    context_length: int = 2,
    token_weights: Tensor | None = None,
    end_weight: float = 1.0,
    dreamed: WorldModelOutput | None = None,
    dreamed_weight: float = 0.0,
    dreamed_obs_weight: float = 0.0,
    dreamed_blocks: Tensor | None = None,
) -> tuple[Tensor, Metrics]:
    """The world-model loss: observation + reward + end cross-entropies, summed (REM_SPEC 4).

    ``output.obs_logits[:, t]`` predicts block t's own tokens (POP), so the observation targets
    are ``obs_tokens`` themselves. Reward (``sign(r) + 1``) and end labels are read at block t's
    action token. All three use the same mask: padded blocks and the first ``context_length``
    blocks are never a target (REM_SPEC 4). Each term is a mean over its non-ignored labels
    (0 when there are none).

    Args:
        output: :meth:`rem_env.models.world_model.WorldModel.forward` of the segment.
        obs_tokens: (B, T, K) int64 tokens of the segment's frames.
        rewards: (B, T) float rewards received after each block's action.
        ends: (B, T) bool (or 0/1) episode-end flags after each block's action.
        mask: (B, T) bool, True for real blocks, False for padding.
        context_length: Leading blocks that are never a target (2 in REM).
        token_weights: Optional (B, T, K) weights of the observation tokens (e.g.
            :func:`moving_patch_weights`): the observation term is then their weighted mean
            (None: every token weighs 1, REM's loss).
        end_weight: Weight of the blocks that end an episode in the end term, which is then
            the weighted mean of the end cross-entropies (1: every block weighs 1, REM's loss).
        dreamed: Optional forward of the same segments with their frames replaced by the
            world model's own samples (:func:`dreamed_frames`): its reward and end
            cross-entropies against the real labels are added, times ``dreamed_weight``.
        dreamed_weight: Weight of those two terms (ignored without ``dreamed``).
        dreamed_obs_weight: Weight of one more term (ignored without ``dreamed``): the
            observation cross-entropy of ``dreamed`` against the real tokens, weighted by
            ``token_weights`` as the first. The world model learns to predict the real frame
            from a history of frames it dreamed itself (not in REM).
        dreamed_blocks: Optional (B, T) bool (ignored without ``dreamed``): the blocks whose
            dreamed frame counts in the dreamed reward and end terms (e.g.
            :func:`matching_blocks`); None: every predicted block. Each term is then a mean
            over those blocks (0 when there are none).

    Returns:
        The loss and metrics ``obs`` and ``end`` (the unweighted means, comparable across
        weightings), ``reward``, ``total``, ``obs_weighted`` when ``token_weights`` is given,
        ``end_weighted`` when ``end_weight`` is not 1, ``reward_dreamed`` and
        ``end_dreamed`` (unweighted) with ``dreamed``, ``obs_dreamed`` (unweighted) when
        ``dreamed_obs_weight`` is positive as well, and ``dreamed_counted`` (the share of the
        predicted blocks that count in the dreamed heads' terms) with ``dreamed_blocks``.

    Raises:
        ValueError: If shapes disagree, ``context_length`` is negative or ``end_weight`` is
            not positive.
    """
    b, t, k, _ = output.obs_logits.shape
    if tuple(obs_tokens.shape) != (b, t, k):
        raise ValueError(f"obs_tokens must have shape {(b, t, k)}, got {tuple(obs_tokens.shape)}")
    for name, value in (("rewards", rewards), ("ends", ends), ("mask", mask)):
        if tuple(value.shape) != (b, t):
            raise ValueError(f"{name} must have shape {(b, t)}, got {tuple(value.shape)}")
    if context_length < 0:
        raise ValueError(f"context_length must be non-negative, got {context_length}")
    if not end_weight > 0:
        raise ValueError(f"end_weight must be positive, got {end_weight}")
    ignore = torch.full_like(obs_tokens, IGNORE_INDEX, dtype=torch.long)
    predicted = predicted_blocks(mask, context_length)
    obs_labels = torch.where(predicted[..., None], obs_tokens.long(), ignore)  # (B, T, K)
    reward_labels = torch.where(predicted, reward_classes(rewards), IGNORE_INDEX)  # (B, T)
    end_labels = torch.where(predicted, ends.long(), IGNORE_INDEX)  # (B, T)
    reward_loss, end_loss, plain_end = _head_losses(output, reward_labels, end_labels, end_weight)
    extra: Metrics = {}
    if end_weight != 1.0:
        extra["end_weighted"] = end_loss.item()
    if token_weights is not None and tuple(token_weights.shape) != (b, t, k):
        raise ValueError(
            f"token_weights must have shape {(b, t, k)}, got {tuple(token_weights.shape)}"
        )
    obs_loss, plain = _observation_losses(output.obs_logits, obs_labels, predicted, token_weights)
    if token_weights is not None:
        extra["obs_weighted"] = obs_loss.item()
    loss = obs_loss + reward_loss + end_loss
    if dreamed is not None:
        if tuple(dreamed.end_logits.shape) != (b, t, 2):
            raise ValueError(
                f"dreamed must be a forward of the same {(b, t)} blocks, got "
                f"{tuple(dreamed.end_logits.shape[:2])}"
            )
        dreamed_rewards, dreamed_ends = reward_labels, end_labels
        if dreamed_blocks is not None:
            if tuple(dreamed_blocks.shape) != (b, t):
                raise ValueError(
                    f"dreamed_blocks must have shape {(b, t)}, got {tuple(dreamed_blocks.shape)}"
                )
            counted = predicted & dreamed_blocks.bool()  # (B, T)
            dreamed_rewards = torch.where(counted, reward_labels, IGNORE_INDEX)
            dreamed_ends = torch.where(counted, end_labels, IGNORE_INDEX)
            extra["dreamed_counted"] = counted.sum().item() / max(int(predicted.sum()), 1)
        dreamed_reward, dreamed_end, plain_dreamed_end = _head_losses(
            dreamed, dreamed_rewards, dreamed_ends, end_weight
        )
        loss = loss + dreamed_weight * (dreamed_reward + dreamed_end)
        extra["reward_dreamed"] = dreamed_reward.item()
        extra["end_dreamed"] = plain_dreamed_end.item()
        if dreamed_obs_weight > 0:
            dreamed_obs, plain_dreamed_obs = _observation_losses(
                dreamed.obs_logits, obs_labels, predicted, token_weights
            )
            loss = loss + dreamed_obs_weight * dreamed_obs
            extra["obs_dreamed"] = plain_dreamed_obs.item()
    metrics: Metrics = {
        "obs": plain.item(),
        "reward": reward_loss.item(),
        "end": plain_end.item(),
        "total": loss.item(),
        **extra,
    }
    return loss, metrics


@torch.no_grad()
def lambda_returns(
    rewards: Tensor, values: Tensor, ends: Tensor, gamma: float = 0.995, lambda_: float = 0.95
) -> Tensor:
    """Lambda-returns along time, without gradient (REM_SPEC 6).

    ``G[T-1] = V[T-1]`` and, going back,
    ``G[t] = r[t] + gamma * (1 - d[t]) * ((1 - lambda) * V[t+1] + lambda * G[t+1])``.

    Args:
        rewards: (B, T) rewards received after the action at step t.
        values: (B, T) value estimates of the state at step t.
        ends: (B, T) bool or 0/1 episode ends after step t (stop bootstrapping).
        gamma: Discount (0.995 in REM).
        lambda_: Lambda (0.95 in REM).

    Returns:
        (B, T) returns in ``values``' dtype.

    Raises:
        ValueError: If the shapes differ or T is 0.

    Example:
        >>> import torch
        >>> r = torch.tensor([[1.0, 0.0]]); v = torch.tensor([[0.0, 2.0]])
        >>> lambda_returns(r, v, torch.zeros(1, 2), gamma=0.5, lambda_=0.5)
        tensor([[2., 2.]])
    """
    if rewards.shape != values.shape or ends.shape != values.shape or values.ndim != 2:
        raise ValueError(
            "rewards, values and ends must share one (B, T) shape, got "
            f"{tuple(rewards.shape)}, {tuple(values.shape)}, {tuple(ends.shape)}"
        )
    if values.shape[1] == 0:
        raise ValueError("lambda_returns needs at least one time step")
    values = values.detach()
    continues = 1.0 - ends.to(values.dtype)
    rewards = rewards.to(values.dtype)
    returns = torch.empty_like(values)
    returns[:, -1] = values[:, -1]
    for t in range(values.shape[1] - 2, -1, -1):
        bootstrap = (1.0 - lambda_) * values[:, t + 1] + lambda_ * returns[:, t + 1]
        returns[:, t] = rewards[:, t] + gamma * continues[:, t] * bootstrap
    return returns


def actor_critic_loss(
    logits: Tensor,
    values: Tensor,
    actions: Tensor,
    rewards: Tensor,
    ends: Tensor,
    gamma: float = 0.995,
    lambda_: float = 0.95,
    entropy_weight: float = 0.001,
) -> tuple[Tensor, Metrics]:
    """REM's actor-critic loss on an imagined trajectory of T steps (REM_SPEC 6).

    With lambda-returns G (no gradient) over all T steps, the loss uses t = 0..T-2:
    policy ``-mean(log pi(a_t) * (G_t - sg(V_t)))``, entropy ``-entropy_weight * mean(H(pi_t))``
    and value ``mean((V_t - G_t)^2)``, summed with no other weights.

    Args:
        logits: (B, T, A) policy logits at each imagined step (with gradient).
        values: (B, T) value estimates (with gradient).
        actions: (B, T) int64 actions taken at each step.
        rewards: (B, T) rewards after each action (constants from the world model).
        ends: (B, T) episode ends after each action (constants).
        gamma: Discount (0.995).
        lambda_: Lambda of the returns (0.95).
        entropy_weight: Weight of the entropy bonus (0.001).

    Returns:
        The loss and metrics ``policy``, ``entropy`` (mean H, not the loss term), ``value``,
        ``return`` (mean G), ``total``.

    Raises:
        ValueError: If shapes disagree or T < 2.
    """
    if logits.ndim != 3:
        raise ValueError(f"logits must have shape (B, T, A), got {tuple(logits.shape)}")
    b, t, _ = logits.shape
    if t < 2:
        raise ValueError(f"the actor-critic loss needs T >= 2 imagined steps, got {t}")
    for name, value in (("values", values), ("actions", actions), ("rewards", rewards)):
        if tuple(value.shape) != (b, t):
            raise ValueError(f"{name} must have shape {(b, t)}, got {tuple(value.shape)}")
    if tuple(ends.shape) != (b, t):
        raise ValueError(f"ends must have shape {(b, t)}, got {tuple(ends.shape)}")
    returns = lambda_returns(rewards, values, ends, gamma, lambda_)[:, :-1]  # (B, T-1)
    log_probs = F.log_softmax(logits[:, :-1], dim=-1)  # (B, T-1, A)
    taken = log_probs.gather(-1, actions[:, :-1, None].long()).squeeze(-1)  # (B, T-1)
    v = values[:, :-1]
    advantage = returns - v.detach()
    policy_loss = -(taken * advantage).mean()
    entropy = -(log_probs.exp() * log_probs).sum(dim=-1).mean()
    entropy_loss = -entropy_weight * entropy
    value_loss = (v - returns).pow(2).mean()
    loss = policy_loss + entropy_loss + value_loss
    metrics: Metrics = {
        "policy": policy_loss.item(),
        "entropy": entropy.item(),
        "value": value_loss.item(),
        "return": returns.mean().item(),
        "total": loss.item(),
    }
    return loss, metrics
