#!/usr/bin/env bash
# The embedded default, end to end (offline; the corpus is synthesised on this machine):
#   recipes/demo/run.sh [--stage N] [--stop-stage M] [--workdir DIR] [any option of recipes/adapt_driver.sh]
# Stage 1: build the offline multi-speaker corpus, check its speakers, take the target speaker's clips; build the
#   same speakers reading diverse English (<workdir>/corpus_diverse) for the last pretraining run.
# Stage 2: pretrain the multi-speaker base model as the shipped one was made, in four runs: <workdir>/base_model.1,
#   <workdir>/base_model.2 and .3 each from the previous one's weights, then <workdir>/base_model from those on the
#   diverse corpus (about 4.6 h on 2 CPU cores; resumable: re-run to continue).
# Stage 3: score that model's voices with Griffin-Lim and with WORLD, and write its model card.
# Stages 4-6: K-FAC of the pretraining data, plain LoRA and LoRA + K-FAC, their evaluation; with --model
#   (default: the shipped model, which stage 2 reproduces; --model <workdir>/base_model takes yours).
# Stage 7: the headline sweep, tts-adapt sweep --out <workdir>/sweep --publish docs/sweep (15 cells, hours of CPU).
# Finished stages leave a .done marker in the work dir and are skipped.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
workdir=work/demo
args=("$@")
for ((i = 0; i + 1 < ${#args[@]}; i++)); do [[ ${args[i]} == --workdir ]] && workdir=${args[i + 1]}; done

exec "$root/recipes/adapt_driver.sh" --recipe demo --workdir "$workdir" \
  --config "$root/configs/demo.yaml" \
  --corpus-config "$root/configs/demo_corpus.yaml" \
  --pretrain-config "$root/configs/demo_pretrain_stage1.yaml,$root/configs/demo_pretrain_stage2.yaml,$root/configs/demo_pretrain_stage3.yaml,$root/configs/demo_pretrain_stage4.yaml" \
  --pretrain-data ",,,$workdir/corpus_diverse" \
  --extra-corpus "$workdir/corpus_diverse=$root/configs/demo_corpus_diverse.yaml" \
  --data "$workdir/corpus" --layout tts_adapt \
  --headline-sweep yes --publish "$root/docs/sweep" \
  "$@"
