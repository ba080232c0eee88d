"""Dead-code restarts bring a collapsed codebook back to life."""

from __future__ import annotations

import pytest
import torch

from rem_env.config import REMConfig
from rem_env.models.tokenizer import Tokenizer
from rem_train.codebook import DeadCodeRestarter


def test_a_collapsed_codebook_is_revived_on_the_restart_steps_only() -> None:
    torch.manual_seed(0)
    tok = Tokenizer(REMConfig.preset("tiny", num_actions=4).tokenizer)
    with torch.no_grad():
        tok.codebook[:] = 100.0  # every code far away ...
        tok.codebook[3] = 0.0  # ... but one: every latent snaps to code 3
    frames = torch.rand(4, 3, 16, 16)
    out = tok(frames)
    assert out.tokens.unique().tolist() == [3]
    restarter = DeadCodeRestarter(16, every=2, device="cpu")
    gen = torch.Generator().manual_seed(0)
    restarter.observe(out.tokens)
    assert restarter.step(tok, out.z, gen) == 0  # not a restart step
    restarter.observe(out.tokens)
    assert restarter.step(tok, out.z, gen) == 15  # every code but 3 was unused
    latents = out.z.detach().permute(0, 2, 3, 1).reshape(-1, out.z.shape[1])
    for code in range(16):
        if code != 3:  # each restarted code is one of the batch's latents
            assert (latents == tok.codebook[code]).all(dim=1).any()
    assert tok(frames).tokens.unique().numel() > 1


def test_restarter_rejects_bad_period() -> None:
    with pytest.raises(ValueError, match="every"):
        DeadCodeRestarter(16, every=0, device="cpu")
