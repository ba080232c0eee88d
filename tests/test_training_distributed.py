"""DDP on CPU: 2 gloo ranks train the world model like one process on the same global batch."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from torch import nn

from rem_env import REMModel
from training.config import TrainConfig
from training.distributed import (
    DistContext,
    cleanup,
    init_from_env,
    init_process_group,
    rank_slice,
    wrap,
)
from training.losses import world_model_loss
from training.optim import clipped_step, weight_decay_groups

GLOBAL_BATCH, BLOCKS, STEPS, WORLD_SIZE = 4, 4, 3, 2


class Segments(NamedTuple):
    tokens: torch.Tensor  # (B, T, K)
    actions: torch.Tensor  # (B, T)
    rewards: torch.Tensor  # (B, T)
    ends: torch.Tensor  # (B, T)
    mask: torch.Tensor  # (B, T)


def _model(seed: int) -> REMModel:
    """The smoke preset's REM model without dropout (so a step is deterministic)."""
    config = TrainConfig.from_preset("smoke", "Breakout").model_config()
    config = dataclasses.replace(
        config, world_model=dataclasses.replace(config.world_model, dropout=0.0)
    )
    torch.manual_seed(seed)
    return REMModel(config)


def _global_batches(model: REMModel) -> list[Segments]:
    """The same STEPS global batches in every process (all blocks real: equal label counts)."""
    g = torch.Generator().manual_seed(123)
    k = model.world_model.tokens_per_obs
    vocab, actions = model.config.tokenizer.vocab_size, model.num_actions
    shape = (GLOBAL_BATCH, BLOCKS)
    return [
        Segments(
            torch.randint(vocab, (*shape, k), generator=g),
            torch.randint(actions, shape, generator=g),
            torch.randint(-1, 2, shape, generator=g).float(),
            torch.rand(shape, generator=g) < 0.2,
            torch.ones(shape, dtype=torch.bool),
        )
        for _ in range(STEPS)
    ]


def _train(model: REMModel, module: nn.Module, rows: slice) -> dict[str, torch.Tensor]:
    """STEPS AdamW steps of the world-model loss on ``rows`` of each global batch."""
    wm = model.world_model.train()
    optimizer = torch.optim.AdamW(weight_decay_groups(wm, 0.05), lr=1e-3)
    codebook = model.tokenizer.codebook.detach()
    context = model.config.world_model.context_length
    for b in _global_batches(model):
        output = module(b.tokens[rows], b.actions[rows], codebook)
        loss, _ = world_model_loss(
            output, b.tokens[rows], b.rewards[rows], b.ends[rows], b.mask[rows], context
        )
        clipped_step(loss, optimizer, wm, 100.0)
    return {k: v.detach().clone().contiguous() for k, v in wm.state_dict().items()}


def _rank(rank: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    ctx = init_process_group(DistContext(rank, WORLD_SIZE), "gloo", f"file://{init_file}")
    try:
        model = _model(seed=0)
        with torch.no_grad():  # a different world model on rank 1: DDP starts all from rank 0's
            for param in model.world_model.parameters():
                param.add_(float(rank))
        params = _train(model, wrap(model.world_model, ctx), rank_slice(GLOBAL_BATCH, ctx))
        save_file(params, str(Path(out) / f"rank{rank}.safetensors"))
    finally:
        cleanup()


def test_two_gloo_ranks_match_one_process(tmp_path: Path) -> None:
    mp.spawn(_rank, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(WORLD_SIZE)]
    single_model = _model(seed=0)
    initial = {k: v.clone() for k, v in single_model.world_model.state_dict().items()}
    single = _train(single_model, single_model.world_model, slice(None))
    assert set(ranks[0]) == set(single)
    moved = 0
    for name, value in single.items():
        assert torch.equal(ranks[0][name], ranks[1][name]), name  # identical across ranks
        # Same global batch: equal up to float summation order (mean of 2 half-batch means).
        torch.testing.assert_close(ranks[0][name], value, rtol=1e-5, atol=1e-6, msg=name)
        moved += int(not torch.equal(value, initial[name]))
    assert moved > len(single) // 2  # the steps did train


def test_rank_slice_splits_evenly() -> None:
    parts = [rank_slice(6, DistContext(r, 3)) for r in range(3)]
    assert [list(range(6))[s] for s in parts] == [[0, 1], [2, 3], [4, 5]]
    assert rank_slice(5, DistContext()) == slice(0, 5)
    with pytest.raises(ValueError, match="multiple of the number of ranks"):
        rank_slice(5, DistContext(0, 2))


def test_context_checks_and_single_process_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="rank"):
        DistContext(rank=2, world_size=2)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    ctx = init_from_env()
    assert ctx == DistContext() and ctx.is_main and not ctx.is_distributed
    module = nn.Linear(2, 2)
    assert wrap(module, ctx) is module
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        init_from_env()
