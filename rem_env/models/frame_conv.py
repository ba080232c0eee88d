"""A frame conv: next-frame token logits from the 2-D grids of the latest frames (not in REM).

REM's world model reads a frame as a row of K tokens; where a patch sits in the frame, and which
patches are its neighbours, it learns only through the positions of the sequence. A small object
that moves a patch or less per step (Breakout's ball) is then learned slowly. The frame conv
reads the token embeddings of frames t-2 and t-1 as two images of ``sqrt(K) x sqrt(K)`` pixels
(one pixel per patch, the embedding's components as channels) with the action taken after frame
t-1, and gives logits of frame t's K tokens from 3x3 neighbourhoods; the world model adds them to
its observation head's logits. Its last layer starts at zero, so a world model that gains a frame
conv starts as exactly the model it was.

With ``events=True`` the same features, read from frames t-1 and t and the action after t, also
give logits of the reward and the episode end of step t (a ball about to hit a brick, or to pass
the paddle, is seen where it is on the grid), which the world model adds to its reward and end
heads' logits; their output layer starts at zero too.

With ``copy=True`` a 1x1 convolution of the same features gives each patch a bonus added to the
logit of the token the patch has in frame t-1 (a copy gate): most patches stay from one frame to
the next, and the output layer, a few channels wide, cannot tell hundreds of codes apart sharply
enough to keep each one for sure (sampled at temperature 1, a frame would change a static patch
here and there). It starts at zero too.

With ``frames = F > 2`` it also reads the F - 2 frames before t-2, each through one shared
linear map of its token embeddings down to a few channels per patch: two frames cannot tell a
ball that went down past the paddle from one that went up into the wall, nor a new life's first
frames from the frames after a miss; a few more can. The first layer's weights of those
channels start at zero, so a frame conv given more frames (a 2-frame one's weights loaded into
it with :meth:`FrameConv.load_fewer_frames`) starts as exactly the frame conv it was.

With ``pixels = p > 0`` (tokens that stand for fixed patches of p x p pixels, a patch
tokenizer's) it also reads the frames' pixels: each token comes with its patch's 3 * p * p
pixels (the tokenizer's codebook row) after its embedding, the F frames are laid out as images
of ``sqrt(K) * p`` pixels square, and a convolution of stride p over all of them at once, each
cell reading its patch and a pixel of the patches around, gives ``PIXEL_CHANNELS`` more
channels per patch: where a small object is to the pixel and where it moved, the same wherever
it is and whatever patch it is in (from the embeddings the layers learn each of its places in
each code apart). The first layer's weights of those channels start at zero, so a frame conv
that gains them (:meth:`FrameConv.load_without_pixels`) starts as exactly the frame conv it was.

With ``completion = c > 0`` it also gives logits of frame t's tokens *given some of them*: each
patch's logits are drawn apart from the others', so where a new object may come in one of several
places (Breakout's serve, in one of three columns) a sampled frame shows it in none about as
often as in one, now and then in two, and the likeliest frame in none. ``c`` convolutions of
growing dilation over the features, the embeddings of the tokens already drawn and where they
are, read the whole grid; :meth:`FrameConv.completion_logits` adds to a patch's logits what
the drawn tokens say of it, and the world model draws a frame in rounds (the patches it is sure
of first, then the least sure one at a time). Its output layer starts at zero too.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["FrameConv"]

ACTION_CHANNELS = 16
"""Channels of the action's embedding, broadcast over the grid."""

OLDER_CHANNELS = 16
"""Channels of each frame before t-2 (with ``frames > 2``): its token embeddings mapped down."""

PIXEL_CHANNELS = 32
"""Channels per patch read from the frames' pixels (with ``pixels``)."""

PIXEL_COLOURS = 3
"""Colour channels of a patch's pixels (with ``pixels``)."""

EVENT_LOGITS = 5
"""Event logits: 3 reward classes, then 2 end classes (the world model's heads' layout)."""

COMPLETION_MAX_DILATION = 4
"""The completion's convolutions are dilated 1, 2, 4, 4, ...: three of them see a 15 x 15 grid."""

COPY_SCALE = 10.0
"""The copy gate's output is multiplied by this: a bonus of several nats is reached in a few
hundred Adam steps at a learning rate of 1e-3, not thousands."""


