#!/usr/bin/env bash
# The GPU measurements of the Benchmarks page, in one short run for a lent GPU machine.
#
# Usage (from the repository root):
#   benchmarks/gpu_check.sh OUT_DIR
#
# Writes into OUT_DIR (at most 8 files, so that a remote runner can send them all back):
#   device.txt          nvidia-smi and torch's view of the device
#   ball.tar.part-*     the Breakout training run's export folder and metrics.jsonl, a tar
#                       archive split into parts of at most 15 MiB (two for the breakout model)
#   data.tar            the .json/.jsonl files below
#   imagination.md/json benchmarks/imagination.py: POP float32 and bf16 autocast, tokens and rgb,
#                       at the batch sizes of $SIZES
#   dream_env.md/json   benchmarks/dream_env.py: DreamVectorEnv float32 and bf16, numpy output
#   train_metrics.jsonl rem-train's metrics of $TRAIN_EPOCHS epochs in which every phase runs
#                       (collect, tokenizer, world model, actor-critic): "timings" holds each
#                       phase's wall seconds per epoch
#   compile.md          benchmarks/imagination.py again: the POP step through torch.compile
#                       (paths $COMPILE_PATHS, mode reduce-overhead on CUDA: CUDA graphs) beside
#                       the plain POP step, a table per batch size of $COMPILE_SIZES; last, as
#                       compiling takes a while
# Each file is complete as soon as its step ends (the JSON records are added to data.tar one
# step at a time), so a runner that stops the script at a time limit gets every finished step.
#   log.txt             everything the steps printed, and which step failed if one did; with
#                       the profiler's operator tables of the imagination cells at the smallest
#                       and the largest batch size ($PROFILE_STEPS steps each; 0: none)
#
# Settings (environment variables):
#   PYTHON (python3), DEVICE (cuda), PRESET (paper), SIZES ("64 1024 4096"), STEPS (20),
#   PROFILE_STEPS (3), CELL_SECONDS (5), TRAIN_PRESET (atari100k), TRAIN_EPOCHS (2),
#   TRAIN_ENV_STEPS (1000; real steps collected per epoch, enough for the phases' batches),
#   TRAIN_STEPS (20; gradient steps per epoch of every phase; empty: the preset's), SKIP_TRAIN
#   (0), COMPILE_PATHS ("bf16-compile"; "compile" is float32; empty skips the step),
#   COMPILE_SIZES ($SIZES; each size compiles anew), COMPILE_BACKEND (inductor; eager only
#   checks the capture, quickly, as the smoke test does), BUDGET_SECONDS (560, counted from the
#   script's start: after the Breakout run, each table step starts only while its allowance is
#   left of it, and is skipped with a line in log.txt otherwise; the allowances, in seconds:
#   IMAGINATION_SECONDS 120, DREAM_ENV_SECONDS 60, TRAIN_SECONDS 90, COMPILE_SECONDS 130 per
#   compiled size: on an H200 the first size ran 114 s), BALL_MINUTES (5; time budget of the
#   Breakout training run, 0 skips it; the run ends after the epoch that passes it, then
#   exports), BALL_PRESET (breakout),
#   BALL_EPOCHS (400), BALL_INIT (rem_env/weights/Breakout, the bundled model;
#   warm_starts/Breakout-vqvae is the VQ-VAE model bundled before it; empty: from scratch):
#   the run gets the init's shape from its config.json (a patch tokenizer, its RetNet
#   layers, a frame conv, event reader or event window, not in REM: python -c "from
#   rem_train.warm_start import architecture_options"), BALL_LAYERS (empty: the init's, or
#   the preset's without one; a number: --world-model-layers, a deeper world model grown
#   from the init's), BALL_PARTS (all where BALL_INIT has an actor-critic, else
#   tokenizer,world_model), BALL_MOVING_WEIGHT (10: --world-model.moving-weight, as the
#   VQ-VAE model was trained), BALL_OPTIONS (more rem-train options for the run, split on
#   spaces; by default what a GPU affords: 6,000 real steps an epoch, 80% of the episodes
#   scripted, and from the first epoch on 250 world-model steps of batch 128 at learning
#   rate 1e-4, with the VQ-VAE model's end weight 3 and reward and end heads that learn
#   from dreamed frames too, and no actor-critic training; empty: none)
# A CPU smoke run of the script itself (the test suite does this):
#   DEVICE=cpu PRESET=tiny SIZES="1 2" STEPS=1 TRAIN_PRESET=smoke TRAIN_EPOCHS=1 \
#     TRAIN_ENV_STEPS=60 TRAIN_STEPS=2 COMPILE_SIZES=1 COMPILE_BACKEND=eager BALL_PRESET=smoke \
#     BALL_INIT= BALL_OPTIONS= BALL_MINUTES=0.0001 benchmarks/gpu_check.sh /tmp/gpu_check
# On a lent GPU (within a 10-minute command; the defaults fit in about 9):
#   timeout -k 5 580 benchmarks/gpu_check.sh "$OUT"
# (A remote runner that copies the checkout may limit its size: warm_starts/ is not needed.)
#
# Each step runs even when an earlier one failed; the exit status is 1 if any failed.
# rem_env needs gymnasium, safetensors and huggingface_hub, the training step ale-py too: carry
# missing ones as wheels to a machine without them (nothing is installed by this script).
set -uo pipefail

