"""The patch tokenizer (not in REM): its tokens, its k-means fit, the models and runs on it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rem_env import REMModel
from rem_env.atari import make_atari_env
from rem_env.config import REMConfig, TokenizerConfig, WorldModelConfig
from rem_env.fidelity import to_pixels
from rem_env.models import PatchTokenizer, Tokenizer, build_tokenizer
from rem_train.config import NEVER, TrainConfig
from rem_train.fit_patch_tokenizer import FitConfig, fit, fit_patches, frame_patches
from rem_train.pretrain_tokenizer import FrameSet, PretrainConfig, pretrain
from rem_train.trainer import Trainer

TINY = TokenizerConfig(image_size=16, num_downsamples=2, vocab_size=16, embed_dim=48, kind="patch")


def _exact(frame: torch.Tensor) -> PatchTokenizer:
    """A tokenizer whose 16 codes are the 16 patches of a (3, 16, 16) frame, in raster order."""
    tok = PatchTokenizer(TINY)
    patches = F.unfold(frame[None], kernel_size=4, stride=4)[0].t()  # (16, 48)
    tok.set_patches(patches.reshape(16, 3, 4, 4))
    return tok


def test_a_frame_of_the_codebook_patches_comes_back_exactly() -> None:
    frame = torch.rand(3, 16, 16)
    tok = _exact(frame)
    out = tok.encode(frame[None])
    assert out.tokens.tolist() == [list(range(16))]
    assert torch.allclose(tok.decode_tokens(out.tokens)[0], frame, atol=1e-6)
    assert torch.equal(out.codes, out.z_quantized)


def test_a_token_changes_only_where_its_own_pixels_do() -> None:
    frame = torch.zeros(3, 16, 16)
    frame[:, 5, 6] = 1.0  # a dot in patch (1, 1)
    moved = torch.zeros(3, 16, 16)
    moved[:, 5, 9] = 1.0  # the dot in patch (1, 2)
    tok = PatchTokenizer(TINY)
    dots = torch.zeros(16, 3, 4, 4)
    dots[1, :, 1, 2] = 1.0  # patch (1, 1)'s dot
    dots[2, :, 1, 1] = 1.0  # patch (1, 2)'s dot
    tok.set_patches(dots)
    before, after = tok.encode(torch.stack([frame, moved])).tokens
    changed = (before != after).nonzero().flatten().tolist()
    assert changed == [5, 6]  # raster indices of patches (1, 1) and (1, 2)
    assert before[5] == 1 and after[6] == 2 and before[0] == 0


def test_the_config_checks_the_patch_size_and_the_kind() -> None:
    with pytest.raises(
        ValueError, match="embed_dim must be in_channels \\* patch_size\\*\\*2 = 48"
    ):
        TokenizerConfig(image_size=16, num_downsamples=2, embed_dim=32, kind="patch")
    with pytest.raises(ValueError, match="kind"):
        TokenizerConfig(kind="pixels")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="kind 'patch'"):
        PatchTokenizer(TokenizerConfig())
    with pytest.raises(ValueError, match="kind is 'patch'"):
        Tokenizer(TINY)
    assert isinstance(build_tokenizer(TINY), PatchTokenizer)
    assert isinstance(build_tokenizer(TokenizerConfig()), Tokenizer)
    with pytest.raises(ValueError, match="shape \\(16, 3, 4, 4\\)"):
        PatchTokenizer(TINY).set_patches(torch.zeros(16, 48))


def test_a_model_on_patches_saves_loads_and_dreams(tmp_path: Path) -> None:
    world_model = WorldModelConfig(
        embed_dim=32, num_layers=2, num_heads=2, ffn_dim=64, max_blocks=6, shared_embeddings=False
    )
    torch.manual_seed(0)
    model = REMModel(REMConfig(4, TINY, world_model, game="Breakout")).eval()
    model.save_pretrained(tmp_path / "m")
    loaded = REMModel.from_pretrained(tmp_path / "m").eval()
    assert loaded.config.tokenizer.kind == "patch"
    assert isinstance(loaded.tokenizer, PatchTokenizer)
    assert torch.equal(loaded.tokenizer.codebook, model.tokenizer.codebook)
    with torch.inference_mode():
        state = loaded.start_state(loaded.start_tokens[:2], loaded.start_actions[:2])
        step, _ = loaded.imagine_step(state, torch.tensor([0, 3]))
        frames = loaded.decode(step.obs_tokens)
    assert frames.shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="shared_embeddings needs"):
        REMConfig(4, TINY, dataclasses.replace(world_model, shared_embeddings=True))
    card = (tmp_path / "m" / "README.md").read_text()
    assert "a tokenizer of fixed 4x4 patches fitted by k-means (not in REM)" in card


def test_k_means_gives_every_distinct_patch_a_code_when_there_is_room() -> None:
    distinct = np.array([[0, 0], [10, 200], [255, 255]], dtype=np.uint8)
    centres = fit_patches(distinct, np.array([50, 1, 9]), 4, 3, count_power=1.0, seed=0)
    assert centres.shape == (4, 2)
    assert {tuple(row) for row in (centres * 255).round().astype(int)} == {
        (0, 0), (10, 200), (255, 255)
    }  # fmt: skip


def test_rare_patches_weigh_more_below_count_power_one() -> None:
    # 4 codes for a crowd of 60 background shades and one rare, bright patch (the ball): weighed
    # by count, the codes go to the crowd; weighed by count**0, the rare patch gets its own
    rng = np.random.default_rng(0)
    crowd = np.stack([np.arange(60), rng.integers(0, 60, 60)], axis=1).astype(np.uint8)
    distinct = np.concatenate([crowd, [[250, 250]]]).astype(np.uint8)
    counts = np.array([10_000] * 60 + [1])
    for power, kept in ((1.0, False), (0.0, True)):
        centres = fit_patches(distinct, counts, 4, 20, count_power=power, seed=0) * 255
        assert (np.abs(centres - 250).max(axis=1) < 1).any() == kept, power


def test_frame_patches_cut_as_the_tokenizer_does() -> None:
    frames = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    patches = frame_patches(frames, 4)  # (2 * 16, 48)
    tensor = torch.from_numpy(frames).permute(0, 3, 1, 2).double()  # (2, 3, 16, 16)
    unfolded = F.unfold(tensor, kernel_size=4, stride=4).transpose(1, 2).reshape(-1, 48)
    assert np.array_equal(patches, unfolded.numpy().astype(np.uint8))


def test_a_fit_on_real_frames_exports_a_model_rem_train_starts_from(tmp_path: Path) -> None:
    config = FitConfig(frames=300, held_out=64, iterations=2)
    export = fit(config, tmp_path / "fit", command="test")
    model = REMModel.from_pretrained(export)
    assert model.config.tokenizer.kind == "patch" and model.config.tokenizer.vocab_size == 512
    for head in (model.world_model.head_obs, model.world_model.head_reward):
        assert not head[-1].weight.any() and not head[-1].bias.any()  # logits 0: no noise
    # the codes' embeddings start as the principal components of their pixels: uncorrelated
    rows = model.world_model.embedding.weight[:512].detach().double()  # (V, 128)
    gram = rows.t() @ rows
    assert (gram - torch.diag(gram.diagonal())).abs().max() < 1e-4 * gram.diagonal().max()
    assert abs(float(rows.std()) - 1.0) < 0.01
    report = json.loads((tmp_path / "fit" / "fit.json").read_text())
    held = report["held_out"]
    assert held["psnr"] > 20 and held["codes_used"] > 1 and "ball_recall" in held
    assert report["distinct_patches"] > 64
    # its dreams start from real openings of the game, not from random tokens (a mosaic)
    opening = make_atari_env("Breakout", train=True, seed=0).reset(seed=0)[0].astype(float)
    starts = to_pixels(model.decode(model.start_tokens[:, -1])).astype(float)  # (8, 64, 64, 3)
    psnr = 10 * np.log10(255.0**2 / ((starts - opening) ** 2).mean(axis=(1, 2, 3)))
    assert psnr.min() > 20, psnr
    training = json.loads((export / "training.json").read_text())
    assert training["env_steps"] == 364 and training["preset"] == "patch tokenizer fit"
    with pytest.raises(ValueError, match="holds 364 frames"):
        fit(dataclasses.replace(config, frames=301), tmp_path / "fit")

    # rem-train's patch model starts from it; its tokenizer is fitted, never trained
    run = dataclasses.replace(TrainConfig.from_preset("breakout", "Breakout"), model="patch")
    assert "fit_patch_tokenizer" in (run.untrained_tokenizer_problem() or "")
    with pytest.raises(ValueError, match="fitted by k-means, not trained"):
        dataclasses.replace(run, tokenizer=dataclasses.replace(run.tokenizer, start_after_epoch=0))
    run = dataclasses.replace(
        run,
        common=dataclasses.replace(
            run.common, init_from=str(export), init_parts="tokenizer", epochs=1
        ),
        world_model=dataclasses.replace(run.world_model, start_after_epoch=NEVER),
        actor_critic=dataclasses.replace(run.actor_critic, start_after_epoch=NEVER),
    )
    trainer = Trainer(run, tmp_path / "run")
    try:
        assert isinstance(trainer.model.tokenizer, PatchTokenizer)
        assert torch.equal(trainer.model.tokenizer.codebook, model.tokenizer.codebook)
    finally:
        trainer.close()
    with pytest.raises(ValueError, match="fitted, not trained"):
        pretrain(PretrainConfig(frames=8, held_out=4, steps=1), tmp_path / "pre", str(export))


TINY_MOVED = dataclasses.replace(TINY, row_offset=1)


def test_a_grid_above_the_frame_reads_the_frame_moved_down() -> None:
    """With row_offset 1 the tokens are those of the frame moved down a row (black on top);
    decoding moves the patches back up, so a frame whose bottom row is black comes back."""
    frame = torch.rand(3, 16, 16)
    frame[:, -1] = 0.0  # the row the grid drops
    moved = torch.cat([torch.zeros(3, 1, 16), frame[:, :-1]], dim=1)  # (3, 16, 16)
    plain = _exact(moved)
    tok = PatchTokenizer(TINY_MOVED)
    tok.load_state_dict(plain.state_dict())
    out = tok.encode(frame[None])
    assert out.tokens.tolist() == [list(range(16))]
    assert torch.allclose(tok.decode_tokens(out.tokens)[0], frame, atol=1e-6)
    assert torch.allclose(plain.decode_tokens(out.tokens)[0], moved, atol=1e-6)


def test_the_row_offset_is_a_patch_grids_and_below_a_patch() -> None:
    with pytest.raises(ValueError, match="'row_offset': must lie in \\[0, patch_size = 4\\)"):
        dataclasses.replace(TINY, row_offset=4)
    with pytest.raises(ValueError, match="only a patch tokenizer's grid"):
        TokenizerConfig(row_offset=1)
    with pytest.raises(ValueError, match="row_offset must lie in \\[0, 8\\)"):
        FitConfig(row_offset=8)


def test_frame_patches_with_a_row_offset_cut_the_moved_frames() -> None:
    frames = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    frames[:, -2:] = 0
    moved = np.concatenate([np.zeros((2, 2, 16, 3), np.uint8), frames[:, :-2]], axis=1)
    assert np.array_equal(frame_patches(frames, 4, 2), frame_patches(moved, 4))
    frames[1, -1, 5, 0] = 1  # a lit pixel in the rows such a grid drops
    with pytest.raises(ValueError, match="not black in 1 of 2 frames"):
        frame_patches(frames, 4, 2)


def test_a_fit_with_a_row_offset_exports_a_model_of_that_grid(tmp_path: Path) -> None:
    config = FitConfig(frames=200, held_out=32, iterations=2, row_offset=3)
    model = REMModel.from_pretrained(fit(config, tmp_path / "fit", command="test"))
    assert model.config.tokenizer.row_offset == 3
    frames = torch.from_numpy(FrameSet.load(tmp_path / "fit" / "frames.npz").frames[:8])
    frames = frames.permute(0, 3, 1, 2).float() / 255.0  # (8, 3, 64, 64)
    rebuilt = model.decode(model.encode(frames))
    assert (rebuilt - frames).abs().mean() < 0.02  # the grid's codes, moved back in place
    run = dataclasses.replace(
        TrainConfig.from_preset("breakout", "Breakout"), model="patch", patch_row_offset=3
    )
    assert run.model_config().tokenizer == model.config.tokenizer
    model.save_pretrained(tmp_path / "m")
    card = (tmp_path / "m" / "README.md").read_text()
    assert "fitted by k-means on a grid 3 rows above the frame (not in REM)" in card
    with pytest.raises(ValueError, match="patch_row_offset moves a patch tokenizer's grid"):
        dataclasses.replace(run, model="cpu")
