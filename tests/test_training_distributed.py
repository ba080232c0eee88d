"""2 gloo ranks on CPU: DDP trains the world model like one process on the same global batch;
the collective helpers the trainer uses (gradient averaging, rank-0-only work, sync checks)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import torch
from ranks import run_ranks
from safetensors.torch import load_file, save_file
from torch import nn

from rem_env import REMModel
from rem_train.config import TrainConfig
from rem_train.distributed import (
    DistContext,
    any_rank,
    average_gradients,
    average_metrics,
    backend_for,
    broadcast_modules,
    check_in_sync,
    cleanup,
    global_share,
    init_from_env,
    init_process_group,
    rank_device,
    rank_seed,
    rank_slice,
    run_on_main,
    share_from_main,
    wrap,
)
from rem_train.losses import world_model_loss
from rem_train.optim import clipped_step, weight_decay_groups
from rem_train.trainer import Trainer

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


def _raised(fn: Any) -> str | None:
    """``"Type: message"`` of what ``fn()`` raised, else None."""
    try:
        fn()
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    return None


def _collectives(ctx: DistContext) -> dict[str, Any]:
    """What the trainer's collective helpers give on this rank."""
    r = ctx.rank
    both, one, none = (nn.Parameter(torch.zeros(2)) for _ in range(3))
    both.grad = torch.full((2,), float(r + 1))
    one.grad = torch.full((2,), 4.0) if r == 1 else None
    average_gradients([both, one, none], ctx)
    module = nn.Linear(2, 1)
    with torch.no_grad():
        module.weight.fill_(float(r))
    broadcast_modules([module], ctx)
    in_sync = _raised(lambda: check_in_sync(module, "linear", ctx))
    with torch.no_grad():
        module.bias.add_(float(r))
    return {
        "grads": [both.grad.tolist(), one.grad.tolist(), none.grad],
        "broadcast": module.weight.tolist(),
        "in_sync": in_sync,
        "out_of_sync": _raised(lambda: check_in_sync(module, "linear", ctx)),
        "share": global_share([1, 3][r], ctx),
        "metrics": average_metrics({"x": [1.0, 3.0][r]}, ctx, 0.5),
        "any": [any_rank(r == 1, ctx), any_rank(False, ctx)],
        "from_main": share_from_main(f"rank {r}", ctx),
        "result": run_on_main(lambda: 7, ctx),
        "user_error": _raised(lambda: run_on_main(_fail(ValueError("bad folder")), ctx)),
        "crash": _raised(lambda: run_on_main(_fail(ZeroDivisionError("boom")), ctx)),
    }


def _fail(error: Exception) -> Any:
    def fn() -> None:
        raise error

    return fn


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
        (Path(out) / f"rank{rank}.json").write_text(json.dumps(_collectives(ctx)))
    finally:
        cleanup()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder where 2 spawned gloo ranks left their results."""
    out = tmp_path_factory.mktemp("ranks")
    run_ranks(_rank, (str(out / "init"), str(out)), WORLD_SIZE)
    return out


def test_ranks_leave_the_group_cleanly_run_after_run(tmp_path: Path) -> None:
    """Regression: about one run in three aborted a rank (SIGABRT) after all its work was
    done, when leaving the gloo group (see rem_train.distributed.cleanup)."""
    for run in range(4):
        out = tmp_path / str(run)
        out.mkdir()
        run_ranks(_rank, (str(out / "init"), str(out)), WORLD_SIZE)


def test_collective_helpers(two_ranks: Path) -> None:
    ranks = [json.loads((two_ranks / f"rank{r}.json").read_text()) for r in range(WORLD_SIZE)]
    for r, got in enumerate(ranks):
        # Mean over ranks; a missing gradient counts as 0; none anywhere stays None.
        assert got["grads"] == [[1.5, 1.5], [2.0, 2.0], None]
        assert got["broadcast"] == [[0.0, 0.0]] and got["in_sync"] is None
        assert got["out_of_sync"].startswith("RuntimeError: the linear parameters differ")
        assert got["share"] == [0.25, 0.75][r]
        assert got["metrics"] == {"x": 2.0} and got["any"] == [True, False]
        assert got["from_main"] == "rank 0"
        assert got["result"] == [7, None][r]
        assert got["user_error"] == "ValueError: bad folder"  # the same user error everywhere
    assert ranks[0]["crash"] == "ZeroDivisionError: boom"
    assert ranks[1]["crash"] == "RuntimeError: rank 0 failed with ZeroDivisionError: boom"


def test_two_gloo_ranks_match_one_process(two_ranks: Path) -> None:
    tmp_path = two_ranks
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


def test_rank_devices_seeds_and_batch_checks(tmp_path: Path) -> None:
    two = DistContext(rank=1, world_size=2, local_rank=1)
    assert rank_device("cuda", two) == torch.device("cuda", 1)
    assert rank_device("cpu", two) == torch.device("cpu")
    assert rank_device("cuda:3", DistContext()) == torch.device("cuda", 3)
    with pytest.raises(ValueError, match="give --device cuda"):
        rank_device("cuda:0", two)
    assert (backend_for("cuda:1"), backend_for("cpu")) == ("nccl", "gloo")
    seeds = {rank_seed(1, rank, epoch) for rank in range(1, 4) for epoch in range(1, 4)}
    assert len(seeds) == 9  # a stream per rank and epoch
    config = TrainConfig.from_preset("smoke", "Breakout")  # batches 16, 8, 8
    with pytest.raises(ValueError, match=r"--tokenizer\.batch-size 16 .* multiple of 3"):
        Trainer(config, tmp_path / "run", dist_ctx=DistContext(rank=0, world_size=3))
    assert not (tmp_path / "run").exists()  # refused before touching anything