class FrameConv(nn.Module):
    """Logits of a frame's K tokens from the frames before it and the action between.

    Args:
        embed_dim: Channels of a token's embedding E (the world model's observation embedding).
        num_actions: Actions A; row A of the action embedding stands for "no action" (the first
            frame of a segment has none before it).
        vocab_size: Tokenizer vocabulary V.
        tokens_per_obs: Tokens per frame K, a square number.
        num_layers: 3x3 convolutions (each followed by ReLU) before the 1x1 output layer.
        width: Channels of those convolutions.
        events: Also give reward and end logits (:meth:`event_logits`), from the features
            pooled over the grid (mean and max of a 1x1 convolution's ReLU outputs).
        copy: Add a per-patch bonus to the logit of the patch's token in frame t-1 (the token
            logits then need that frame's tokens).
        frames: Frames F read before the predicted one (2: frames t-2 and t-1); those before
            t-2 give ``OLDER_CHANNELS`` channels each.
        pixels: 0: read token embeddings only. p > 0: also read each token's patch of p x p
            pixels, given after its embedding (a frame is then (K, E + 3 * p * p): the codebook
            rows of a patch tokenizer, colour-major), all F frames through one convolution of
            stride p (``PIXEL_CHANNELS`` channels per patch).
        completion: 0: off. c > 0: c dilated 3x3 convolutions of ``width`` channels that give
            logits of the next frame's tokens from the features and the tokens of it already
            drawn (:meth:`completion_logits`).

    Example:
        >>> import torch
        >>> conv = FrameConv(embed_dim=8, num_actions=4, vocab_size=16, tokens_per_obs=16,
        ...                  num_layers=2, width=32)
        >>> frames = torch.randn(3, 2, 16, 8)  # (N, 2, K, E): frames t-2 and t-1
        >>> logits = conv(frames, torch.tensor([0, 1, 4]))  # action 4: none
        >>> logits.shape, float(logits.detach().abs().max())  # the last layer starts at zero
        (torch.Size([3, 16, 16]), 0.0)
        >>> conv = FrameConv(8, 4, 16, 16, num_layers=2, width=32, events=True)
        >>> features = conv.features(frames, torch.tensor([0, 1, 4]))  # (N, width, 4, 4)
        >>> conv.token_logits(features).shape, conv.event_logits(features).shape
        (torch.Size([3, 16, 16]), torch.Size([3, 5]))
        >>> conv = FrameConv(8, 4, 16, 16, num_layers=2, width=32, copy=True)
        >>> before = torch.randint(16, (3, 16))  # frame t-1's tokens; -1: no frame
        >>> conv(frames, torch.tensor([0, 1, 4]), before).shape
        torch.Size([3, 16, 16])
        >>> conv = FrameConv(8, 4, 16, 16, num_layers=2, width=32, frames=5)
        >>> conv(torch.randn(3, 5, 16, 8), torch.tensor([0, 1, 4])).shape  # frames t-5 .. t-1
        torch.Size([3, 16, 16])
        >>> conv = FrameConv(8, 4, 16, 16, num_layers=2, width=32, frames=4, pixels=2)
        >>> pixels = torch.rand(3, 4, 16, 12)  # (N, F, K, 3*2*2): each token's 2x2 patch
        >>> conv(torch.cat([torch.randn(3, 4, 16, 8), pixels], -1), torch.tensor([0, 1, 4])).shape
        torch.Size([3, 16, 16])
        >>> conv = FrameConv(8, 4, 16, 16, num_layers=2, width=32, completion=2)
        >>> features = conv.features(frames, torch.tensor([0, 1, 4]))
        >>> drawn = torch.rand(3, 16) < 0.5  # which of frame t's tokens are drawn
        >>> extra = conv.completion_logits(features, torch.randn(3, 16, 8), drawn)
        >>> extra.shape, float(extra.detach().abs().max())  # its last layer starts at zero
        (torch.Size([3, 16, 16]), 0.0)
    """

    def __init__(
        self,
        embed_dim: int,
        num_actions: int,
        vocab_size: int,
        tokens_per_obs: int,
        num_layers: int,
        width: int,
        events: bool = False,
        copy: bool = False,
        frames: int = 2,
        pixels: int = 0,
        completion: int = 0,
    ) -> None:
        super().__init__()
        side = math.isqrt(tokens_per_obs)
        if side * side != tokens_per_obs:
            raise ValueError(
                f"the frame conv needs a square grid of tokens, got {tokens_per_obs} per frame"
            )
        if num_layers < 1:
            raise ValueError(f"the frame conv needs at least one layer, got {num_layers}")
        if frames < 2:
            raise ValueError(f"the frame conv reads at least 2 frames, got {frames}")
        if pixels < 0:
            raise ValueError(f"pixels must be 0 (off) or a patch side, got {pixels}")
        if completion < 0:
            raise ValueError(f"completion must be 0 (off) or a number of layers, got {completion}")
        self.side = side
        self.frames = frames
        self.embed_dim = embed_dim
        self.pixels = pixels
        self.older: nn.Linear | None = None
        if frames > 2:
            self.older = nn.Linear(embed_dim, OLDER_CHANNELS, bias=False)
        self.pixel_layers: nn.Sequential | None = None
        if pixels:  # all F frames' pixels, one cell per patch (and a pixel around it)
            self.pixel_layers = nn.Sequential(
                nn.Conv2d(
                    frames * PIXEL_COLOURS, PIXEL_CHANNELS, pixels + 2, stride=pixels, padding=1
                ),
                nn.ReLU(),
            )
        self.action_embedding = nn.Embedding(num_actions + 1, ACTION_CHANNELS)
        layers: list[nn.Module] = []
        channels = self.latest_channels = 2 * embed_dim + ACTION_CHANNELS
        channels += (frames - 2) * OLDER_CHANNELS + (PIXEL_CHANNELS if pixels else 0)
        for _ in range(num_layers):
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
            channels = width
        self.layers = nn.Sequential(*layers)
        with torch.no_grad():  # the frames before t-2 and the pixels start unread
            self.layers[0].weight[:, self.latest_channels :] = 0
        self.out = nn.Conv2d(width, vocab_size, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.events: nn.Sequential | None = None
        self.event_out: nn.Linear | None = None
        if events:
            self.events = nn.Sequential(nn.Conv2d(width, width, 1), nn.ReLU())
            self.event_out = nn.Linear(2 * width, EVENT_LOGITS)
            nn.init.zeros_(self.event_out.weight)
            nn.init.zeros_(self.event_out.bias)
        self.copy_gate: nn.Conv2d | None = None
        if copy:
            self.copy_gate = nn.Conv2d(width, 1, 1)
            nn.init.zeros_(self.copy_gate.weight)
            nn.init.zeros_(self.copy_gate.bias)
        self.completion: nn.Sequential | None = None
        self.completion_out: nn.Conv2d | None = None
        if completion:  # reads the features, the drawn tokens' embeddings and where they are
            layers, channels = [], width + embed_dim + 1
            for i in range(completion):
                dilation = min(2**i, COMPLETION_MAX_DILATION)
                layers += [nn.Conv2d(channels, width, 3, padding=dilation, dilation=dilation)]
                layers.append(nn.ReLU())
                channels = width
            self.completion = nn.Sequential(*layers)
            self.completion_out = nn.Conv2d(width, vocab_size, 1)
            nn.init.zeros_(self.completion_out.weight)
            nn.init.zeros_(self.completion_out.bias)

    def forward(self, frames: Tensor, actions: Tensor, before: Tensor | None = None) -> Tensor:
        """(N, F, K, E) embeddings of frames t-F .. t-1 (with ``pixels``, each token's pixels
        after its embedding) and (N,) actions -> (N, K, V) logits.

        A frame that does not exist (before the first one) is all zeros; an action that does not
        exist is ``num_actions``. ``before``: frame t-1's (N, K) tokens, for the copy gate.
        """
        return self.token_logits(self.features(frames, actions), before)

    def features(self, frames: Tensor, actions: Tensor) -> Tensor:
        """(N, F, K, E) embedded frames, the oldest first (with ``pixels``, (N, F, K, E + 3pp):
        each token's pixels after its embedding), and (N,) actions -> (N, width, s, s) features.

        Raises:
            ValueError: If ``frames`` does not hold the F frames this frame conv reads.
        """
        width = self.embed_dim + PIXEL_COLOURS * self.pixels**2
        if frames.ndim != 4 or frames.shape[1] != self.frames or frames.shape[3] != width:
            what = f"{self.embed_dim}" if not self.pixels else f"{self.embed_dim} + 3*p*p pixels"
            raise ValueError(
                f"this frame conv reads {self.frames} frames of {what}: frames must be "
                f"(N, {self.frames}, K, {width}), got {tuple(frames.shape)}"
            )
        n, s = frames.shape[0], self.side
        embedded = frames[..., : self.embed_dim]
        latest = embedded[:, -2:].permute(0, 1, 3, 2).reshape(n, -1, s, s)  # (N, 2E, s, s)
        action = self.action_embedding(actions)[:, :, None, None]  # (N, 16, 1, 1)
        parts = [latest, action.expand(-1, -1, s, s)]
        if self.older is not None:  # frames t-F .. t-3, mapped down: (N, F-2, K, 16)
            older = self.older(embedded[:, :-2]).permute(0, 1, 3, 2)  # (N, F-2, 16, K)
            parts.append(older.reshape(n, -1, s, s))  # (N, (F-2)*16, s, s)
        if self.pixel_layers is not None:
            size = s * self.pixels
            rows = frames[..., self.embed_dim :].flatten(0, 1).transpose(1, 2)  # (N*F, 3pp, K)
            images = F.fold(rows, (size, size), self.pixels, stride=self.pixels)
            images = images.reshape(n, -1, size, size)  # (N, F*3, s*p, s*p), oldest first
            parts.append(self.pixel_layers(images))  # (N, 32, s, s)
        return self.layers(torch.cat(parts, dim=1))

    @torch.no_grad()
    def load_fewer_frames(self, state: dict[str, Tensor]) -> None:
        """Loads the weights of a frame conv of the same sizes that reads fewer frames.

        Its first layer's weights of the channels both read (the latest two frames, the
        action, and the older frames it has, which are this one's latest older frames) are
        copied; those of the frames it lacks are zero (as this frame conv starts), so the two
        give the same logits.

        Args:
            state: The other frame conv's ``state_dict()``.

        Raises:
            ValueError: If its layers differ other than in the frames read, or this frame conv
                reads pixels.

        Example:
            >>> import torch
            >>> two = FrameConv(8, 4, 16, 16, num_layers=2, width=32)
            >>> _ = torch.nn.init.normal_(two.out.weight)
            >>> five = FrameConv(8, 4, 16, 16, num_layers=2, width=32, frames=5)
            >>> five.load_fewer_frames(two.state_dict())
            >>> frames = torch.randn(3, 5, 16, 8)
            >>> actions = torch.tensor([0, 1, 4])
            >>> torch.allclose(five(frames, actions), two(frames[:, -2:], actions))
            True
        """
        if self.pixels:
            raise ValueError(
                "a frame conv that reads pixels reads all its frames through one convolution: "
                "it cannot start from the weights of one that reads fewer"
            )
        first = "layers.0.weight"
        own = self.state_dict()
        wanted = {key for key in own if not key.startswith("older.")}
        if not wanted <= set(state):
            raise ValueError(f"the frame conv's weights lack {sorted(wanted - set(state))}")
        theirs = state[first]
        if theirs.shape[1] > own[first].shape[1] or set(state) - set(own):
            raise ValueError("load_fewer_frames reads a frame conv that reads fewer frames")
        for key, value in state.items():
            target = own[key]
            if key == first:
                if theirs.shape[0] != target.shape[0] or theirs.shape[2:] != target.shape[2:]:
                    raise ValueError(
                        f"{key}: {tuple(theirs.shape)} does not fit {tuple(target.shape)}"
                    )
                latest, older = self.latest_channels, theirs.shape[1] - self.latest_channels
                target.zero_()
                target[:, :latest] = theirs[:, :latest]
                if older:  # its older frames are the latest of ours: the last channels
                    target[:, -older:] = theirs[:, latest:]
            elif value.shape != target.shape:
                raise ValueError(f"{key}: {tuple(value.shape)} does not fit {tuple(target.shape)}")
            else:
                target.copy_(value)

    @torch.no_grad()
    def load_without_pixels(self, state: dict[str, Tensor]) -> None:
        """Loads the weights of a frame conv of the same sizes and frames that reads no pixels.

        Its weights are copied; the first layer's weights of the pixels' channels are zero (as
        this frame conv starts), so the two give the same logits, and the layers that read the
        pixels keep their own.

        Args:
            state: The other frame conv's ``state_dict()``.

        Raises:
            ValueError: If this frame conv reads no pixels, or the other one differs in any
                other way.

        Example:
            >>> import torch
            >>> plain = FrameConv(8, 4, 16, 16, num_layers=2, width=32, frames=3)
            >>> _ = torch.nn.init.normal_(plain.out.weight)
            >>> seeing = FrameConv(8, 4, 16, 16, num_layers=2, width=32, frames=3, pixels=2)
            >>> seeing.load_without_pixels(plain.state_dict())
            >>> embedded, pixels = torch.randn(3, 3, 16, 8), torch.rand(3, 3, 16, 12)
            >>> actions = torch.tensor([0, 1, 4])
            >>> both = torch.cat([embedded, pixels], -1)
            >>> torch.allclose(seeing(both, actions), plain(embedded, actions))
            True
        """
        if not self.pixels:
            raise ValueError("load_without_pixels loads into a frame conv that reads pixels")
        first = "layers.0.weight"
        own = self.state_dict()
        wanted = {key for key in own if not key.startswith("pixel_layers.")}
        if set(state) != wanted:
            raise ValueError(
                "load_without_pixels reads a frame conv of the same parts that reads no pixels; "
                f"it lacks {sorted(wanted - set(state))[:4]}, has {sorted(set(state) - wanted)[:4]}"
            )
        for key, value in state.items():
            target = own[key]
            fits = value.shape == target.shape
            if key == first:
                fits = value.shape[1] == target.shape[1] - PIXEL_CHANNELS and (
                    value.shape[0] == target.shape[0] and value.shape[2:] == target.shape[2:]
                )
            if not fits:
                raise ValueError(f"{key}: {tuple(value.shape)} does not fit {tuple(target.shape)}")
            if key == first:
                target.zero_()
                target[:, : value.shape[1]] = value
            else:
                target.copy_(value)

    def token_logits(self, features: Tensor, before: Tensor | None = None) -> Tensor:
        """(N, width, s, s) features -> (N, K, V) logits of the next frame's tokens.

        Args:
            features: From :meth:`features`.
            before: (N, K) tokens of frame t-1 (-1 where there is no such frame), which the
                copy gate adds its bonus to; needed with ``copy``, ignored without.

        Raises:
            ValueError: If the frame conv copies and ``before`` is missing or of another shape.
        """
        logits = self.out(features).flatten(2).transpose(1, 2)  # (N, K, V), raster order
        if self.copy_gate is None:
            return logits
        if before is None or tuple(before.shape) != tuple(logits.shape[:2]):
            got = None if before is None else tuple(before.shape)
            raise ValueError(
                f"this frame conv copies (copy=True): give frame t-1's {tuple(logits.shape[:2])} "
                f"tokens, got {got}"
            )
        bonus = COPY_SCALE * self.copy_gate(features).flatten(1)  # (N, K)
        bonus = bonus * (before >= 0)  # no bonus where there is no frame before
        return logits.scatter_add(-1, before.clamp(min=0)[..., None], bonus[..., None])

    def completion_logits(self, features: Tensor, drawn_embedded: Tensor, drawn: Tensor) -> Tensor:
        """Logits to add to :meth:`token_logits` once some of the next frame's tokens are drawn.

        Args:
            features: (N, width, s, s), from :meth:`features`.
            drawn_embedded: (N, K, E) embeddings of the next frame's tokens (the world model's
                token embedding, as the frames read); only those of drawn patches are read.
            drawn: (N, K) bool: the patches whose tokens are drawn.

        Returns:
            (N, K, V) logits: what the drawn tokens say of each patch's token (meant for the
            patches not drawn yet).

        Raises:
            ValueError: If the frame conv was built without a completion.
        """
        if self.completion is None or self.completion_out is None:
            raise ValueError("this frame conv was built without a completion (completion=0)")
        n, s = features.shape[0], self.side
        mask = drawn.to(features.dtype)[:, None]  # (N, 1, K)
        known = drawn_embedded.transpose(1, 2) * mask  # (N, E, K): zeros where not drawn
        grid = torch.cat([known, mask], dim=1).reshape(n, -1, s, s)  # (N, E+1, s, s)
        x = self.completion(torch.cat([features, grid], dim=1))
        return self.completion_out(x).flatten(2).transpose(1, 2)  # (N, K, V), raster order

    def event_logits(self, features: Tensor) -> Tensor:
        """(N, width, s, s) features -> (N, 5) logits: 3 reward classes, then 2 end classes.

        Raises:
            ValueError: If the frame conv was built without ``events``.
        """
        if self.events is None or self.event_out is None:
            raise ValueError("this frame conv was built without events (events=False)")
        x = self.events(features).flatten(2)  # (N, width, K)
        return self.event_out(torch.cat([x.mean(dim=2), x.amax(dim=2)], dim=1))
