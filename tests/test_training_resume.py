"""SIGKILL a training process mid-epoch, resume it: no transition lost, epochs and RNG continue.

Also: Ctrl-C stops a run like SIGTERM, ``--resume RUN --epochs N`` extends a run, and a run
being trained cannot be resumed by a second process.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hang_guard import HANG_GUARD_S

from rem_train.checkpoint import load_checkpoint, restore_rng, rng_fingerprint, seed_everything
from rem_train.replay import ReplayBuffer, _record_dtype
from rem_train.run_log import read_metrics

ROOT = Path(__file__).resolve().parents[1]
STEPS_PER_EPOCH = 60  # the smoke preset's
EPOCHS = 4  # of the smoke preset's 5: every phase runs again after the resume (the actor-critic
# from epoch 4), and the last epoch evaluates and exports
FEW_STEPS = [
    f"--{phase}.steps-per-epoch=2" for phase in ("tokenizer", "world-model", "actor-critic")
]  # what is resumed is the schedule, the replay and the RNG, not how far each phase learns


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


def _wait_for(process: subprocess.Popen[str], ready: Callable[[], bool]) -> None:
    """Polls until ``ready()`` or the process ends, however slow the machine; fails as hung
    after :data:`HANG_GUARD_S` (the process is killed)."""
    deadline = time.monotonic() + HANG_GUARD_S
    while process.poll() is None and not ready():
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"hung: nothing happened in {HANG_GUARD_S} s")
        time.sleep(0.005)


def test_sigkill_mid_epoch_then_resume(tmp_path: Path) -> None:
    out = tmp_path / "run"
    process = _train(
        out, "--game", "Breakout", "--preset", "smoke", "--epochs", str(EPOCHS), "--out", str(out),
        *FEW_STEPS,
    )  # fmt: skip
    # Until two epochs are complete and the third has started collecting.
    _wait_for(
        process,
        lambda: len(read_metrics(out)) >= 2 and _stored_steps(out) >= 2 * STEPS_PER_EPOCH + 5,
    )
    assert process.poll() is None, f"the run ended before it was killed:\n{process.stdout.read()}"
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=HANG_GUARD_S)
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
    log, _ = resumed.communicate(timeout=HANG_GUARD_S)
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
    _wait_for(process, lambda: bool(read_metrics(out)))
    assert process.poll() is None
    process.send_signal(signal.SIGTERM)
    log, _ = process.communicate(timeout=HANG_GUARD_S)
    assert process.returncode == 143, log
    assert "stopped by SIGTERM" in log and f"--resume {out}" in log
    with ReplayBuffer(out / "replay", fsync=False) as replay:  # closed cleanly, consistent
        assert replay.num_steps >= STEPS_PER_EPOCH


# In-process runs of a few seconds: tiny epochs, no learning phase, a short final evaluation.
QUICK = [
    "--preset", "smoke", "--common.env-steps-per-epoch", "8", "--common.progress-bars", "false",
    "--tokenizer.start-after-epoch", "9", "--world-model.start-after-epoch", "9",
    "--actor-critic.start-after-epoch", "9", "--evaluation.num-envs", "1",
    "--evaluation.episodes", "1", "--evaluation.final-episodes", "1",
    "--evaluation.max-raw-frames", "40",
]  # fmt: skip


def _cli(argv: list[str]) -> int:
    from rem_train.cli import main

    try:
        return main(argv)
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped rem-train")


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "run"
    assert _cli([*QUICK, "--epochs", "1", "--out", str(out)]) == 0
    return out


@pytest.fixture
def run_copy(one_epoch_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(one_epoch_run, tmp_path / "run"))


def test_resume_with_more_epochs_extends_the_run(
    run_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _cli(["--resume", str(run_copy), "--epochs", "2"]) == 0
    assert f"resuming {run_copy} with common.epochs 1 -> 2" in capsys.readouterr().err
    assert [r["epoch"] for r in read_metrics(run_copy)] == [1, 2]
    assert load_checkpoint(run_copy / "checkpoints").epoch == 2
    assert json.loads((run_copy / "config.json").read_text())["common"]["epochs"] == 2
    assert _cli(["--resume", str(run_copy)]) == 0  # the extended run is the run now
    assert _cli(["--resume", str(run_copy), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "can be extended, not shortened" in err and "Traceback" not in err
    assert _cli(["--resume", str(run_copy), "--epochs", "3", "--seed", "7"]) == 2
    assert "different config (differs in common.epochs, common.seed)" in capsys.readouterr().err
    assert json.loads((run_copy / "config.json").read_text())["common"]["epochs"] == 2


def test_extending_a_run_says_which_phase_would_start_and_lets_it_be_moved(
    run_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Extending past a phase's start_after_epoch starts that phase: the resume says so, and the
    start may be moved in the same command (an extended ``breakout`` run began training its
    pretrained tokenizer this way, silently)."""
    from rem_train.cli import extend_run
    from rem_train.config import NEVER, TrainConfig

    original = (run_copy / "config.json").read_text()
    saved = TrainConfig.from_dict(json.loads(original))
    assert saved.tokenizer.start_after_epoch == 9  # QUICK: every phase after epoch 9
    longer = dataclasses.replace(saved, common=dataclasses.replace(saved.common, epochs=12))
    assert extend_run(run_copy, longer) == ["common.epochs 1 -> 12"]
    err = capsys.readouterr().err
    for phase in ("tokenizer", "world model", "actor critic"):
        assert f"trains its {phase} from epoch 10 on" in err, phase
    moved = dataclasses.replace(
        longer, tokenizer=dataclasses.replace(saved.tokenizer, start_after_epoch=NEVER)
    )
    (run_copy / "config.json").write_text(original)  # the run before the first extension
    assert extend_run(run_copy, moved) == [
        "common.epochs 1 -> 12",
        f"tokenizer.start_after_epoch 9 -> {NEVER}",
    ]
    err = capsys.readouterr().err
    assert "trains its tokenizer" not in err and "trains its world model" in err
    breakout = TrainConfig.from_preset("breakout")
    assert breakout.tokenizer.start_after_epoch == NEVER  # pretrained: never trained further


