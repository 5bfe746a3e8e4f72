#!/usr/bin/env bash
# The embedded default, end to end, in stages (ESPnet style):
#   recipes/demo/run.sh [--stage N] [--stop-stage M] [--workdir DIR] [--config FILE]
# Stage 1: build the offline multi-speaker corpus and check its speakers.
# Stage 2: pretrain the multi-speaker base model (resumable: re-run to continue).
# Stage 3: score the model's voices and write its model card.
# Finished stages leave a .done marker in the work dir and are skipped.
set -euo pipefail
cd "$(dirname "$0")/../.."

stage=1
stop_stage=100
workdir=work/demo
config=configs/demo_corpus.yaml
pretrain_config=configs/demo_pretrain.yaml
model=$workdir/base_model
while [[ $# -gt 0 ]]; do
  case "$1" in
    --stage) stage=$2; shift 2 ;;
    --stop-stage) stop_stage=$2; shift 2 ;;
    --workdir) workdir=$2; shift 2 ;;
    --config) config=$2; shift 2 ;;
    --pretrain-config) pretrain_config=$2; shift 2 ;;
    --model) model=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
tts=${TTS_ADAPT:-tts-adapt}
mkdir -p "$workdir"
log() { printf '%s [demo] %s\n' "$(date '+%F %T')" "$*" | tee -a "$workdir/run.log"; }


if (( stage <= 1 && stop_stage >= 1 )) && [[ ! -f $workdir/.corpus.done ]]; then
  log "stage 1: corpus"
  $tts corpus build --out "$workdir/corpus" \
    --config "$config"
  $tts corpus check "$workdir/corpus" --plot "$workdir/corpus/speaker_similarity.png" | tee -a "$workdir/run.log"
  touch "$workdir/.corpus.done"
fi
if (( stage <= 2 && stop_stage >= 2 )) && [[ ! -f $workdir/.pretrain.done ]]; then
  log "stage 2: pretraining into $model (resumes if interrupted)"
  $tts pretrain --data "$workdir/corpus" --out "$model" --config "$pretrain_config"
  touch "$workdir/.pretrain.done"
fi

if (( stage <= 3 && stop_stage >= 3 )); then
  log "stage 3: evaluating $model and writing its model card"
  $tts evaluate --model "$model" --data "$workdir/corpus" --out "$workdir/base_eval" --write-card
fi
log "done (stages $stage..$stop_stage)"
