#!/usr/bin/env bash
# LJSpeech 1.1's single voice cloned into coqui's multi-speaker VCTK VITS: LJSpeech gives the target's clips,
# VCTK (the model's pretraining data) the K-FAC and the old speakers on which forgetting is measured.
#   recipes/ljspeech/run.sh [--data downloads/LJSpeech-1.1] [--eval-data downloads/VCTK-Corpus-0.92]
#                           [--stage N] [--stop-stage M] [any option of recipes/adapt_driver.sh]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
exec "$root/recipes/adapt_driver.sh" --recipe ljspeech \
  --config "$root/configs/ljspeech.yaml" \
  --model tts_models/en/vctk/vits \
  --data downloads/LJSpeech-1.1 --layout ljspeech \
  --eval-data downloads/VCTK-Corpus-0.92 --eval-layout vctk \
  "$@"
