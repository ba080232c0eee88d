"""REM's training loop: each epoch collect -> tokenizer -> world model -> actor-critic (REM_SPEC 7).

Reads top to bottom like a CleanRL script: :meth:`Trainer.run` is the schedule, one method per
phase. Each component trains in ``train()`` mode during its own phase and is in ``eval()`` mode
otherwise (the tokenizer encodes for the world model in eval mode; the world model dreams in eval
mode). The run folder holds ``config.json``, the on-disk replay buffer (``replay/``), the
checkpoint (``checkpoints/last.safetensors``, rewritten after every epoch, plus numbered copies),
``metrics.jsonl``, TensorBoard logs and, at the end, the exported model (``export/``).

Resuming (``Trainer(..., resume=True)``) loads the last checkpoint: weights, optimizers, RNG
states and the epoch; the interrupted epoch runs again, and its collection only tops the replay
buffer up to the schedule's step count, so no transition is lost or collected twice.

Data-parallel (``dist_ctx`` with several ranks, see :mod:`rem_train.distributed`): the three
training phases split every global batch over the ranks. All ranks draw the global batch's
indices from the same numpy generator (the run's, identical everywhere) and read their own rows,
so together they draw the batches one process would; gradients are averaged before clipping.
Rank 0 alone collects, evaluates and writes (log, checkpoint, export); the others wait, then take
over rank 0's generator state and re-scan the replay folder (opened read-only). Torch's RNG
(dropout, imagined actions and dreams) is rank 0's checkpointed stream on rank 0 and is re-seeded
each epoch from ``(seed, rank, epoch)`` on the others. The checkpoint does not depend on the
number of ranks, so a run can resume with another one.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rem_env import REMModel
from rem_env.models.actor_critic import ActorCritic
from rem_env.models.world_model import WorldModelOutput
from rem_env.probes import probes_for
from rem_train.batches import ReplayTokens
from rem_train.checkpoint import (
    load_checkpoint,
    prepare_run_dir,
    restore_rng,
    rng_fingerprint,
    save_checkpoint,
    seed_everything,
)
from rem_train.codebook import DeadCodeRestarter
from rem_train.collect import Collector
from rem_train.config import TrainConfig
from rem_train.distributed import (
    DistContext,
    any_rank,
    average_metrics,
    broadcast_modules,
    check_batch_sizes,
    check_in_sync,
    global_share,
    rank_device,
    rank_seed,
    rank_slice,
    run_on_main,
    share_from_main,
    wrap,
)
from rem_train.evaluate import EvalResult, evaluate
from rem_train.event_check import check_events
from rem_train.export import export_run
from rem_train.imagination import ENCODE_CHUNK, Imagination, objective_before_after
from rem_train.losses import (
    actor_critic_loss,
    dreamed_frames,
    foreground_weights,
    matching_blocks,
    moving_patch_weights,
    predicted_blocks,
    tokenizer_loss,
    world_model_loss,
)
from rem_train.lpips import load_lpips, missing_weights_message
from rem_train.object_check import check_objects
from rem_train.optim import build_optimizers, clipped_step
from rem_train.replay import ReplayBuffer, frames_to_tensor
from rem_train.run_log import RunLog
from rem_train.warm_start import apply_warm_start, parse_parts, read_warm_start

__all__ = ["Trainer", "TrainingStoppedError"]


CONFIG_CHANGES_FILE = "config_changes.jsonl"
"""The run folder's record of what each ``--resume`` changed: one JSON line per resume."""
WARM_START_FILE = "warm_start.json"
"""The run folder's record of ``common.init_from``: source, parts and the source's lineage."""

BACKGROUND_FRAMES = 1024
"""Replay frames whose per-pixel median is the background of ``tokenizer.foreground_weight``."""

OBJECT_CHECK_STREAM = 0x0B7EC7
"""Key of the object check's own random stream (seeded with the run's seed and the epoch)."""

EVENT_CHECK_STREAM = 0xE7E27
"""Key of the reward and end heads' check's own random stream."""


class TrainingStoppedError(Exception):
    """The run stopped early on SIGTERM, at a step boundary; it can be resumed."""


