"""rem-train over 2 gloo ranks: the whole cycle under torchrun, resume across rank counts, and one
step of each phase equal to one process's step on the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hang_guard import HANG_GUARD_S
from ranks import run_ranks
from safetensors.torch import load_file, save_file
from torch import nn

from rem_train.checkpoint import prepare_run_dir
from rem_train.cli import build_config, main, parser
from rem_train.config import TrainConfig
from rem_train.distributed import DistContext, cleanup, init_process_group
from rem_train.replay import ReplayBuffer
from rem_train.run_log import read_metrics
from rem_train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("tokenizer", "world_model", "actor_critic")
SHORT = [
    "--game", "Breakout", "--preset", "smoke", "--epochs", "4",
    "--common.env-steps-per-epoch", "40", "--common.eval-start-epoch", "2",
    "--common.progress-bars", "false",
    *(f"--{p.replace('_', '-')}.start-after-epoch=0" for p in PHASES),
    *(f"--{p.replace('_', '-')}.steps-per-epoch=2" for p in PHASES),
]  # fmt: skip
"""The smoke preset, shortened: 4 epochs of 40 env steps, every phase from epoch 1 on, 2 steps each,
evaluations after epochs 2 and 4."""


def _torchrun(probe: Path, stop_after: int, *args: str) -> tuple[list[dict[str, Any]], str]:
    """rem-train ``args`` on 2 gloo ranks under torchrun; each rank's probe record, the output."""
    probe.mkdir()
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "--tee=3", str(ROOT / "tests" / "ddp_probe.py"), str(probe), str(stop_after), *args,
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S
    )
    output = done.stdout + done.stderr
    assert all((probe / f"rank{r}.json").is_file() for r in range(2)), output
    return [json.loads((probe / f"rank{r}.json").read_text()) for r in range(2)], output


