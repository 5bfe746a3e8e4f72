#!/usr/bin/env bash
# The embedded default, end to end, in stages (ESPnet style):
#   recipes/demo/run.sh [--stage N] [--stop-stage M] [--workdir DIR] [--config FILE]
# Stage 1: build the offline multi-speaker corpus and check its speakers.
# Finished stages leave a .done marker in the work dir and are skipped.
set -euo pipefail
cd "$(dirname "$0")/../.."

stage=1
stop_stage=100
workdir=work/demo
config=configs/demo_corpus.yaml
while [[ $# -gt 0 ]]; do
  case "$1" in
    --stage) stage=$2; shift 2 ;;
    --stop-stage) stop_stage=$2; shift 2 ;;
    --workdir) workdir=$2; shift 2 ;;
    --config) config=$2; shift 2 ;;
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
log "done (stages $stage..$stop_stage)"