def test_resume_may_change_the_loss_weights_and_the_scripted_share_and_records_them(
    run_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--resume", str(run_copy), "--epochs", "2", "--world-model.moving-weight", "10",
            "--world-model.end-weight", "5", "--world-model.dreamed-heads-weight", "1",
            "--world-model.dreamed-obs-weight", "0.5", "--collect.scripted-share", "0.9",
            "--collect.scripted-serve-wait", "8", "--collect.parked-share", "0.05"]  # fmt: skip
    assert _cli(argv) == 0
    err = capsys.readouterr().err
    assert "common.epochs 1 -> 2" in err and "world_model.moving_weight 0.0 -> 10.0" in err
    assert "collect.scripted_share 0.0 -> 0.9" in err
    assert "world_model.end_weight 1.0 -> 5.0" in err
    assert "world_model.dreamed_heads_weight 0.0 -> 1.0" in err
    config = json.loads((run_copy / "config.json").read_text())
    assert config["world_model"]["moving_weight"] == 10
    assert config["world_model"]["end_weight"] == 5
    assert config["world_model"]["dreamed_obs_weight"] == 0.5
    assert config["collect"]["scripted_share"] == 0.9
    assert config["collect"]["scripted_serve_wait"] == 8
    assert config["collect"]["parked_share"] == 0.05
    lines = (run_copy / "config_changes.jsonl").read_text().splitlines()
    changes = [json.loads(line) for line in lines]
    made = [
        "collect.parked_share 0.0 -> 0.05",
        "collect.scripted_serve_wait 0 -> 8",
        "collect.scripted_share 0.0 -> 0.9",
        "common.epochs 1 -> 2",
        "world_model.dreamed_heads_weight 0.0 -> 1.0",
        "world_model.dreamed_obs_weight 0.0 -> 0.5",
        "world_model.end_weight 1.0 -> 5.0",
        "world_model.moving_weight 0.0 -> 10.0",
    ]
    assert changes == [{"after_epoch": 1, "changes": made}]
    training = json.loads((run_copy / "export" / "training.json").read_text())
    assert training["config_changes"] == changes  # the export says how it was trained
    # Shares move from one player to another in one resume (valid together, not one by one).
    moved = ["--resume", str(run_copy), "--epochs", "2",
             "--collect.scripted-share", "0.2", "--collect.parked-share", "0.8"]  # fmt: skip
    assert _cli(moved) == 0
    config = json.loads((run_copy / "config.json").read_text())
    assert (config["collect"]["scripted_share"], config["collect"]["parked_share"]) == (0.2, 0.8)
    # Other fields still have to match the run's own.
    assert _cli(["--resume", str(run_copy), "--world-model.grad-clip", "1"]) == 2
    assert "world_model.grad_clip" in capsys.readouterr().err


