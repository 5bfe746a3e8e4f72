#!/usr/bin/env bash
# The staged driver every recipe calls (ESPnet style): recipes/<name>/run.sh sets the dataset's values
# and passes them, and the user's own options, on to this script. Every option below can be given on the
# recipe's command line (the last one given wins).
#
#   stage 1  data: build the embedded corpus (--corpus-config) or check the dataset (tts-adapt corpus inspect),
#            then take the target speaker's adaptation and held-out clips (tts-adapt prepare-target)
#            unless --target-dir/--heldout-dir bring them
#   stage 2  pretrain the base model (only with --pretrain-config: the embedded default)
#   stage 3  score the pretrained model's voices and write its model card (only with --pretrain-config)
#   stage 4  fit the curvature of the pretraining data (tts-adapt fit-curvature)
#   stage 5  adapt twice: plain LoRA and LoRA under the curvature's Laplace penalty (tts-adapt adapt)
#   stage 6  evaluate both adapters: learning on the held-out clips, forgetting on old speakers (tts-adapt evaluate)
#   stage 7  sweep strategies x lambda (tts-adapt sweep): table.md, table.csv, pareto.png
#
# Settings (target speaker, clip counts, curvature N, adaptation and sweep) come from the recipe's YAML
# (--config), one section per command; --target-args/--curvature-args/--adapt-args/--eval-args/--sweep-args
# add flags that override it. A finished stage leaves <workdir>/.<stage>.done and is skipped when the recipe
# runs again; delete the marker (or the work dir) to redo it. The log is <workdir>/run.log.
set -euo pipefail

recipe=recipe
stage=1
stop_stage=100
workdir=
config=
model=                 # empty: the shipped base model
data=                  # dataset of the target speaker (and of the old speakers unless --eval-data)
layout=auto
eval_data=             # old (and unseen) speakers to measure forgetting on (default: --data)
eval_layout=
curvature_data=        # pretraining utterances for the curvature (default: --eval-data)
curvature_layout=
target_dir=            # your own adaptation clips (wav + txt) instead of a dataset speaker
heldout_dir=           # and held-out clips of the same speaker
max_clips=100          # most adaptation clips used (the first ones of the prepared folder)
corpus_config=         # build the embedded corpus into --data first
pretrain_config=       # pretrain a base model into <workdir>/base_model (stages 2-3); A.yaml,B.yaml: B starts
                       # from A's weights (tts-adapt pretrain --init-from <workdir>/base_model.1)
pretrain_data=         # the corpus of each pretraining run, in the order of --pretrain-config (an empty entry: --data)
extra_corpus=          # DIR=YAML: also build this embedded corpus in stage 1 (e.g. one a pretraining run reads)
publish=               # also copy the sweep's table and plot into this folder
headline_sweep=no      # yes: stage 7 is the embedded default's own sweep (its corpus in <workdir>/corpus, its grid)
device=                # --device of every command that runs a model (auto, cpu, cuda, cuda:N, mps; default: auto)
precision=             # --precision of pretraining and adaptation (fp32, bf16, fp16; default: fp32)
target_args=
curvature_args=
adapt_args=
eval_args=
sweep_args=
while [[ $# -gt 0 ]]; do
  [[ $# -ge 2 ]] || { echo "$0: option $1 needs a value" >&2; exit 2; }
  case "$1" in
    --recipe) recipe=$2 ;;
    --stage) stage=$2 ;;
    --stop-stage) stop_stage=$2 ;;
    --workdir) workdir=$2 ;;
    --config) config=$2 ;;
    --model) model=$2 ;;
    --data) data=$2 ;;
    --layout) layout=$2 ;;
    --eval-data) eval_data=$2 ;;
    --eval-layout) eval_layout=$2 ;;
    --curvature-data) curvature_data=$2 ;;
    --curvature-layout) curvature_layout=$2 ;;
    --target-dir) target_dir=$2 ;;
    --heldout-dir) heldout_dir=$2 ;;
    --max-clips) max_clips=$2 ;;
    --corpus-config) corpus_config=$2 ;;
    --pretrain-config) pretrain_config=$2 ;;
    --pretrain-data) pretrain_data=$2 ;;
    --extra-corpus) extra_corpus=$2 ;;
    --publish) publish=$2 ;;
    --headline-sweep) headline_sweep=$2 ;;
    --device) device=$2 ;;
    --precision) precision=$2 ;;
    --target-args) target_args=$2 ;;
    --curvature-args) curvature_args=$2 ;;
    --adapt-args) adapt_args=$2 ;;
    --eval-args) eval_args=$2 ;;
    --sweep-args) sweep_args=$2 ;;
    *) echo "$0: unknown option $1 (see the header of recipes/adapt_driver.sh)" >&2; exit 2 ;;
  esac
  shift 2
