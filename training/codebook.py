"""Dead-code restarts of the tokenizer's codebook (not in REM; the ``cpu`` preset uses them).

A VQ-VAE whose codebook starts tiny (REM: U(-1/V, 1/V)) can collapse: every latent of every frame
snaps to a handful of codes, the decoder then only sees those few, and the moving objects of a
game (Breakout's ball and paddle) are lost for good. The classic remedy: every ``every`` steps,
each code that no latent picked during those steps is moved onto a latent of the current batch,
chosen at random, so that it starts to be used.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from rem_env.models.tokenizer import FrameTokenizer
from rem_train.distributed import DistContext

__all__ = ["DeadCodeRestarter"]


class DeadCodeRestarter:
    """Tracks which codes were used and moves the unused ones onto current latents.

    Args:
        vocab_size: Codes in the codebook.
        every: Steps between restarts.
        device: Device of the usage counter.
        by_error: Pick the latents a dead code moves onto with probability proportional to
            their squared distance from their nearest code (the worst-represented ones, e.g. the
            latents of Breakout's ball), instead of uniformly. Uniform picks land mostly on
            background latents, which already have codes.

    Example:
        >>> from rem_env import REMConfig
        >>> from rem_env.models.tokenizer import Tokenizer
        >>> tok = Tokenizer(REMConfig.preset("tiny", num_actions=4).tokenizer)
        >>> restarter = DeadCodeRestarter(tok.codebook.shape[0], every=1, device="cpu")
        >>> out = tok(torch.rand(2, 3, 16, 16))
        >>> restarter.observe(out.tokens)
        >>> dead = restarter.step(tok, out.z, torch.Generator().manual_seed(0))
        >>> dead == 16 - out.tokens.unique().numel()
        True
    """

    def __init__(
        self,
        vocab_size: int,
        every: int,
        device: torch.device | str,
        by_error: bool = False,
    ) -> None:
        if every < 1:
            raise ValueError(f"every must be positive, got {every}")
        self.every = every
        self.by_error = by_error
        self.used = torch.zeros(vocab_size, device=device)
        self.steps = 0

    def observe(self, tokens: Tensor) -> None:
        """Marks the codes of ``tokens`` (any shape) as used."""
        self.used[tokens.flatten()] = 1.0

    @torch.no_grad()
    def step(
        self,
        tokenizer: FrameTokenizer,
        z: Tensor,
        generator: torch.Generator,
        ctx: DistContext | None = None,
        codes: Tensor | None = None,
    ) -> int:
        """Counts a step; on every ``every``-th, restarts the unused codes. Returns how many.

        Args:
            tokenizer: Its codebook is changed in place.
            z: (B, E, h, w) encoder outputs of the current batch (this rank's part).
            generator: Picks the latents (on ``z``'s device).
            ctx: Data-parallel ranks: usage is pooled over ranks and rank 0's latents are
                broadcast, so every rank keeps the same codebook.
            codes: (B, E, h, w) the codes ``z`` was quantised to; needed with ``by_error``.
        """
        self.steps += 1
        if self.steps % self.every:
            return 0
        distributed = ctx is not None and ctx.is_distributed
        if distributed:
            dist.all_reduce(self.used, op=dist.ReduceOp.MAX)
        dead = (self.used == 0).nonzero().squeeze(1)
        if len(dead):
            latents = z.detach().permute(0, 2, 3, 1).reshape(-1, z.shape[1])  # (B*h*w, E)
            if self.by_error:
                if codes is None:
                    raise ValueError("by_error restarts need the codes z was quantised to")
                error = (z.detach() - codes.detach()).square().sum(1).flatten()  # (B*h*w,)
                pick = torch.multinomial(
                    error.float() + 1e-12, len(dead), replacement=True, generator=generator
                )
            else:
                pick = torch.randint(
                    len(latents), (len(dead),), generator=generator, device=z.device
                )
            codebook = tokenizer.codebook
            codebook[dead.to(codebook.device)] = latents[pick].to(codebook.dtype)
            if distributed:
                dist.broadcast(codebook.data, src=0)
        self.used.zero_()
        return len(dead)
