"""Train the tokenizer first and longer, on real frames from several policies (not in REM).

REM trains the tokenizer inside its schedule on the frames the agent happens to collect. On a CPU
budget the tokenizer then sees a few thousand gradient steps of mostly early, ball-less frames,
and a small object such as Breakout's ball never gets codes of its own. Real frames are cheap
(ale-py plays thousands of steps a second), so this module collects a frame set from several
policies (a scripted player where the game has one, and uniformly random actions), trains the
tokenizer on it with the ``cpu`` preset's loss (foreground-weighted reconstruction, dead-code
restarts), and every ``eval_every`` steps measures the reconstruction of held-out frames: PSNR,
codebook use, and the object recall of the game's probes (:mod:`rem_env.probes`). The result is a
model folder whose tokenizer is trained (world model and start contexts from ``--init-from``, or
fresh), which ``rem-train --init-from FOLDER --init-parts tokenizer`` starts a run from.

Run folder: ``frames.npz`` (the frame set, reused on resume), ``tokenizer.safetensors`` and
``state.json`` (resume point), ``progress.jsonl`` (one line per evaluation), ``export/``.

Example:
    python -m rem_train.pretrain_tokenizer --game Breakout --out ~/runs/tok --steps 8000 \\
        --init-from warm_starts/Breakout-vqvae
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from rem_env import REMModel
from rem_env.actor_critic_files import save_actor_critic
from rem_env.fidelity import ObjectCounts, to_pixels
from rem_env.models.actor_critic import ActorCritic
from rem_env.models.tokenizer import Tokenizer
from rem_env.probes import SCRIPTED_PLAYERS, probes_for
from rem_train.batches import frames_to_tensor
from rem_train.codebook import DeadCodeRestarter
from rem_train.config import TrainConfig
from rem_train.config_options import add_config_options
from rem_train.export import START_CONTEXTS, encode_contexts, play_openings
from rem_train.losses import foreground_weights, motion_weights, tokenizer_loss
from rem_train.run_log import log_line
from rem_train.sources import load_source
from rem_train.warm_start import LINEAGE_FILE, lineage_of

__all__ = [
    "FrameSet",
    "PretrainConfig",
    "collect_frames",
    "main",
    "parser",
    "pretrain",
    "reconstruction_report",
]


@dataclass(frozen=True)
class PretrainConfig:
    """Settings of a tokenizer pretraining run (defaults: the ``cpu`` preset's tokenizer phase)."""

    game: str = "Breakout"
    """Atari game whose real frames the tokenizer trains on (one of the Atari 100K games)."""
    frames: int = 40_000
    """Real frames collected (agent steps, REM's preprocessing with life loss as episode end)."""
    scripted_share: float = 0.8
    """Share of the frames played by the scripted player (the rest: random actions)."""
    held_out: int = 1_024
    """Frames kept aside for the evaluations."""
    steps: int = 8_000
    """Gradient steps (AdamW), each on ``batch_size`` frames drawn from the collected ones."""
    vocab_size: int = 0
    """Codebook size; 0 keeps the starting model's. A larger one keeps the starting codes and
    adds fresh ones (restarted onto latents at the first restart); the world model then starts
    fresh, since its token embedding and heads are sized by the codebook."""
    batch_size: int = 32
    """Frames per gradient step."""
    micro_batch: int = 16
    """Frames per forward/backward; the batch's loss is the mean of its micro-batches' losses
    (each with its own foreground-weighted mean). 16 keeps activations in the CPU's caches."""
    lr: float = 1e-4
    """AdamW's learning rate after the warm-up."""
    warmup_steps: int = 100
    """Linear learning-rate warm-up (a fresh AdamW on trained weights otherwise jolts them)."""
    weight_decay: float = 0.01
    """AdamW's weight decay."""
    grad_clip: float = 10.0
    """Largest norm of the gradient of all the tokenizer's weights (clipped to it)."""
    beta: float = 1.0
    """Weight of the commitment term of the VQ-VAE loss (REM: 1)."""
    foreground_weight: float = 50.0
    """Extra weight of the pixels that differ from the median background (the objects)."""
    motion_weight: float = 200.0
    """Extra weight of the pixels that changed since the previous frame (the ball); added to the
    foreground weighting."""
    restart_dead_codes_every: int = 10
    """Steps between restarts of the codes no frame used since the last one."""
    restart_by_error: bool = True
    """Dead codes move onto the worst-quantised latents (see DeadCodeRestarter)."""
    eval_every: int = 500
    """Steps between the reconstruction reports on the held-out frames (and after the last)."""
    seed: int = 0
    """Seed of the games played, the batches and the new weights."""
    decoder_only: bool = False
    """Train only the decoder side (the post-quantisation convolution and the decoder). The
    encoder and the codebook stay as they are, so every frame keeps its tokens and the world
    model, start contexts and actor-critic of ``init_from`` stay valid: the export ships them.
    Needs ``init_from``; no dead-code restarts."""


class FrameSet:
    """Frames (N, H, W, 3) uint8 with their RAM snapshots (N, 128) uint8."""

    def __init__(self, frames: np.ndarray, ram: np.ndarray) -> None:
        if len(frames) != len(ram):
            raise ValueError(f"{len(frames)} frames but {len(ram)} RAM snapshots")
        self.frames, self.ram = frames, ram

    def __len__(self) -> int:
        return len(self.frames)

    def save(self, path: Path) -> None:
        np.savez(path, frames=self.frames, ram=self.ram)

    @classmethod
    def load(cls, path: Path) -> FrameSet:
        with np.load(path) as data:
            return cls(data["frames"], data["ram"])


def collect_frames(game: str, num_frames: int, scripted_share: float, seed: int) -> FrameSet:
    """Plays the real game (REM's training preprocessing) and keeps every observation.

    The scripted player (if the game has one) plays ``scripted_share`` of the frames, half of
    them with 5% random actions and half with 30%; uniformly random actions play the rest.
    """
    from rem_env.atari import make_atari_env

    player = SCRIPTED_PLAYERS.get(game)
    shares = [(0.0, 1.0)]  # (epsilon, share) of a random policy
    if player is not None:
        shares = [(0.05, scripted_share / 2), (0.3, scripted_share / 2), (1.0, 1 - scripted_share)]
    frames, rams = [], []
    for part, (epsilon, share) in enumerate(shares):
        count = round(num_frames * share) if part < len(shares) - 1 else num_frames - len(frames)
        env = make_atari_env(game, train=True, seed=seed + part)
        ale = env.unwrapped.ale
        agent = player(epsilon, seed=seed + part) if player is not None else None
        rng = np.random.default_rng(seed + part)
        obs, _ = env.reset()
        for _ in range(count):
            ram = ale.getRAM().copy()
            frames.append(obs)
            rams.append(ram)
            if agent is None or epsilon >= 1.0:
                action = int(rng.integers(env.action_space.n))
            else:
                action = int(agent.act(ram[None])[0])
            obs, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                obs, _ = env.reset()
        env.close()
    return FrameSet(np.stack(frames), np.stack(rams))


@torch.no_grad()
def reconstruction_report(model: REMModel, held_out: FrameSet, game: str) -> dict[str, Any]:
    """PSNR, codebook use and probe recall of the tokenizer's reconstructions of real frames."""
    model.eval()
    pictures, tokens = [], []
    for first in range(0, len(held_out), 128):
        frame_tokens = model.encode(frames_to_tensor(held_out.frames[first : first + 128]))
        pictures.append(to_pixels(model.decode(frame_tokens)))
        tokens.append(frame_tokens.flatten())
    rebuilt = np.concatenate(pictures)  # (N, H, W, 3) uint8
    real = held_out.frames.astype(np.float64)
    mse = ((rebuilt.astype(np.float64) - real) ** 2).reshape(len(real), -1).mean(1)
    report: dict[str, Any] = {
        "psnr": float(np.mean(10 * np.log10(255.0**2 / np.maximum(mse, 1e-10)))),
        "codes_used": int(torch.cat(tokens).unique().numel()),
    }
    for probe in probes_for(game):
        counts = ObjectCounts()
        counts.add(probe, rebuilt, held_out.ram)
        report[f"{probe.name}_frames"] = counts.checked
        report[f"{probe.name}_recall"] = counts.recall()
        report[f"{probe.name}_found"] = counts.found_share()
        if counts.absent:
            report[f"{probe.name}_false_found"] = counts.false_share()
    return report


def pretrain(
    config: PretrainConfig,
    out: Path,
    init_from: str | None = None,
    command: str = "rem_train.pretrain_tokenizer.pretrain() from Python",
) -> Path:
    """Runs (or resumes) a pretraining run in ``out``; returns the exported model folder.

    The export's ``training.json`` records the run (its command, frames, steps) after the
    lineage of ``init_from``, so that ``rem-train --init-from`` keeps the whole chain.
    """
    _check(config, init_from, out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    (out / "config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    frames_path = out / "frames.npz"
    if frames_path.is_file():
        data = FrameSet.load(frames_path)
    else:
        started = time.perf_counter()
        data = collect_frames(
            config.game, config.frames + config.held_out, config.scripted_share, config.seed
        )
        data.save(frames_path)
        print(f"collected {len(data)} frames in {time.perf_counter() - started:.0f} s")
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(len(data))
    held = FrameSet(data.frames[order[: config.held_out]], data.ram[order[: config.held_out]])
    train_index = order[config.held_out :]  # indices into the frame set, in play order

    actor_critic = None
    if init_from is not None:
        loaded = load_source(init_from, need_actor_critic=False)
        model, source = loaded.model, init_from
        if config.decoder_only:
            actor_critic = loaded.actor_critic
    else:
        model = REMModel(TrainConfig.from_preset("cpu", config.game).model_config())
        source = None
    if model.config.tokenizer.kind != "vqvae":
        raise ValueError(
            f"{init_from} has a {model.config.tokenizer.kind} tokenizer, which is fitted, not "
            "trained: python -m rem_train.fit_patch_tokenizer fits one"
        )
    if config.vocab_size and config.vocab_size != model.config.tokenizer.vocab_size:
        model = _with_vocab(model, config.vocab_size)
    tokenizer = model.tokenizer
    openings = None  # real openings whose new codes each export starts its dreams from
    if not config.decoder_only:  # (decoder_only: the codes, and the source's contexts, stay)
        length = model.config.world_model.context_length
        openings = play_openings(config.game, length, START_CONTEXTS, config.seed)
    optimizer = torch.optim.AdamW(
        _trained_parameters(tokenizer, config.decoder_only),
        lr=config.lr,
        weight_decay=config.weight_decay,
    )
    step = 0
    if (out / "state.json").is_file():
        state = json.loads((out / "state.json").read_text())
        step = state["step"]
        tokenizer.load_state_dict(load_file(out / "tokenizer.safetensors"))
        optimizer.load_state_dict(torch.load(out / "optimizer.pt", weights_only=True))
        rng = np.random.default_rng([config.seed, step])
        print(f"resuming at step {step}")
    background = frames_to_tensor(data.frames[rng.choice(train_index, 1024)]).median(0).values
    restarter = None  # decoder_only: the codebook stays as it is
    if not config.decoder_only:
        restarter = DeadCodeRestarter(
            tokenizer.codebook.shape[0],
            config.restart_dead_codes_every,
            "cpu",
            by_error=config.restart_by_error,
        )

    generator = torch.Generator().manual_seed(config.seed + step)
    log = (out / "progress.jsonl").open("a")
    if step == 0:
        log_line(
            log, {"step": 0, "seconds": 0.0, **reconstruction_report(model, held, config.game)}
        )
    started, spent = time.perf_counter(), 0.0
    pieces = math.ceil(config.batch_size / config.micro_batch)
    while step < config.steps:
        tokenizer.train()
        index = rng.choice(train_index, size=config.batch_size)
        frames = frames_to_tensor(data.frames[index])
        weights = foreground_weights(frames, background, config.foreground_weight)
        if config.motion_weight > 0:  # the frame before each (in play order)
            previous = frames_to_tensor(data.frames[np.maximum(index - 1, 0)])
            weights = weights + motion_weights(frames, previous, config.motion_weight) - 1.0
        optimizer.zero_grad(set_to_none=True)
        latents, codes, losses = [], [], []
        for part, weight in zip(frames.chunk(pieces), weights.chunk(pieces), strict=True):
            output = tokenizer(part)
            loss, metrics = tokenizer_loss(output, part, config.beta, pixel_weights=weight)
            loss.mul(len(part) / len(frames)).backward()  # the batch loss: the parts' mean
            losses.append(metrics)
            latents.append(output.z.detach())
            codes.append(output.codes.detach())
            if restarter is not None:
                restarter.observe(output.tokens)
        torch.nn.utils.clip_grad_norm_(tokenizer.parameters(), config.grad_clip)
        for group in optimizer.param_groups:
            group["lr"] = config.lr * min(1.0, (step + 1) / config.warmup_steps)
        optimizer.step()
        if restarter is not None:
            restarter.step(tokenizer, torch.cat(latents), generator, codes=torch.cat(codes))
        step += 1
        if step % config.eval_every == 0 or step == config.steps:
            spent += time.perf_counter() - started
            report = reconstruction_report(model, held, config.game)
            loss = float(np.mean([m["total"] for m in losses]))
            log_line(log, {"step": step, "seconds": round(spent, 1), "loss": loss, **report})
            save_file(tokenizer.state_dict(), out / "tokenizer.safetensors")
            torch.save(optimizer.state_dict(), out / "optimizer.pt")
            state = {"step": step, "decoder_only": config.decoder_only}
            (out / "state.json").write_text(json.dumps(state) + "\n")
            _export(model, out, config, source, step, command, openings, actor_critic)
            started = time.perf_counter()
    log.close()
    return _export(model, out, config, source, step, command, openings, actor_critic)


def _check(config: PretrainConfig, init_from: str | None, out: Path) -> None:
    """Raises ValueError for settings that cannot go together, or with the run in ``out``."""
    state = out / "state.json"
    if state.is_file():
        kept = json.loads(state.read_text()).get("decoder_only", False)
        if kept != config.decoder_only:
            raise ValueError(
                f"{out} is a run with decoder_only {kept}: resume it with the same setting "
                "(its optimizer holds the state of the parameters it trained)"
            )
    if config.decoder_only and init_from is None:
        raise ValueError(
            "decoder_only trains a decoder for a trained encoder and codebook: give init_from "
            "(a model folder, Hub repo id, run folder or checkpoint file)"
        )
    if config.decoder_only and config.vocab_size:
        raise ValueError("decoder_only keeps the codebook: leave vocab_size at 0")


def _trained_parameters(tokenizer: Tokenizer, decoder_only: bool) -> list[torch.nn.Parameter]:
    """The parameters the run trains; with ``decoder_only`` the others are frozen."""
    if not decoder_only:
        return list(tokenizer.parameters())
    decoder_side = [*tokenizer.post_quant_conv.parameters(), *tokenizer.decoder.parameters()]
    kept = {id(p) for p in decoder_side}
    for parameter in tokenizer.parameters():
        parameter.requires_grad_(id(parameter) in kept)
    return decoder_side


def _export(
    model: REMModel,
    out: Path,
    config: PretrainConfig,
    source: str | None,
    step: int,
    command: str,
    openings: tuple[np.ndarray, np.ndarray] | None,
    actor_critic: ActorCritic | None = None,
) -> Path:
    """Writes ``out/export`` (usable while the run goes on); with ``openings`` its start
    contexts are their codes by the tokenizer as it is now."""
    folder = out / "export"
    if openings is not None:
        model.set_start_contexts(*encode_contexts(model, *openings))
    model.save_pretrained(folder)
    if actor_critic is not None:  # decoder_only: the codes it reads are unchanged
        save_actor_critic(actor_critic, folder)
    record = {"config": asdict(config), "init_from": source, "steps": step}
    (folder / "tokenizer_pretraining.json").write_text(json.dumps(record, indent=2) + "\n")
    runs = _runs_of(out)
    if not runs or runs[-1].get("command") != command:
        runs.append({"command": command, "from_step": runs[-1]["to_step"] if runs else 0})
    runs[-1]["to_step"] = step
    (out / "runs.json").write_text(json.dumps(runs, indent=2) + "\n")
    earlier = lineage_of(Path(source)) if source is not None and Path(source).is_dir() else []
    steps = [
        {
            "command": run["command"],
            "preset": "tokenizer pretraining",
            "env_steps": config.frames + config.held_out,
            "tokenizer_steps": f"{run['from_step']}-{run['to_step']}",
        }
        for run in runs
    ]
    lineage = [*earlier, *steps]
    training = {"preset": "tokenizer pretraining", "lineage": lineage[:-1], **lineage[-1]}
    if config.decoder_only and source is not None:
        training.update(_kept_from(source))
    (folder / "training.json").write_text(json.dumps(training, indent=2) + "\n")
    return folder


def _kept_from(source: str) -> dict[str, Any]:
    """What a decoder-only export's record says of the parts it kept from ``source``: where they
    came from and the evaluation of the source's actor-critic, which the decoder cannot change
    (the actor-critic acts on the codes of real frames)."""
    record: dict[str, Any] = {
        "init_from": {"source": source, "parts": ["tokenizer", "world_model", "actor_critic"]},
        "note": (
            f"Only the tokenizer's decoder side trained; its encoder and codebook, the world "
            f"model, the start contexts and the actor-critic are those of `{source}`, unchanged "
            "(every frame keeps its tokens); so are the real env steps and epochs of its "
            "manifest."
        ),
    }
    path = Path(source) / LINEAGE_FILE
    if path.is_file():
        evaluation = json.loads(path.read_text()).get("evaluation")
        if evaluation:
            record["evaluation"] = evaluation
            record["note"] += " The actor-critic's evaluation is the source's."
    return record


def _runs_of(out: Path) -> list[dict[str, Any]]:
    """The commands that trained this run folder, with the steps each took (``runs.json``)."""
    path = out / "runs.json"
    return json.loads(path.read_text()) if path.is_file() else []


def _with_vocab(model: REMModel, vocab_size: int) -> REMModel:
    """A copy of ``model`` with a larger codebook: the tokenizer's weights and first codes are
    kept, the new codes repeat the old ones (so that none is picked before a restart moves it)
    and the world model is new."""
    old = model.config.tokenizer.vocab_size
    if vocab_size < old:
        raise ValueError(f"the codebook can only grow: {old} codes, asked for {vocab_size}")
    tok = dataclasses.replace(model.config.tokenizer, vocab_size=vocab_size)
    bigger = REMModel(dataclasses.replace(model.config, tokenizer=tok))
    state = model.tokenizer.state_dict()
    codebook = state["embedding.weight"]  # (old, E)
    state["embedding.weight"] = codebook.repeat(vocab_size // old + 1, 1)[:vocab_size]
    bigger.tokenizer.load_state_dict(state)
    return bigger


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m rem_train.pretrain_tokenizer``."""
    p = argparse.ArgumentParser(
        prog="python -m rem_train.pretrain_tokenizer", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--out", required=True, help="run folder (resumed if it exists)")
    p.add_argument(
        "--init-from", help="model folder, Hub repo id, run folder or checkpoint file to start from"
    )
    add_config_options(p, PretrainConfig())
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    args = vars(parser().parse_args(argv))
    out, init_from = Path(os.path.expanduser(args.pop("out"))), args.pop("init_from")
    config = PretrainConfig(**args)
    try:
        _check(config, init_from, out)
    except ValueError as err:
        parser().error(str(err))
    command = shlex.join(["python", "-m", "rem_train.pretrain_tokenizer", *argv])
    print(pretrain(config, out, init_from, command))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
