#!/usr/bin/env bash
# The seed paper's experiment on VCTK 0.92 with coqui's VCTK VITS: K-FAC of the model's pretraining speakers
# (VCTK, N utterances: curvature.num_utterances in configs/vctk.yaml, 10 to 10,000), speaker p248 adapted
# from 100 clips (target.clips, 50-100) with plain LoRA and with LoRA + K-FAC, forgetting measured on the
# other VCTK speakers, then the strategy x lambda sweep.
#   recipes/vctk/run.sh [--data downloads/VCTK-Corpus-0.92] [--stage N] [--stop-stage M]
#                       [--model tts_models/en/vctk/fast_pitch | <downloaded model folder>]
#                       [--curvature-data downloads/LibriTTS/train-clean-100 --curvature-layout libritts]
#                       [any option of recipes/adapt_driver.sh]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
exec "$root/recipes/adapt_driver.sh" --recipe vctk \
  --config "$root/configs/vctk.yaml" \
  --model tts_models/en/vctk/vits \
  --data downloads/VCTK-Corpus-0.92 --layout vctk \
  "$@"
