#!/usr/bin/env bash
# LibriTTS with coqui's YourTTS (trained on LibriTTS, among others): a test-clean speaker (1089) adapted from
# 50 clips; K-FAC of train-clean-100 (the model's pretraining speakers); forgetting on the train-clean-100
# speakers the model knows and, zero-shot, on the other test-clean speakers.
#   recipes/libritts/run.sh [--data downloads/LibriTTS] [--stage N] [--stop-stage M]
#                           [any option of recipes/adapt_driver.sh]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
data=downloads/LibriTTS
args=("$@")
for ((i = 0; i + 1 < ${#args[@]}; i++)); do [[ ${args[i]} == --data ]] && data=${args[i + 1]}; done

exec "$root/recipes/adapt_driver.sh" --recipe libritts \
  --config "$root/configs/libritts.yaml" \
  --model tts_models/multilingual/multi-dataset/your_tts \
  --data "$data" --layout libritts \
  --curvature-data "$data/train-clean-100" --curvature-layout libritts \
  "$@"
