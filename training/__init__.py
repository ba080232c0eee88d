"""REM's training pipeline: real Atari env, replay buffer, actor-critic, losses and LPIPS.

The pieces, one concept per module (the trainer and the ``rem-train`` CLI build on them):

* :mod:`rem_env.atari`: the real env with REM's preprocessing (``make_atari_env``,
  ``make_atari_vector_env``; train and test variants, REM_SPEC 2). It lives in ``rem_env``
  because ``rem-env fidelity`` plays the real game too.
* :mod:`rem_train.replay`: crash-safe on-disk episode storage and uniform window sampling with
  padding masks (``ReplayBuffer``; REM_SPEC 7); its typed batches live in
  :mod:`rem_train.batches` (also importable from :mod:`rem_train.replay`).
* :mod:`rem_env.models.actor_critic`: REM's latent-space actor-critic with explicit LSTM state and
  burn-in (``ActorCritic``; REM_SPEC 6).
* :mod:`rem_train.losses`: tokenizer, world-model and actor-critic losses and lambda-returns,
  as pure functions.
* :mod:`rem_train.lpips`: LPIPS-VGG16 in plain torch; ``python -m rem_train.lpips fetch``
  downloads and converts its weights once.
* :mod:`rem_train.config`: the typed ``TrainConfig`` tree and its presets ``atari100k``,
  ``cpu`` and ``smoke``.
* :mod:`rem_train.collect`, :mod:`rem_train.imagination`, :mod:`rem_train.evaluate`: acting in the
  real env, rolling the actor-critic through ``DreamVectorEnv``, the Atari 100K evaluation.
* :mod:`rem_train.trainer`: the four-phase epoch (``Trainer``); :mod:`rem_train.checkpoint` its
  atomic checkpoints and run folders; :mod:`rem_train.export` the final model folder;
  :mod:`rem_train.run_log` its logs; :mod:`rem_train.cli` the ``rem-train`` command
  (also ``python -m rem_train``).
* :mod:`rem_train.distributed`: data-parallel runs under ``torchrun`` (batches split over the
  ranks, gradients averaged; rank 0 alone collects, evaluates and writes).

Dependencies point one way: ``training`` imports ``rem_env``, never the reverse.
"""