done

workdir=${workdir:-work/$recipe}
eval_data=${eval_data:-$data}
eval_layout=${eval_layout:-$layout}
curvature_data=${curvature_data:-$eval_data}
curvature_layout=${curvature_layout:-$eval_layout}
tts=${TTS_ADAPT:-tts-adapt}
mkdir -p "$workdir"
log() { printf '%s [%s] %s\n' "$(date '+%F %T')" "$recipe" "$*" | tee -a "$workdir/run.log"; }
fail() { log "error: $*"; exit 1; }
# one tts-adapt command, echoed to the log; its output goes to the terminal and the log
run() { log "\$ tts-adapt $*"; $tts "$@" 2>&1 | tee -a "$workdir/run.log"; }
wanted() { (( stage <= $1 && stop_stage >= $1 )); }
done_marker() { [[ -f $workdir/.$1.done ]]; }
mark_done() { touch "$workdir/.$1.done"; }

[[ -n $config && ! -f $config ]] && fail "config file not found: $config"
[[ -n $data || -n $corpus_config || -n $target_dir ]] || fail "give --data (the dataset root)"
[[ -n $target_dir && -z $heldout_dir ]] && fail "--target-dir needs --heldout-dir (held-out clips of the same speaker)"
[[ -n $curvature_data ]] || fail "give --curvature-data (pretraining utterances of the model) or --data"
cfg=(); [[ -n $config ]] && cfg=(--config "$config")
model_flag=(); [[ -n $model ]] && model_flag=(--model "$model")
dev=(); [[ -n $device ]] && dev=(--device "$device")              # commands that run a model
train=("${dev[@]}"); [[ -n $precision ]] && train+=(--precision "$precision")  # commands that train one
if [[ -z $target_dir ]]; then
  target_dir=$workdir/target/clips
  heldout_dir=$workdir/target/heldout
fi
curvature=$workdir/curvature.safetensors
log "stages $stage..$stop_stage in $workdir (model: ${model:-the shipped base model}; config: ${config:-defaults})"