class Trainer:
    """One REM training run in a run folder.

    Args:
        config: The run's configuration.
        run_dir: The run folder (new, or the run to continue with ``resume``).
        resume: Continue the run in ``run_dir`` from its last checkpoint.
        command: The command line, recorded in the export.
        dist_ctx: This process's rank among data-parallel ranks (default: one process); the
            process group must be joined already (:func:`rem_train.distributed.init_from_env`).

    Raises:
        ValueError: On a run folder that does not fit (see
            :func:`rem_train.checkpoint.prepare_run_dir`), or a global batch size that is not a
            multiple of the number of ranks.

    Example:
        >>> from rem_train.config import TrainConfig
        >>> config = TrainConfig.from_preset("smoke", "Breakout")
        >>> folder = Trainer(config, "runs/smoke").run()  # doctest: +SKIP
        >>> folder = Trainer(config, "runs/smoke", resume=True).run()  # doctest: +SKIP
    """

    def __init__(
        self,
        config: TrainConfig,
        run_dir: str | os.PathLike[str],
        resume: bool = False,
        command: str = "",
        dist_ctx: DistContext | None = None,
    ) -> None:
        self.config = cfg = config
        self.dist = ctx = DistContext() if dist_ctx is None else dist_ctx
        check_batch_sizes(
            {
                "tokenizer.batch-size": cfg.tokenizer.batch_size,
                "world-model.batch-size": cfg.world_model.batch_size,
                "actor-critic.batch-size": cfg.actor_critic.batch_size,
            },
            ctx,
        )
        device = rank_device(cfg.device, ctx)
        has_checkpoint = (Path(run_dir) / "checkpoints" / "last.safetensors").is_file()
        fresh = not (resume and has_checkpoint)
        problem = cfg.untrained_tokenizer_problem()
        if fresh and problem is not None:
            raise ValueError(problem)
        self.rng = seed_everything(cfg.common.seed)
        self.model = REMModel(cfg.model_config()).to(device)
        self.actor_critic = ActorCritic.from_config(
            self.model.config, cfg.actor_critic.hidden_size
        ).to(device)
        self.run_dir = Path(run_dir)
        warm, warm_notes = None, []
        if cfg.common.init_from is not None and fresh:
            # Before the run folder is made: a source that does not fit leaves nothing behind.
            warm = read_warm_start(cfg.common.init_from)
            warm_notes = apply_warm_start(
                warm,
                parse_parts(cfg.common.init_parts),
                {
                    "tokenizer": self.model.tokenizer,
                    "world_model": self.model,
                    "actor_critic": self.actor_critic,
                },
            )
        run_on_main(lambda: prepare_run_dir(run_dir, config, resume), ctx)
        if warm is not None and ctx.is_main:
            record = {"source": warm.source, "parts": parse_parts(cfg.common.init_parts)}
            (self.run_dir / WARM_START_FILE).write_text(
                json.dumps({**record, "lineage": warm.lineage}, indent=2) + "\n"
            )
        self.command = command
        self.log = RunLog(self.run_dir, enabled=ctx.is_main)
        if warm is not None:
            self.log.info(
                f"warm start: {', '.join(parse_parts(cfg.common.init_parts))} from {warm.source}"
            )
            for note in warm_notes:
                self.log.info(f"warm start: {note}")
        self.optimizers = build_optimizers(cfg, self.model, self.actor_critic)
        tok, ac = cfg.tokenizer, cfg.actor_critic
        self.code_restarter = None
        if tok.restart_dead_codes_every > 0:  # usage restarts empty on resume
            vocab = self.model.config.tokenizer.vocab_size
            self.code_restarter = DeadCodeRestarter(vocab, tok.restart_dead_codes_every, device)
        self.lpips = None
        if tok.lpips:
            self.lpips = load_lpips()
            if self.lpips is None:
                self.log.info(missing_weights_message())
            else:
                self.lpips = self.lpips.to(device)
        else:
            self.log.info("training the tokenizer without LPIPS (tokenizer.lpips is off)")
        burn_in = (
            "actions fed (intended)" if ac.burn_in_actions else "observations only (published REM)"
        )
        self.log.info(f"actor-critic burn-in: {burn_in}; REM_SPEC 11.1")
        self.epoch = 0
        self.wall_time = 0.0
        self.last_eval: EvalResult | None = None
        self.resumed_fingerprint: str | None = None
        if not fresh:
            self._load(self.run_dir / "checkpoints")
        broadcast_modules(self._modules().values(), ctx)  # every rank starts from rank 0's
        # DistributedDataParallel for the two phases with one forward per backward (the module
        # itself with one process). The actor-critic's rollout calls its module ~30 times per
        # backward, which DDP's hooks do not allow: its gradients are averaged by one
        # all_reduce after the backward (rem_train.distributed.average_gradients).
        self.tokenizer_ddp = wrap(self.model.tokenizer, ctx)
        self.world_model_ddp = wrap(self.model.world_model, ctx)
        folder, fsync = self.run_dir / "replay", cfg.common.replay_fsync
        replay = run_on_main(lambda: ReplayBuffer(folder, fsync=fsync), ctx)  # rank 0 writes
        self.replay = ReplayBuffer(folder, read_only=True) if replay is None else replay
        self.log.info(
            f"{'resuming' if resume else 'new'} run in {self.run_dir}: {cfg.game}, preset "
            f"{cfg.preset}, after epoch {self.epoch}, {self.replay.num_steps} env steps stored"
            + (f"; data-parallel over {ctx.world_size} ranks" if ctx.is_distributed else "")
        )
        self.collector: Collector | None = None
        self.imagination: Imagination | None = None
        self.last_dream: torch.Tensor | None = None
        self.stop_requested = False

    @property
    def device(self) -> torch.device:
        """Where the models live (read from their parameters)."""
        return self.model.start_tokens.device

    # ------------------------------------------------------------------------------ schedule

    def run(
        self, export_to: str | os.PathLike[str] | None = None, max_minutes: float | None = None
    ) -> Path:
        """Trains the remaining epochs, evaluates, exports; returns the export folder.

        Args:
            export_to: Also export the final model to this folder.
            max_minutes: A time budget: after the first epoch that ends this many minutes (of
                this call) or later, training stops there and the model is exported as it is;
                ``--resume`` goes on from that epoch. 0: no epoch is trained, the model of the
                last one is exported (a run that has trained at least one). None: no budget.
        """
        cfg = self.config
        if max_minutes is not None and not max_minutes >= 0:
            raise ValueError(f"max_minutes must be >= 0, got {max_minutes}")
        epochs = range(self.epoch + 1, cfg.common.epochs + 1)
        if max_minutes == 0:
            if self.epoch == 0:
                self.close()
                raise ValueError(
                    "a time budget of 0 min exports a run's model as it is; this run has not "
                    "trained an epoch yet"
                )
            self.log.info(
                f"time budget of 0 min: exporting the model of epoch {self.epoch} as it is, "
                f"training nothing; --resume {self.run_dir} goes on"
            )
            epochs = range(0)
        started = time.monotonic()
        handle = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, self._request_stop) if handle else None
        try:
            for epoch in epochs:
                self.train_epoch(epoch)
                spent = (time.monotonic() - started) / 60.0
                over = max_minutes is not None and spent >= max_minutes  # rank 0 decides
                if share_from_main(over, self.dist) and epoch < cfg.common.epochs:
                    self.log.info(
                        f"time budget of {max_minutes:g} min reached after epoch {epoch} of "
                        f"{cfg.common.epochs} ({spent:.1f} min): exporting the model as it is; "
                        f"--resume {self.run_dir} goes on"
                    )
                    break
            if export_to is not None:
                run_on_main(lambda: self.export(export_to), self.dist)
            return run_on_main(self.export, self.dist) or self.run_dir / "export"
        finally:
            if handle:
                signal.signal(signal.SIGTERM, previous)
            self.close()

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """Runs one epoch's phases, evaluation, logging and checkpoint."""
        cfg, start = self.config, time.perf_counter()
        if self.dist.rank > 0:  # rank 0 goes on with the run's (checkpointed) torch stream
            torch.manual_seed(rank_seed(cfg.common.seed, self.dist.rank, epoch))
        record: dict[str, Any] = {"epoch": epoch, "rng_at_start": rng_fingerprint(self.rng)}
        timings: dict[str, float] = {}
        if epoch <= cfg.common.collect_epochs:
            t = time.perf_counter()
            target = epoch * cfg.common.env_steps_per_epoch
            record["collect"] = self._on_main(
                lambda: self.collect(max(target - self.replay.num_steps, 0))
            )
            timings["collect"] = time.perf_counter() - t
        phases = (
            ("tokenizer", cfg.tokenizer.start_after_epoch, self.train_tokenizer),
            ("world_model", cfg.world_model.start_after_epoch, self.train_world_model),
            ("actor_critic", cfg.actor_critic.start_after_epoch, self.train_actor_critic),
        )
        for name, start_after, train in phases:
            self._check_stop()
            if epoch > start_after:
                t = time.perf_counter()
                record[name] = train(epoch)
                timings[name] = time.perf_counter() - t
        last = epoch == cfg.common.epochs
        if last or (epoch >= cfg.common.eval_start_epoch and epoch % cfg.common.eval_every == 0):
            t = time.perf_counter()
            record["eval"] = self._on_main(lambda: self._evaluate(epoch, last))
            timings["eval"] = time.perf_counter() - t
            if cfg.evaluation.object_segments and probes_for(cfg.game) and self.replay.num_steps:
                t = time.perf_counter()
                record["objects"] = self._on_main(lambda: self._check_objects(epoch))
                timings["objects"] = time.perf_counter() - t
            if cfg.evaluation.event_segments and self.replay.num_steps:
                t = time.perf_counter()
                record["events"] = self._on_main(lambda: self._check_events(epoch))
                timings["events"] = time.perf_counter() - t
        self.wall_time += time.perf_counter() - start
        record.update(timings=timings, env_steps=self.replay.num_steps, wall_time=self.wall_time)
        record["ranks"] = self.dist.world_size
        self.log.epoch(record, cfg.common.epochs)
        self.epoch = epoch
        keep = epoch % cfg.common.checkpoint_every == 0 or last
        run_on_main(lambda: self._save(keep_numbered=keep), self.dist)
        return record

    def _evaluate(self, epoch: int, last: bool) -> dict[str, Any]:
        """The periodic (or final) evaluation in the real test env; logs images too."""
        cfg = self.config
        episodes = cfg.evaluation.final_episodes if last else cfg.evaluation.episodes
        self.last_eval = evaluate(
            self.model.tokenizer, self.actor_critic, cfg.game, episodes,
            cfg.evaluation.num_envs, cfg.evaluation.temperature,
            seed=int(self.rng.integers(2**31)), max_raw_frames=cfg.evaluation.max_raw_frames,
        )  # fmt: skip
        self._log_images(epoch)
        return self.last_eval._asdict()

    def _check_objects(self, epoch: int) -> dict[str, Any]:
        """The world model's next frame on replay segments, object by object (own RNG stream:
        the run's sampling stream is left as it was)."""
        cfg = self.config
        checks = check_objects(
            self.model, self.replay, probes_for(cfg.game),
            np.random.default_rng([cfg.common.seed, epoch, OBJECT_CHECK_STREAM]),
            segments=cfg.evaluation.object_segments, length=cfg.world_model.segment_length,
        )  # fmt: skip
        return {name: dataclasses.asdict(check) for name, check in checks.items()}

    def _check_events(self, epoch: int) -> dict[str, Any]:
        """The reward and end heads on replay segments against the labels (own RNG stream)."""
        cfg = self.config
        checks = check_events(
            self.model, self.replay,
            np.random.default_rng([cfg.common.seed, epoch, EVENT_CHECK_STREAM]),
            segments=cfg.evaluation.event_segments, length=cfg.world_model.segment_length,
        )  # fmt: skip
        return {name: dataclasses.asdict(check) for name, check in checks.items()}

    def _on_main(self, fn: Any) -> Any:
        """``fn()`` on rank 0 only (None elsewhere); then every rank goes on from rank 0's
        numpy generator (the shared sampling stream) and sees the replay buffer rank 0 left."""
        result = run_on_main(fn, self.dist)
        if self.dist.is_distributed:
            self.rng.bit_generator.state = share_from_main(self.rng.bit_generator.state, self.dist)
            self.replay.refresh()
        return result

    # ------------------------------------------------------------------------ phase 1: collect

    def collect(self, num_steps: int) -> dict[str, Any]:
        """Acts ``num_steps`` steps in the real train env with the actor-critic; stores them."""
        if self.collector is None:
            self.collector = Collector.from_config(self.config, seed=int(self.rng.integers(2**31)))
        return self.collector.collect(
            self.model, self.actor_critic, self.replay, num_steps, lambda: self.stop_requested
        )

    # ---------------------------------------------------------------------- phase 2: tokenizer

    def train_tokenizer(self, epoch: int) -> dict[str, Any]:
        """``steps_per_epoch`` steps of the VQ-VAE loss on uniformly sampled single frames."""
        cfg = self.config.tokenizer
        tokenizer, optimizer = self.model.tokenizer.train(), self.optimizers["tokenizer"]
        rows, losses = rank_slice(cfg.batch_size, self.dist), []
        generator = None
        if self.code_restarter is not None:  # the same on every rank: drawn from the shared rng
            seed = int(self.rng.integers(2**31))
            generator = torch.Generator(device=self.device).manual_seed(seed)
        background = None
        if cfg.foreground_weight > 0:  # the game's static picture, from the frames seen so far
            sample = self.replay.sample_frames(BACKGROUND_FRAMES, self.rng).frames(self.device)
            background = sample.median(dim=0).values  # (3, H, W)
        for _ in self._progress(range(cfg.steps_per_epoch), "tokenizer"):
            frames = self.replay.sample_frames(cfg.batch_size, self.rng, rows).frames(self.device)
            weights = None
            if background is not None:
                weights = foreground_weights(frames, background, cfg.foreground_weight)
            loss_fn = functools.partial(
                tokenizer_loss, frames=frames, beta=cfg.beta, perceptual=self.lpips,
                pixel_weights=weights,
            )  # fmt: skip
            output = self.tokenizer_ddp(frames)
            loss, metrics = loss_fn(output)
            clipped_step(loss, optimizer, tokenizer, cfg.grad_clip)  # DDP averaged the grads
            if self.code_restarter is not None:
                self.code_restarter.observe(output.tokens)
                restarted = self.code_restarter.step(tokenizer, output.z, generator, self.dist)
                metrics["restarted_codes"] = float(restarted)
            if self.config.common.track_progress:  # same batch, same (deterministic) mode
                with torch.no_grad():
                    after, _ = loss_fn(tokenizer(frames))
                metrics.update(check_before=loss.item(), check_after=after.item())
            losses.append(average_metrics(metrics, self.dist, 1 / self.dist.world_size))
        tokenizer.eval()
        check_in_sync(tokenizer, "tokenizer", self.dist)
        return _summary(losses)

    # -------------------------------------------------------------------- phase 3: world model

    def train_world_model(self, epoch: int) -> dict[str, Any]:
        """Steps of the three cross-entropies on right-padded segments (tokenizer in eval mode)."""
        cfg = self.config.world_model
        tokenizer, wm = self.model.tokenizer.eval(), self.model.world_model.train()
        optimizer = self.optimizers["world_model"]
        context = self.model.config.world_model.context_length
        rows, losses = rank_slice(cfg.batch_size, self.dist), []
        cached = self._replay_tokens(epoch, ("world_model", "actor_critic"))
        for _ in self._progress(range(cfg.steps_per_epoch), "world model"):
            batch = self.replay.sample_segments(
                cfg.batch_size, cfg.segment_length, self.rng, pad="right", rows=rows
            ).to_torch(self.device)
            b, t = batch.mask.shape
            if cached is not None and batch.index is not None:  # the same tokens, looked up
                tokens = cached.lookup(batch.index, batch.mask)  # (B, T, K)
            else:
                with torch.no_grad():
                    frames = frames_to_tensor(batch.obs.flatten(0, 1))  # (B*T, 3, H, W)
                    tokens = tokenizer.encode(frames).tokens.unflatten(0, (b, t))  # (B, T, K)
            codebook = tokenizer.codebook.detach()
            dreamed, counted = None, None
            if cfg.dreamed_heads_weight > 0 or cfg.dreamed_obs_weight > 0:  # frames dreamed
                dreamed = dreamed_frames(
                    self.model.world_model,
                    tokens,
                    batch.actions,
                    batch.mask,
                    codebook,
                    context,
                    steps=cfg.dreamed_steps,
                    frames_of=self.model.segment_frames,
                )  # (B, T, K)
            if dreamed is not None and cfg.dreamed_heads_match > 0:  # blocks the heads learn on
                tok = self.model.config.tokenizer
                counted = matching_blocks(
                    dreamed,
                    tokens,
                    batch.obs,
                    tok.latent_size,
                    cfg.dreamed_heads_match,
                    row_offset=tok.row_offset,
                )  # (B, T)
            loss_fn = functools.partial(
                self._wm_loss, tokens, batch, codebook, context, dreamed, counted
            )
            before = self._eval_loss(wm, loss_fn) if self.config.common.track_progress else None
            loss, metrics = loss_fn()
            # Each rank's loss is a mean over its own predicted blocks; weighted by its share of
            # the global count, the averaged gradient is that of the global batch's mean.
            share = self._share(batch.mask, context)
            if self.dist.is_distributed:
                loss = loss * (share * self.dist.world_size)
            clipped_step(loss, optimizer, wm, cfg.grad_clip)  # DDP averaged the gradients
            if before is not None:  # same batch, eval mode (no dropout) before and after
                metrics.update(check_before=before, check_after=self._eval_loss(wm, loss_fn))
            losses.append(average_metrics(metrics, self.dist, share))
        wm.eval()
        check_in_sync(wm, "world model", self.dist)
        return _summary(losses)

    def _share(self, mask: torch.Tensor, context: int) -> float:
        """This rank's share of the global batch's predicted blocks (1.0 for one process)."""
        if not self.dist.is_distributed:
            return 1.0
        return global_share(int(predicted_blocks(mask, context).sum()), self.dist)

    # ------------------------------------------------------------------- phase 4: actor-critic

    def train_actor_critic(self, epoch: int) -> dict[str, Any]:
        """Steps of the actor-critic loss on imagined trajectories (world model in eval mode)."""
        cfg = self.config.actor_critic
        self.model.eval()
        ac, optimizer = self.actor_critic.train(), self.optimizers["actor_critic"]
        rows = rank_slice(cfg.batch_size, self.dist)
        if self.imagination is None:  # this rank's trajectories
            self.imagination = Imagination(
                self.model,
                rows.stop - rows.start,
                cfg.dream_temperature,
                cfg.dream_event_temperature,
            )
        context = self.model.config.world_model.context_length
        losses = []
        cached = self._replay_tokens(epoch, ("actor_critic",))
        for _ in self._progress(range(cfg.steps_per_epoch), "actor-critic"):
            batch = self.replay.sample_segments(
                cfg.batch_size, cfg.burn_in + 1, self.rng, pad="left",
                min_real=max(3, context), rows=rows,
            ).to_torch(self.device)  # fmt: skip
            tokens = None
            if cached is not None and batch.index is not None:
                tokens = cached.lookup(batch.index, batch.mask)  # (B, T, K)
            start = self.imagination.start_from(
                ac, batch, cfg.burn_in_actions, tokens, cfg.real_history
            )
            seed = int(self.rng.integers(2**31))  # shared: row i dreams as in one process
            rollout = self.imagination.rollout(
                ac, start, self.config.imagined_steps, seed=seed, first_row=rows.start
            )
            loss, metrics = self._ac_loss(rollout.logits, rollout.values, rollout)
            clipped_step(loss, optimizer, ac, cfg.grad_clip, self.dist)
            if self.config.common.track_progress:
                before, after = objective_before_after(
                    ac, rollout, self.model.tokenizer.codebook, cfg.gamma, cfg.lambda_,
                    cfg.entropy_weight,
                )  # fmt: skip
                metrics.update(check_before=before, check_after=after)
            metrics["imagined_reward"] = rollout.rewards.mean().item()
            losses.append(average_metrics(metrics, self.dist, 1 / self.dist.world_size))
            self.last_dream = rollout.tokens[0]  # (T, K) constants, for TensorBoard
        ac.eval()
        check_in_sync(ac, "actor-critic", self.dist)
        return _summary(losses)

    # -------------------------------------------------------------- tokens of the replay frames

    cache_replay_tokens = True
    """The world-model and actor-critic phases look their frames' tokens up in
    :class:`rem_train.batches.ReplayTokens` when encoding every replay frame once costs fewer
    encoded frames than the phases' draws (the ``cpu`` preset: always); False encodes the drawn
    frames at every step, as before 2026-11-30."""

    replay_tokens: ReplayTokens | None = None
    """The tokens of the replay frames (made at first use, kept in memory only)."""

    def _replay_tokens(self, epoch: int, phases: tuple[str, ...]) -> ReplayTokens | None:
        """The replay frames' tokens under the current tokenizer, brought up to date, or None.

        None (encode the drawn frames instead) when bringing them up to date would encode more
        frames than ``phases`` of this epoch draw: the first phase (the caller) and those after
        it that train in ``epoch``. The tokenizer must not change while the result is in use.
        """
        if not self.cache_replay_tokens:
            return None
        cfg, ranks = self.config, self.dist.world_size
        wm, ac = cfg.world_model, cfg.actor_critic
        draws = {  # frames one rank's steps of each phase draw in an epoch
            "world_model": (wm, wm.steps_per_epoch * wm.batch_size // ranks * wm.segment_length),
            "actor_critic": (ac, ac.steps_per_epoch * ac.batch_size // ranks * (ac.burn_in + 1)),
        }
        drawn = sum(
            frames
            for i, (phase, frames) in enumerate(draws[name] for name in phases)
            if i == 0 or epoch > phase.start_after_epoch
        )
        if self.replay_tokens is None:
            self.replay_tokens = ReplayTokens(ENCODE_CHUNK)
        if self.replay_tokens.stale_frames(self.model.tokenizer, self.replay) > drawn:
            return None
        self.replay_tokens.update(self.model.tokenizer, self.replay)
        return self.replay_tokens

    def _ac_loss(self, logits: torch.Tensor, values: torch.Tensor, rollout: Any) -> Any:
        cfg = self.config.actor_critic
        return actor_critic_loss(
            logits, values, rollout.actions, rollout.rewards, rollout.ends,
            cfg.gamma, cfg.lambda_, cfg.entropy_weight,
        )  # fmt: skip

    def _wm_loss(
        self,
        tokens: torch.Tensor,
        batch: Any,
        codebook: torch.Tensor,
        context: int,
        dreamed_tokens: torch.Tensor | None = None,
        dreamed_blocks: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.config.world_model
        dreamed = None
        if dreamed_tokens is None:
            frames = self.model.segment_frames(tokens)  # None without an event reader
            output = self.world_model_ddp(tokens, batch.actions, codebook, frames=frames)
        else:  # one forward of both: real segments first, then their dreamed copies
            both_tokens = torch.cat([tokens, dreamed_tokens])
            frames = self.model.segment_frames(both_tokens)
            both = self.world_model_ddp(
                both_tokens, batch.actions.repeat(2, 1), codebook, frames=frames
            )  # (2B, T, ...)
            b = tokens.shape[0]
            output = WorldModelOutput(*(x[:b] for x in both))
            dreamed = WorldModelOutput(*(x[b:] for x in both))
        weights = None
        if cfg.moving_weight > 0:
            tok = self.model.config.tokenizer
            weights = moving_patch_weights(
                batch.obs,
                tok.latent_size,
                cfg.moving_weight,
                moving_from=cfg.moving_from,
                row_offset=tok.row_offset,
            )
        return world_model_loss(
            output, tokens, batch.rewards, batch.ends, batch.mask, context, weights,
            cfg.end_weight, dreamed, cfg.dreamed_heads_weight, cfg.dreamed_obs_weight,
            dreamed_blocks,
        )  # fmt: skip

    @staticmethod
    def _eval_loss(module: nn.Module, loss_fn: Any) -> float:
        """``loss_fn()`` in eval mode without gradient (then back to train mode)."""
        module.eval()
        with torch.no_grad():
            value = loss_fn()[0].item()
        module.train()
        return value

    # ------------------------------------------------------------------------------- helpers

    def _progress(self, iterable: Any, name: str) -> Any:
        """Iterates (with a progress bar on a terminal); raises TrainingStoppedError on SIGTERM."""
        if self.config.common.progress_bars and sys.stderr.isatty():
            try:
                from tqdm import tqdm
            except ImportError:
                pass
            else:
                iterable = tqdm(iterable, desc=name, leave=False)
        for item in iterable:
            self._check_stop()
            yield item

    def _check_stop(self) -> None:
        """Raises TrainingStoppedError (on every rank, if any rank got SIGTERM)."""
        if any_rank(self.stop_requested, self.dist):
            raise TrainingStoppedError(
                f"stopped by SIGTERM during epoch {self.epoch + 1}; the replay buffer and the "
                f"checkpoint of epoch {self.epoch} are on disk: continue with --resume "
                f"{self.run_dir}"
            )

    def _request_stop(self, signum: int, frame: Any) -> None:
        self.stop_requested = True

    @torch.no_grad()
    def _log_images(self, epoch: int) -> None:
        if self.log.writer is None or self.replay.num_steps == 0:
            return
        frames = self.replay.sample_frames(8, np.random.default_rng(epoch)).frames(self.device)
        reconstruction = self.model.tokenizer(frames).reconstruction.add(1).div(2)
        self.log.images("tokenizer/reconstructions", torch.cat([frames, reconstruction], -2), epoch)
        if self.last_dream is not None:
            dream = self.model.tokenizer.decode_tokens(self.last_dream, check_values=False)
            self.log.images("actor_critic/imagined_rollout", dream, epoch)

    # ------------------------------------------------------------------ checkpoints and export

    def _modules(self) -> dict[str, nn.Module]:
        return {"model": self.model, "actor_critic": self.actor_critic}

    def _save(self, keep_numbered: bool) -> None:
        extra = {
            "wall_time": self.wall_time,
            "last_eval": None if self.last_eval is None else self.last_eval._asdict(),
        }
        save_checkpoint(
            self.run_dir / "checkpoints", self.epoch, self._modules(), self.optimizers,
            self.rng, extra, keep_numbered,
        )  # fmt: skip

    def _load(self, folder: Path) -> None:
        checkpoint = load_checkpoint(folder, self.device)
        for name, module in self._modules().items():
            module.load_state_dict(checkpoint.modules[name])
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(checkpoint.optimizers[name])
            for group in optimizer.param_groups:  # the state dict brought the saved rate back;
                group["lr"] = getattr(self.config, name).lr  # a resume may have changed it
        restore_rng(checkpoint.rng["state"], checkpoint.rng["tensors"], self.rng)
        self.epoch = checkpoint.epoch
        self.wall_time = float(checkpoint.extra.get("wall_time", 0.0))
        if checkpoint.extra.get("last_eval") is not None:
            self.last_eval = EvalResult(**checkpoint.extra["last_eval"])
        self.resumed_fingerprint = rng_fingerprint(self.rng)
        self.log.info(
            f"loaded the checkpoint of epoch {self.epoch} (rng {self.resumed_fingerprint})"
        )

    def record_config_changes(self, changes: list[str]) -> None:
        """Appends ``changes`` (made by a resume, before the next epoch) to the run's record."""
        line = json.dumps({"after_epoch": self.epoch, "changes": changes})
        with (self.run_dir / CONFIG_CHANGES_FILE).open("a") as record:
            record.write(line + "\n")

    def export(self, folder: str | os.PathLike[str] | None = None) -> Path:
        """Exports the model, start contexts, manifest and actor-critic (default ``run/export``)."""
        folder = self.run_dir / "export" if folder is None else Path(folder)
        info = {
            "command": self.command,
            "preset": self.config.preset,
            "wall_time_s": self.wall_time,
            "burn_in_actions": self.config.actor_critic.burn_in_actions,
            "lpips": self.lpips is not None,
        }
        changes = self.run_dir / CONFIG_CHANGES_FILE
        if changes.is_file():  # what resumes changed, and after which epoch
            info["config_changes"] = [json.loads(x) for x in changes.read_text().splitlines()]
        warm_start = self.run_dir / WARM_START_FILE
        if warm_start.is_file():  # the runs this one's weights came from, oldest first
            record = json.loads(warm_start.read_text())
            info["init_from"] = {"source": record["source"], "parts": record["parts"]}
            info["lineage"] = record["lineage"]
        path = export_run(
            folder, self.model, self.actor_critic, self.replay, np.random.default_rng(0),
            self.epoch, info, self.last_eval,
        )  # fmt: skip
        self.log.info(f"exported the model to {path}")
        return path

    def close(self) -> None:
        """Closes the env, the dream env, the replay buffer and the log."""
        if self.collector is not None:
            self.collector.close()
            self.collector = None
        if self.imagination is not None:
            self.imagination.close()
            self.imagination = None
        self.replay.close()
        self.log.close()


def _summary(metrics: list[dict[str, float]]) -> dict[str, Any]:
    """Means over the epoch's steps, plus every step's total loss (``steps``)."""
    keys = metrics[0].keys() if metrics else ()
    out: dict[str, Any] = {k: float(np.mean([m[k] for m in metrics])) for k in keys}
    out["steps"] = [m["total"] for m in metrics]
    if metrics and "check_after" in metrics[0]:  # per-step lists, not means
        out["check_before"] = [m["check_before"] for m in metrics]
        out["check_after"] = [m["check_after"] for m in metrics]
    out["num_steps"] = len(metrics)
    if not all(math.isfinite(v) for v in out["steps"]):
        raise FloatingPointError(f"a training loss became non-finite: {out['steps']}")
    return out