out=${1:?usage: benchmarks/gpu_check.sh OUT_DIR}
py=${PYTHON:-python3}
device=${DEVICE:-cuda}
preset=${PRESET:-paper}
read -r -a sizes <<<"${SIZES:-64 1024 4096}"
read -r -a compile_sizes <<<"${COMPILE_SIZES:-${sizes[*]}}"
steps=${STEPS:-20}
cell=${CELL_SECONDS:-5}
train_preset=${TRAIN_PRESET:-atari100k}
train_epochs=${TRAIN_EPOCHS:-2}
train_env_steps=${TRAIN_ENV_STEPS:-1000}
here=$(cd "$(dirname "$0")" && pwd)
# The checkout's packages import without an install (a lent machine starts bare): rem_env from
# the checkout's root, the trainer under its import name rem_train (the folder training/).
shim=$(mktemp -d)
ln -s "$(dirname "$here")/training" "$shim/rem_train"
export PYTHONPATH="$(dirname "$here"):$shim${PYTHONPATH:+:$PYTHONPATH}"

mkdir -p "$out"
log="$out/log.txt"
: >"$log"
failed=0

step() {  # step NAME COMMAND...: runs the command, logs its stderr, notes a failure
    local name=$1
    shift
    echo "== $name: $*" >>"$log"
    local begin=$SECONDS
    if "$@" 2>>"$log"; then
        echo "== $name: done in $((SECONDS - begin)) s" >>"$log"
    else
        echo "== $name: FAILED (exit $?) after $((SECONDS - begin)) s" >>"$log"
        failed=1
    fi
}

describe_device() {
    if command -v nvidia-smi >/dev/null; then nvidia-smi || true; fi
    "$py" -c 'import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "threads", torch.get_num_threads())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(), torch.cuda.get_device_capability())'
}

step device describe_device >"$out/device.txt"

budget=${BUDGET_SECONDS:-560}
fits() {  # fits NAME SECONDS: whether a step needing SECONDS still fits the budget; logs a skip
    if ((SECONDS + $2 > budget)); then
        echo "== $1: skipped, $((budget - SECONDS)) s left of $budget" >>"$log"
        return 1
    fi
}

# A remote runner sends back at most 8 files: the JSON records travel as one archive, each
# added as soon as its step has written it.
keep_data() {  # keep_data NAME: moves $out/NAME into $out/data.tar
    [[ -f "$out/$1" ]] || return 0
    tar -C "$out" -rf "$out/data.tar" "$1" && rm -f "$out/$1"
}

# First, what a GPU is lent for most: a time-budgeted training run of the Breakout model,
# warm-started from the bundled model; its export comes back as a tar archive in parts of at
# most 15 MiB (reassemble: cat ball.tar.part-* | tar -x -C DIR).
GPU_BALL_OPTIONS="--common.env-steps-per-epoch 6000 --collect.scripted-share 0.8
    --world-model.start-after-epoch 0 --world-model.steps-per-epoch 250
    --world-model.batch-size 128 --world-model.lr 1e-4 --world-model.end-weight 3
    --world-model.dreamed-heads-weight 1 --actor-critic.start-after-epoch 1000000"