def test_resume_may_lower_a_learning_rate_and_the_optimizer_uses_it(
    run_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``optimizer.load_state_dict`` restores the learning rate saved in the checkpoint: the
    resume has to set the new one after it, or the changed config would say 1e-4 while the run
    went on at 2e-4."""
    saved = load_checkpoint(run_copy / "checkpoints").optimizers["world_model"]
    assert {group["lr"] for group in saved["param_groups"]} == {2e-4}
    argv = ["--resume", str(run_copy), "--epochs", "2", "--world-model.lr", "1e-4"]
    assert _cli(argv) == 0
    assert "world_model.lr 0.0002 -> 0.0001" in capsys.readouterr().err
    checkpoint = load_checkpoint(run_copy / "checkpoints")
    assert checkpoint.epoch == 2
    groups = checkpoint.optimizers["world_model"]["param_groups"]
    assert {group["lr"] for group in groups} == {1e-4}  # what it steps with from now on
    tokenizer = checkpoint.optimizers["tokenizer"]["param_groups"]
    assert {group["lr"] for group in tokenizer} == {1e-4}  # the run's own, unchanged
    lines = (run_copy / "config_changes.jsonl").read_text().splitlines()
    made = ["common.epochs 1 -> 2", "world_model.lr 0.0002 -> 0.0001"]
    assert json.loads(lines[-1])["changes"] == made


def test_a_run_being_trained_cannot_be_resumed_twice(
    run_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    busy = f"{run_copy} is being trained by another process right now"
    with ReplayBuffer(run_copy / "replay", fsync=False):  # what a training process holds
        assert _cli(["--resume", str(run_copy)]) == 2
    err = capsys.readouterr().err
    assert busy in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    from rem_train.cli import lock_run

    lock = lock_run(run_copy)  # what another `rem-train --resume` holds, from its start
    try:
        assert _cli(["--resume", str(run_copy), "--epochs", "2"]) == 2
    finally:
        if lock is not None:
            os.close(lock)
    assert busy in capsys.readouterr().err
    assert json.loads((run_copy / "config.json").read_text())["common"]["epochs"] == 1
    assert _cli(["--resume", str(run_copy)]) == 0  # free again


def test_two_new_runs_on_one_out_do_not_both_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second ``rem-train --out X`` that starts while the first is about to find X empty fails
    with one line, and the first trains on. (Both used to find it empty and train into it.)"""
    import rem_train.trainer as trainer_module

    out = tmp_path / "run"
    argv = [*QUICK, "--epochs", "1", "--out", str(out)]
    real_prepare = trainer_module.prepare_run_dir
    second: list[subprocess.CompletedProcess[str]] = []

    def second_process_starts_now(*args: object) -> Path:
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        command = [sys.executable, "-m", "rem_train", *argv]
        second.append(
            subprocess.run(command, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S)
        )
        return real_prepare(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(trainer_module, "prepare_run_dir", second_process_starts_now)
    assert _cli(argv) == 0
    (done,) = second
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip().splitlines() == [
        f"rem-train: error: {out} is in use by another rem-train right now (it is starting or "
        "training a run there); choose another --out, or wait for it to end and continue its "
        f"run with --resume {out}"
    ]
    assert [r["epoch"] for r in read_metrics(out)] == [1]  # the first run's, once


def test_a_new_run_that_cannot_start_leaves_no_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refused after its folder was made and locked (the breakout preset needs --init-from)."""
    out = tmp_path / "new" / "run"
    assert _cli(["--game", "Breakout", "--preset", "breakout", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "does not train the tokenizer" in err and "Traceback" not in err
    assert not out.exists()


def test_ctrl_c_stops_like_sigterm_and_the_run_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Python's own Ctrl-C handler, as in a terminal (a runner started in the background, as CI
    # may be, ignores SIGINT, and rem-train then leaves it alone: the test used to skip there).
    previous_handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _ctrl_c_run(tmp_path, monkeypatch, capsys)
    finally:
        signal.signal(signal.SIGINT, previous_handler)


def _ctrl_c_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from rem_train.trainer import Trainer

    train_epoch = Trainer.train_epoch

    def ctrl_c_in_epoch_2(self: Trainer, epoch: int) -> object:
        if epoch == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return train_epoch(self, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", ctrl_c_in_epoch_2)
    out = tmp_path / "run"
    assert _cli([*QUICK, "--epochs", "2", "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "interrupted: stopped by Ctrl-C during epoch 2" in err
    assert f"continue with --resume {out}" in err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    assert load_checkpoint(out / "checkpoints").epoch == 1
    monkeypatch.undo()
    assert _cli(["--resume", str(out)]) == 0
    assert load_checkpoint(out / "checkpoints").epoch == 2