def test_two_ranks_train_then_one_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Epoch 1 on one process, epochs 2-3 on two ranks (stopped by a SIGTERM that only rank 0
    sees), epoch 4 on one process again: every phase runs, ranks agree bit for bit after each
    phase, and only rank 0 writes."""
    run = tmp_path / "run"
    config = build_config(vars(parser().parse_args([*SHORT, "--out", str(run)])))
    first = Trainer(config, run)
    first.train_epoch(1)
    first.close()

    ranks, output = _torchrun(tmp_path / "probe", 3, "--resume", str(run))
    assert [r["rc"] for r in ranks] == [143, 143], output  # both stopped, resumable
    for name, epoch in [(p, e) for e in (2, 3) for p in PHASES]:
        digests = [
            [d for n, e, d in r["phases"] if (n, e) == (f"train_{name}", epoch)] for r in ranks
        ]
        assert len(digests[0]) == 1 and digests[0] == digests[1], (name, epoch)
    assert ranks[0]["phases"][-1][2] != ranks[0]["phases"][0][2]  # the phases trained
    assert (ranks[0]["saved"], ranks[1]["saved"]) == ([2, 3], [])
    assert (ranks[0]["logged"], ranks[1]["logged"]) == ([2, 3], [])
    assert "loaded the checkpoint of epoch 1" in output
    assert "[default1]:[rem-train]" not in output  # rank 1 prints no log line

    capsys.readouterr()
    assert main(["--resume", str(run), "--export", str(tmp_path / "model")]) == 0
    assert "loaded the checkpoint of epoch 3" in capsys.readouterr().out
    records = read_metrics(run)
    assert [(r["epoch"], r["ranks"]) for r in records] == [(1, 1), (2, 2), (3, 2), (4, 1)]
    for record in records:
        assert all(name in record for name in PHASES), record["epoch"]
    assert [r["epoch"] for r in records if "eval" in r] == [2, 4]
    with ReplayBuffer(run / "replay", fsync=False) as replay:  # topped up, nothing twice
        assert replay.num_steps == 4 * 40
    saved = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert saved == ["epoch_0002.safetensors", "epoch_0004.safetensors", "last.safetensors"]
    if (run / "tensorboard").is_dir():  # one events file per rank-0 process
        assert len(list((run / "tensorboard").iterdir())) == 3


# ------------------------------------------------------------------ one step of each phase


def _step_config() -> TrainConfig:
    args = [*SHORT, *(f"--{p.replace('_', '-')}.steps-per-epoch=1" for p in PHASES)]
    return build_config(vars(parser().parse_args(args)))


def _fill(run: Path) -> None:
    """Random frames in episodes of several lengths (short ones give padded segments)."""
    rng = np.random.default_rng(0)
    with ReplayBuffer(run / "replay", fsync=False) as replay:
        for length in (30, 5, 24, 7, 40, 12):
            for t in range(length):
                obs = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
                replay.append(
                    obs, int(rng.integers(4)), float(rng.integers(-1, 2)), t == length - 1
                )


def _one_step_each(trainer: Trainer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """One step of each phase from the same initial weights: the gradients it took (averaged and
    clipped, ``grad.*``), the parameters after it, and the phase's logged metrics.

    Dropout is off (the only randomness that differs between ranks), and AdamW's ``eps`` is
    1e-4: its first step is ``lr * g / (|g| + eps)``, which for the default 1e-8 turns float
    noise in gradients that should be 0 (a conv bias before a norm) into steps of +-lr.
    """
    for module in trainer.model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    for optimizer in trainer.optimizers.values():
        for group in optimizer.param_groups:
            group["eps"] = 1e-4
    initial = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    modules = {
        "tokenizer": trainer.model.tokenizer,
        "world_model": trainer.model.world_model,
        "actor_critic": trainer.actor_critic,
    }
    tensors, metrics = {}, {}
    for name, module in modules.items():
        trainer.model.load_state_dict(initial)
        metrics[name] = getattr(trainer, f"train_{name}")(epoch=1)
        tensors.update({f"{name}.{k}": v.clone() for k, v in module.state_dict().items()})
        grads = {k: p.grad for k, p in module.named_parameters() if p.grad is not None}
        tensors.update({f"grad.{name}.{k}": g.clone() for k, g in grads.items()})
    return tensors, metrics


def _rank_steps(rank: int, run: str, init: str, out: str) -> None:
    torch.set_num_threads(1)
    ctx = init_process_group(DistContext(rank, 2), "gloo", f"file://{init}")
    try:
        trainer = Trainer(_step_config(), run, resume=True, dist_ctx=ctx)
        params, metrics = _one_step_each(trainer)
        trainer.close()
        save_file(params, f"{out}/rank{rank}.safetensors")
        Path(f"{out}/rank{rank}.json").write_text(json.dumps(metrics))
    finally:
        cleanup()


def test_one_step_of_each_phase_matches_one_process(tmp_path: Path) -> None:
    """2 ranks read halves of the global batch one process reads (imagining the same
    trajectories); the averaged gradients give the same step and the same logged losses."""
    run = tmp_path / "run"
    prepare_run_dir(run, _step_config(), resume=False)
    _fill(run)
    run_ranks(_rank_steps, (str(run), str(tmp_path / "init"), str(tmp_path)), 2)
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(2)]
    logged = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]

    single = Trainer(_step_config(), run, resume=True)
    initial = {k: v.clone() for k, v in single.model.state_dict().items()}
    initial.update(
        {f"actor_critic.{k}": v.clone() for k, v in single.actor_critic.state_dict().items()}
    )
    expected, metrics = _one_step_each(single)
    single.close()
    moved = {name: 0 for name in PHASES}
    assert set(expected) == set(ranks[0]) and len(expected) > 100
    for key, value in expected.items():
        assert torch.equal(ranks[0][key], ranks[1][key]), key  # bit-identical ranks
        # The same global batch: equal up to float summation order (a conv's gradient sums
        # 64x64 pixels of 16 frames, in another order for 2 x 8: ~1e-5 relative).
        rtol = 1e-4 if key.startswith("grad.") else 1e-5
        torch.testing.assert_close(ranks[0][key], value, rtol=rtol, atol=1e-6, msg=key)
        if not key.startswith("grad."):
            moved[key.split(".")[0]] += int(not torch.equal(value, initial[key]))
    assert all(count > 0 for count in moved.values()), moved
    assert logged[0] == logged[1]
    for name in PHASES:  # the logged losses are the global batch's
        for key, value in metrics[name].items():
            assert logged[0][name][key] == pytest.approx(value, rel=1e-5, abs=1e-6), (name, key)