GPU_BALL_OPTIONS=${GPU_BALL_OPTIONS//$'\n'/ }
ball_minutes=${BALL_MINUTES:-5}
if [[ "$ball_minutes" != 0 ]]; then
    ball_epochs=${BALL_EPOCHS:-400}
    ball_init=${BALL_INIT-$(dirname "$here")/rem_env/weights/Breakout}
    init=()
    if [[ -n "$ball_init" ]]; then
        parts=${BALL_PARTS:-tokenizer,world_model}
        if [[ -z "${BALL_PARTS:-}" && -f "$ball_init/actor_critic.safetensors" ]]; then
            parts=all  # the init's actor-critic too, where it has one
        fi
        init=(--init-from "$ball_init" --init-parts "$parts")
        # The init's shape (a patch tokenizer, layers, parts not in REM): the run's is the same.
        if [[ -f "$ball_init/config.json" ]]; then
            read -r -a shape < <("$py" -c 'import json, sys
from rem_train.warm_start import architecture_options
print(" ".join(architecture_options(json.load(open(sys.argv[1])))))' "$ball_init/config.json")
            init+=("${shape[@]}")
        fi
    fi
    ball_layers=${BALL_LAYERS:-}
    if [[ -n "$ball_layers" ]]; then
        init+=(--world-model-layers "$ball_layers")
    fi
    read -r -a ball_options <<<"${BALL_OPTIONS-$GPU_BALL_OPTIONS}"
    init+=("${ball_options[@]}")
    ball=$(mktemp -d)
    step ball "$py" -m rem_train --preset "${BALL_PRESET:-breakout}" --device "$device" \
        --out "$ball/run" --epochs "$ball_epochs" --common.collect-epochs "$ball_epochs" \
        --max-minutes "$ball_minutes" --common.replay-fsync false \
        --world-model.moving-weight "${BALL_MOVING_WEIGHT:-10}" \
        --common.progress-bars false "${init[@]}" >>"$log"
    if [[ -d "$ball/run/export" ]]; then
        tar -C "$ball/run" -cf - export metrics.jsonl | split -b 15m - "$out/ball.tar.part-" ||
            failed=1
    else
        failed=1
    fi
    rm -rf "$ball"
fi

fits imagination "${IMAGINATION_SECONDS:-120}" &&
    step imagination "$py" "$here/imagination.py" --device "$device" --preset "$preset" \
        --batch-sizes "${sizes[@]}" --paths pop bf16 --steps "$steps" --warmup 3 \
        --max-seconds-per-cell "$cell" --json "$out/imagination.json" \
        --profile-steps "${PROFILE_STEPS:-3}" >"$out/imagination.md"
keep_data imagination.json

fits dream_env "${DREAM_ENV_SECONDS:-60}" &&
    step dream_env "$py" "$here/dream_env.py" --device "$device" --preset "$preset" \
        --num-envs "${sizes[@]}" --autocast bf16 --no-ale --steps "$steps" --warmup 3 \
        --max-seconds-per-cell "$cell" --json "$out/dream_env.json" >"$out/dream_env.md"
keep_data dream_env.json

if [[ "${SKIP_TRAIN:-0}" != 1 ]] && fits training "${TRAIN_SECONDS:-90}"; then
    phase_steps=()
    train_steps=${TRAIN_STEPS-20}
    if [[ -n "$train_steps" ]]; then
        for phase in tokenizer world-model actor-critic; do
            phase_steps+=(--"$phase".steps-per-epoch "$train_steps")
        done
    fi
    run=$(mktemp -d)
    step training "$py" -m rem_train --preset "$train_preset" --device "$device" \
        --out "$run/run" --epochs "$train_epochs" --common.collect-epochs "$train_epochs" \
        --common.env-steps-per-epoch "$train_env_steps" --common.eval-start-epoch 1000000 \
        --tokenizer.start-after-epoch 0 --world-model.start-after-epoch 0 \
        --actor-critic.start-after-epoch 0 --evaluation.num-envs 1 --evaluation.episodes 1 \
        --evaluation.final-episodes 1 --common.replay-fsync false "${phase_steps[@]}" >>"$log"
    cp "$run/run/metrics.jsonl" "$out/train_metrics.jsonl" 2>>"$log" || failed=1
    keep_data train_metrics.jsonl
    rm -rf "$run"
fi

read -r -a compile_paths <<<"${COMPILE_PATHS-bf16-compile}"
if ((${#compile_paths[@]})); then
    scratch=$(mktemp -d)
    : >"$out/compile.md"
    for size in "${compile_sizes[@]}"; do  # a table per size: each one done is kept
        fits "compile B=$size" "${COMPILE_SECONDS:-130}" || continue
        step compile "$py" "$here/imagination.py" --device "$device" --preset "$preset" \
            --batch-sizes "$size" --paths pop "${compile_paths[@]}" --steps "$steps" \
            --warmup 3 --max-seconds-per-cell "$cell" --json "$scratch/compile.json" \
            --compile-backend "${COMPILE_BACKEND:-inductor}" >>"$out/compile.md"
    done
    rm -rf "$scratch"
fi
rm -rf "$shim"
echo "== finished, failed=$failed" >>"$log"
exit "$failed"
