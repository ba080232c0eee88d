"""SIGKILL a training process mid-epoch, resume it: no transition lost, epochs and RNG continue."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from training.checkpoint import load_checkpoint, restore_rng, rng_fingerprint, seed_everything
from training.replay import ReplayBuffer, _record_dtype
from training.run_log import read_metrics

ROOT = Path(__file__).resolve().parents[1]
STEPS_PER_EPOCH = 60  # the smoke preset's
EPOCHS = 5


def _train(out: Path, *args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, "-m", "training", *args, "--common.progress-bars", "false"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _stored_steps(out: Path) -> int:
    """Complete records in the replay file, read without opening (and locking) the buffer."""
    path = out / "replay" / "transitions.bin"
    size = path.stat().st_size if path.exists() else 0
    return size // _record_dtype((64, 64, 3)).itemsize


def test_sigkill_mid_epoch_then_resume(tmp_path: Path) -> None:
    out = tmp_path / "run"
    process = _train(out, "--game", "Breakout", "--preset", "smoke", "--out", str(out))
    deadline = time.monotonic() + 120
    # Wait until two epochs are complete and the third has started collecting.
    while time.monotonic() < deadline and process.poll() is None:
        if len(read_metrics(out)) >= 2 and _stored_steps(out) >= 2 * STEPS_PER_EPOCH + 5:
            break
        time.sleep(0.005)
    assert process.poll() is None, f"the run ended before it was killed:\n{process.stdout.read()}"
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    steps_at_kill = _stored_steps(out)
    epochs_before = [r["epoch"] for r in read_metrics(out)]
    assert epochs_before == list(range(1, len(epochs_before) + 1)) and len(epochs_before) >= 2
    assert steps_at_kill > len(epochs_before) * STEPS_PER_EPOCH or len(epochs_before) > 2

    checkpoint = load_checkpoint(out / "checkpoints")
    rng = np.random.default_rng()
    restore_rng(checkpoint.rng["state"], checkpoint.rng["tensors"], rng)
    checkpointed = rng_fingerprint(rng)
    fresh = rng_fingerprint(seed_everything(1))
    assert checkpointed != fresh

    resumed = _train(out, "--resume", str(out), "--export", str(tmp_path / "model"))
    log, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, log
    assert f"loaded the checkpoint of epoch {checkpoint.epoch}" in log

    with ReplayBuffer(out / "replay", fsync=False) as replay:
        assert replay.num_steps >= steps_at_kill  # nothing completed was lost
        assert replay.num_steps == EPOCHS * STEPS_PER_EPOCH  # nor collected twice
    records = read_metrics(out)
    epochs = [r["epoch"] for r in records]
    assert sorted(set(epochs)) == list(range(1, EPOCHS + 1))
    # Only the interrupted epoch may appear twice (killed after its record, before its checkpoint).
    assert len(epochs) - len(set(epochs)) <= 1
    first_resumed = records[len(epochs_before)]
    assert first_resumed["epoch"] == checkpoint.epoch + 1
    assert first_resumed["rng_at_start"] == checkpointed  # the RNG went on, not restarted
    assert (out / "export" / "model.safetensors").is_file()
    assert (tmp_path / "model" / "actor_critic.safetensors").is_file()  # --export FOLDER


def test_sigterm_stops_at_a_step_boundary(tmp_path: Path) -> None:
    out = tmp_path / "run"
    process = _train(out, "--preset", "smoke", "--out", str(out))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None and not read_metrics(out):
        time.sleep(0.01)
    assert process.poll() is None
    process.send_signal(signal.SIGTERM)
    log, _ = process.communicate(timeout=60)
    assert process.returncode == 143, log
    assert "stopped by SIGTERM" in log and f"--resume {out}" in log
    with ReplayBuffer(out / "replay", fsync=False) as replay:  # closed cleanly, consistent
        assert replay.num_steps >= STEPS_PER_EPOCH