# ----------------------------------------------------------------------------- 1: data
if wanted 1 && ! done_marker data; then
  if [[ -n $corpus_config ]]; then
    log "stage 1: building the embedded corpus in $data"
    run corpus build --out "$data" --config "$corpus_config"
    run corpus check "$data" --plot "$data/speaker_similarity.png"
  fi
  if [[ -n $extra_corpus ]]; then
    log "stage 1: building the embedded corpus in ${extra_corpus%%=*}"
    run corpus build --out "${extra_corpus%%=*}" --config "${extra_corpus#*=}"
  fi
  checked=()
  for pair in "$data|$layout" "$eval_data|$eval_layout" "$curvature_data|$curvature_layout"; do
    d=${pair%|*} lay=${pair##*|}
    [[ -z $d || " ${checked[*]} " == *" $d "* ]] && continue
    checked+=("$d")
    log "stage 1: checking $d ($lay layout)"
    run corpus inspect --data "$d" --layout "$lay" || fail "$d is not a usable dataset (see the message above)"
  done
  if [[ $target_dir == "$workdir/target/clips" ]]; then
    log "stage 1: taking the target speaker's clips from $data"
    # shellcheck disable=SC2086
    run prepare-target --data "$data" --layout "$layout" --out "$workdir/target" "${cfg[@]}" $target_args \
      || fail "could not take the target speaker's clips (see the message above)"
  fi
  mark_done data
fi

# ----------------------------------------------------------------------------- 2-3: pretraining (embedded default)
if [[ -n $pretrain_config ]]; then
  if wanted 2 && ! done_marker pretrain; then
    IFS=, read -r -a pretrain_configs <<< "$pretrain_config"
    IFS=, read -r -a pretrain_datas <<< "$pretrain_data"
    previous=
    for ((i = 0; i < ${#pretrain_configs[@]}; i++)); do
      out=$workdir/base_model
      ((i + 1 < ${#pretrain_configs[@]})) && out=$workdir/base_model.$((i + 1))
      run_data=${pretrain_datas[i]:-$data}
      log "stage 2: pretraining into $out on $run_data with ${pretrain_configs[i]}${previous:+, from the weights of $previous} (resumes if interrupted)"
      run pretrain --data "$run_data" --out "$out" --config "${pretrain_configs[i]}" ${previous:+--init-from "$previous"} \
        "${train[@]}" || fail "pretraining failed"
      previous=$out
    done
    mark_done pretrain
  fi
  if wanted 3 && ! done_marker card; then
    log "stage 3: scoring $workdir/base_model's voices (Griffin-Lim and WORLD) and writing its model card"
    # the shipped card's settings: all 8 held-out utterances of each speaker, one report per vocoder
    run evaluate --model "$workdir/base_model" --data "$data" --out "$workdir/base_eval" --per-speaker 8 \
      --write-card "${dev[@]}" || fail "scoring the model failed"
    run evaluate --model "$workdir/base_model" --data "$data" --out "$workdir/base_eval_world" --per-speaker 8 \
      --vocoder world --write-card "${dev[@]}" || fail "scoring the model with the WORLD vocoder failed"
    mark_done card
  fi
elif wanted 2 || wanted 3; then
  log "stages 2-3: skipped (this recipe adapts an already pretrained model)"
fi

# ----------------------------------------------------------------------------- 4: curvature
if wanted 4 && ! done_marker curvature; then
  log "stage 4: fitting the curvature on $curvature_data -> $curvature (resumes if interrupted)"
  # shellcheck disable=SC2086
  run fit-curvature "${model_flag[@]}" --data "$curvature_data" --layout "$curvature_layout" --out "$curvature" \
    "${cfg[@]}" "${dev[@]}" $curvature_args || fail "fitting the curvature failed (see the message above)"
  mark_done curvature
fi

# ----------------------------------------------------------------------------- 5: adapt
adapters=(lora lora_kfac)
if wanted 5; then
  for name in "${adapters[@]}"; do
    done_marker "adapt_$name" && continue
    out=$workdir/adapters/$name
    extra=(--strategy lora --lam 0)
    [[ $name == lora_kfac ]] && extra=(--curvature "$curvature")
    resume=(); [[ -f $out/checkpoint/state.pt ]] && resume=(--resume)
    log "stage 5: adapting $name -> $out"
    # shellcheck disable=SC2086
    run adapt "${model_flag[@]}" --target-dir "$target_dir" --out "$out" --max-clips "$max_clips" "${cfg[@]}" \
      "${extra[@]}" "${resume[@]}" "${train[@]}" $adapt_args || fail "adapting $name failed (see the message above)"
    mark_done "adapt_$name"
  done
fi

# ----------------------------------------------------------------------------- 6: evaluate
if wanted 6; then
  for name in "${adapters[@]}"; do
    done_marker "eval_$name" && continue
    log "stage 6: evaluating $name -> $workdir/adapters/$name/eval"
    data_flag=(); [[ -n $eval_data ]] && data_flag=(--data "$eval_data" --layout "$eval_layout")
    # shellcheck disable=SC2086
    run evaluate "${model_flag[@]}" --adapter "$workdir/adapters/$name" --target-dir "$heldout_dir" \
      "${data_flag[@]}" "${dev[@]}" $eval_args || fail "evaluating $name failed (see the message above)"
    mark_done "eval_$name"
  done
fi

# ----------------------------------------------------------------------------- 7: sweep
if wanted 7 && ! done_marker sweep; then
  log "stage 7: sweeping strategies x lambda -> $workdir/sweep (cells are cached: re-run to resume)"
  sweep_layout=$eval_layout; [[ $curvature_layout != "$eval_layout" ]] && sweep_layout=auto
  publish_flag=(); [[ -n $publish ]] && publish_flag=(--publish "$publish")
  if [[ $headline_sweep == yes ]]; then  # the embedded default's sweep, exactly as tts-adapt sweep runs it alone
    # shellcheck disable=SC2086
    run sweep --out "$workdir/sweep" --workdir "$workdir" "${model_flag[@]}" "${publish_flag[@]}" "${train[@]}" \
      $sweep_args \
      || fail "the sweep failed (see the message above)"
  else
    # shellcheck disable=SC2086
    run sweep --out "$workdir/sweep" "${model_flag[@]}" --data "$eval_data" --layout "$sweep_layout" \
      --target-dir "$target_dir" --heldout-dir "$heldout_dir" --curvature-data "$curvature_data" \
      "${cfg[@]}" "${publish_flag[@]}" "${train[@]}" $sweep_args || fail "the sweep failed (see the message above)"
  fi
  mark_done sweep
fi
log "done (stages $stage..$stop_stage)"
