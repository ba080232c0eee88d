"""Checkpoint round trips (weights, optimizer, RNG); a failed write keeps the old checkpoint."""

from __future__ import annotations

import errno
import io
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import rem_train.checkpoint as checkpoint_module
from rem_train.checkpoint import load_checkpoint, restore_rng, save_checkpoint, seed_everything
from rem_train.run_log import RunLog, read_metrics


def _trained(seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        net(torch.randn(5, 3)).pow(2).sum().backward()
        opt.step()
    return net, opt


def test_round_trip_restores_weights_optimizer_and_rng(tmp_path: Path) -> None:
    net, opt = _trained(0)
    rng = seed_everything(7)
    rng.integers(10, size=3)
    save_checkpoint(tmp_path, 3, {"net": net}, {"net": opt}, rng, {"wall_time": 1.5}, True)
    expected = (torch.rand(3), np.random.rand(), random.random(), rng.random())

    seed_everything(99)
    other, other_opt = _trained(1)
    loaded = load_checkpoint(tmp_path)
    assert loaded.epoch == 3 and loaded.extra == {"wall_time": 1.5}
    other.load_state_dict(loaded.modules["net"])
    other_opt.load_state_dict(loaded.optimizers["net"])
    fresh = np.random.default_rng()
    restore_rng(loaded.rng["state"], loaded.rng["tensors"], fresh)
    assert torch.equal(torch.rand(3), expected[0])
    assert (np.random.rand(), random.random(), fresh.random()) == expected[1:]
    for a, b in zip(net.parameters(), other.parameters(), strict=True):
        assert torch.equal(a, b)
    # The optimizers continue identically.
    for o, n in ((opt, net), (other_opt, other)):
        o.zero_grad()
        n(torch.ones(2, 3)).sum().backward()
        o.step()
    for a, b in zip(net.parameters(), other.parameters(), strict=True):
        assert torch.equal(a, b)
    assert (tmp_path / "epoch_0003.safetensors").is_file()


def test_failed_write_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    net, opt = _trained(0)
    rng = seed_everything(1)
    save_checkpoint(tmp_path, 1, {"net": net}, {"net": opt}, rng, {})

    def full_disk(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module, "save_file", full_disk)
    with pytest.raises(OSError, match="previous checkpoint is intact"):
        save_checkpoint(tmp_path, 2, {"net": net}, {"net": opt}, rng, {})
    assert load_checkpoint(tmp_path).epoch == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.safetensors"]


def test_metrics_log_drops_a_torn_line(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2, "tor')  # killed mid-write
    log = RunLog(tmp_path, tensorboard=False, stream=io.StringIO())
    log.epoch({"epoch": 2, "env_steps": 10, "timings": {"collect": 0.5}}, epochs=3)
    assert [r["epoch"] for r in read_metrics(tmp_path)] == [1, 2]
    assert "epoch 2/3 | env steps 10" in log.stream.getvalue()
