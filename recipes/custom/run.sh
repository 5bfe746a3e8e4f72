#!/usr/bin/env bash
# Your own voice: a folder of clips (wav + same-named txt, or metadata.csv) and a folder of held-out clips
# of the same speaker, cloned into any model. By default the shipped model, with its pretraining corpus (the
# embedded corpus, built in stage 1 if missing) for the curvature and the forgetting measure; for a zoo model
# give its pretraining data instead, e.g.
#   --model tts_models/en/vctk/vits --data downloads/VCTK-Corpus-0.92 --layout vctk --corpus-config ""
#   recipes/custom/run.sh --target-dir my_clips --heldout-dir my_heldout [--stage N] [--stop-stage M]
#                         [any option of recipes/adapt_driver.sh]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
if [[ " $* " != *" --target-dir "* || " $* " != *" --heldout-dir "* ]]; then
  echo "$0: give --target-dir (your adaptation clips) and --heldout-dir (held-out clips of the same speaker)" >&2
  exit 2
fi
exec "$root/recipes/adapt_driver.sh" --recipe custom \
  --config "$root/configs/custom.yaml" \
  --data work/corpus --layout tts_adapt --corpus-config "$root/configs/demo_corpus.yaml" \
  "$@"
