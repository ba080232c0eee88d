"""REM's training pipeline: real Atari env, replay buffer, actor-critic, losses and LPIPS.

The pieces, one concept per module (the trainer and the ``rem-train`` CLI build on them):

* :mod:`rem_env.atari`: the real env with REM's preprocessing (``make_atari_env``,
  ``make_atari_vector_env``; train and test variants, REM_SPEC 2). It lives in ``rem_env``
  because ``rem-env fidelity`` plays the real game too.
* :mod:`training.replay`: crash-safe on-disk episode storage and uniform window sampling with
  padding masks (``ReplayBuffer``; REM_SPEC 7); its typed batches live in
  :mod:`training.batches` (also importable from :mod:`training.replay`).
* :mod:`rem_env.models.actor_critic`: REM's latent-space actor-critic with explicit LSTM state and
  burn-in (``ActorCritic``; REM_SPEC 6).
* :mod:`training.losses`: tokenizer, world-model and actor-critic losses and lambda-returns,
  as pure functions.
* :mod:`training.lpips`: LPIPS-VGG16 in plain torch; ``python -m training.lpips fetch``
  downloads and converts its weights once.
* :mod:`training.config`: the typed ``TrainConfig`` tree and its presets ``atari100k``,
  ``cpu`` and ``smoke``.
* :mod:`training.collect`, :mod:`training.imagination`, :mod:`training.evaluate`: acting in the
  real env, rolling the actor-critic through ``DreamVectorEnv``, the Atari 100K evaluation.
* :mod:`training.trainer`: the four-phase epoch (``Trainer``); :mod:`training.checkpoint` its
  atomic checkpoints and run folders; :mod:`training.export` the final model folder;
  :mod:`training.run_log` its logs; :mod:`training.cli` the ``rem-train`` command
  (also ``python -m training``).
* :mod:`training.distributed`: data-parallel runs under ``torchrun`` (batches split over the
  ranks, gradients averaged; rank 0 alone collects, evaluates and writes).

Dependencies point one way: ``training`` imports ``rem_env``, never the reverse.
"""
