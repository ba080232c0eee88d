"""A refitted patch tokenizer put under a trained world model (not in REM)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from rem_env import REMModel
from rem_env.config import REMConfig, TokenizerConfig, WorldModelConfig
from rem_env.manifest import ProtocolManifest, TrainingBudget
from rem_train.swap_tokenizer import SwapError, main, parents, swap_tokenizer

V = 64  # more codes than a patch's 48 pixels: the pixels-to-embedding map is a least squares fit
TOKENIZER = TokenizerConfig(
    image_size=16, num_downsamples=2, vocab_size=V, embed_dim=48, kind="patch"
)
WORLD_MODEL = WorldModelConfig(
    embed_dim=32,
    num_layers=2,
    num_heads=2,
    ffn_dim=64,
    max_blocks=6,
    shared_embeddings=False,
    frame_conv_layers=2,
    frame_conv_width=16,
    frame_conv_events=True,
    frame_conv_copy=True,
    frame_conv_frames=3,
    event_window_frames=4,
    event_window_width=8,
)


def _model(patches: torch.Tensor, seed: int) -> REMModel:
    """A float64 model on ``patches`` (N, 3, 4, 4) whose every weight is random (no zeros)."""
    tok = dataclasses.replace(TOKENIZER, vocab_size=len(patches))
    torch.manual_seed(seed)
    model = REMModel(REMConfig(4, tok, WORLD_MODEL, game="Breakout")).double()
    with torch.no_grad():
        for param in model.world_model.parameters():
            param.normal_(0.0, 0.3)
    model.tokenizer.set_patches(patches.double())
    return model.eval()


def _forward(model: REMModel, tokens: torch.Tensor, actions: torch.Tensor):
    with torch.no_grad():
        return model.forward_segments(tokens, actions)


def test_the_same_codes_in_another_order_give_the_same_logits_in_that_order() -> None:
    torch.manual_seed(1)
    patches = torch.rand(V, 3, 4, 4)
    old = _model(patches, seed=2)
    order = torch.randperm(V)  # new code j is old code order[j]
    swapped = swap_tokenizer(old, _model(patches[order], seed=3))
    assert torch.equal(parents(swapped.tokenizer.codebook, old.tokenizer.codebook), order)

    tokens = torch.randint(0, V, (2, 5, 16))
    actions = torch.randint(0, 4, (2, 5))
    was = _forward(old, tokens, actions)
    now = _forward(swapped, torch.argsort(order)[tokens], actions)
    torch.testing.assert_close(now.obs_logits, was.obs_logits[..., order], rtol=0, atol=1e-10)
    torch.testing.assert_close(now.reward_logits, was.reward_logits, rtol=0, atol=1e-10)
    torch.testing.assert_close(now.end_logits, was.end_logits, rtol=0, atol=1e-10)


def test_a_new_code_shares_its_parents_probability_and_starts_where_its_pixels_put_it() -> None:
    torch.manual_seed(4)
    patches = torch.rand(V, 3, 4, 4)
    old = _model(patches, seed=5)
    pixels = old.tokenizer.codebook.detach()  # (V, 48)
    mapping = torch.randn(48, WORLD_MODEL.embed_dim, dtype=torch.float64)
    with torch.no_grad():  # embeddings linear in the pixels: the child's is then exact
        old.world_model.embedding.weight[:V] = pixels @ mapping
    child = patches[7].clone()
    child[0, 0, 0] += 0.05  # nearer code 7 than any other code
    swapped = swap_tokenizer(old, _model(torch.cat([patches, child[None]]), seed=6))
    assert parents(swapped.tokenizer.codebook, pixels)[V].item() == 7
    embedding = swapped.world_model.embedding.weight.detach()
    torch.testing.assert_close(embedding[V], swapped.tokenizer.codebook[V] @ mapping)
    torch.testing.assert_close(embedding[:V], old.world_model.embedding.weight[:V])
    torch.testing.assert_close(  # the actions' rows follow the codes
        embedding[V + 1 :], old.world_model.embedding.weight[V:], rtol=0, atol=0
    )

    others = torch.tensor([c for c in range(V) if c != 7])  # frames without the family
    tokens = others[torch.randint(0, V - 1, (2, 5, 16))]
    actions = torch.randint(0, 4, (2, 5))
    was = _forward(old, tokens, actions).obs_logits.log_softmax(-1)
    now = _forward(swapped, tokens, actions).obs_logits.log_softmax(-1)
    torch.testing.assert_close(now[..., others], was[..., others])
    family = now[..., [7, V]].logsumexp(-1)
    torch.testing.assert_close(family, was[..., 7])
    torch.testing.assert_close(now[..., 7], now[..., V])


def test_another_grid_or_a_vq_vae_is_a_clear_error() -> None:
    patches = torch.rand(V, 3, 4, 4)
    old = _model(patches, seed=0)
    moved = REMModel(
        REMConfig(4, dataclasses.replace(TOKENIZER, row_offset=1), WORLD_MODEL, game="Breakout")
    )
    with pytest.raises(SwapError, match=r"grids differ .*row_offset 0 vs 1"):
        swap_tokenizer(old, moved)
    vq = REMModel(REMConfig(4, TokenizerConfig(), WorldModelConfig(), game="Breakout"))
    with pytest.raises(SwapError, match="only patch tokenizers"):
        swap_tokenizer(old, vq)


def test_the_command_writes_a_model_folder_with_its_lineage(tmp_path: Path, capsys) -> None:
    patches = torch.rand(V, 3, 4, 4)
    manifest = ProtocolManifest(game="Breakout", training=TrainingBudget(env_steps=123_456))
    _model(patches, seed=0).float().save_pretrained(tmp_path / "old", manifest=manifest)
    # the last old code left out, 9 new ones beside code 0
    more = torch.cat([patches[:-1], patches[0] + 0.01 * torch.rand(9, 3, 4, 4)])
    _model(more, seed=1).float().save_pretrained(tmp_path / "fit")
    fit_record = {"lineage": [], "command": "python -m rem_train.fit_patch_tokenizer --out fit"}
    (tmp_path / "fit" / "training.json").write_text(json.dumps(fit_record))
    argv = ["--model", str(tmp_path / "old"), "--tokenizer", str(tmp_path / "fit")]
    assert main([*argv, "--out", str(tmp_path / "new")]) == 0
    said = capsys.readouterr().out
    assert (
        f"{V + 8} codes from {V}; 1 old codes have more than one child (at most 10), 1 none" in said
    )
    new = REMModel.from_pretrained(tmp_path / "new")
    assert new.config.tokenizer.vocab_size == V + 8
    assert torch.equal(
        new.tokenizer.codebook, REMModel.from_pretrained(tmp_path / "fit").tokenizer.codebook
    )
    assert new.manifest == manifest  # the old model's game and budget, not a new default
    record = json.loads((tmp_path / "new" / "training.json").read_text())
    assert record["command"].startswith("python -m rem_train.swap_tokenizer --model")
    assert [step["command"] for step in record["lineage"]] == [fit_record["command"]]
    moved = dataclasses.replace(TOKENIZER, row_offset=2)
    REMModel(REMConfig(4, moved, WORLD_MODEL, game="Breakout")).save_pretrained(tmp_path / "moved")
    with pytest.raises(SystemExit) as exit_info:
        main([*argv[:2], "--tokenizer", str(tmp_path / "moved"), "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 2
    assert "grids differ" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
