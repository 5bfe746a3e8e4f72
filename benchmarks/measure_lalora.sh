#!/usr/bin/env bash
# LaLoRA's handling of A at B = 0, measured on the embedded default (docs/strategy-lalora.md, "Measured"):
# lalora-kfac fitted at peft's initialisation and after 50 / 200 warm-start steps (400 pretraining utterances of
# work/corpus), adaptations to the lambda sweep's target (work/sweep_lambda/target: tts-adapt sweep) with
# rank 8, lr 2e-3, 200 steps, seed 0, and their forgetting (8 old speakers x 4 sentences) and learning (the
# target's held-out clips), speaker encoder only. Then: python benchmarks/lalora_table.py OUT
# Cost on 2 shared CPU cores: about 50 minutes (3 fits of 1-3 min, 11 adaptations of 1-5 min, their evaluations).
#     benchmarks/measure_lalora.sh [OUT=work/lalora_measure]
set -euo pipefail
cd "$(dirname "$0")/.."
M=${1:-work/lalora_measure}
T=work/sweep_lambda/target
mkdir -p "$M"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
fit() {  # name, extra fit-curvature flags
  [ -f "$M/$1.safetensors" ] || tts-adapt fit-curvature --data work/corpus --out "$M/$1.safetensors" \
      --method lalora-kfac --num-utterances 400 --workers 1 -q "${@:2}"
}
cell() {  # name, curvature, lam, extra adapt flags
  [ -f "$M/$1/adapter_config.json" ] || tts-adapt adapt --target-dir $T/clips --out "$M/$1" --strategy lalora \
      --curvature "$M/$2.safetensors" --lam "$3" --steps 200 --rank 8 --lr 0.002 --seed 0 -q "${@:4}"
  [ -f "$M/$1/eval/report.json" ] || python - "$M/$1" <<'PY'
import sys
from tts_adapt.evaluate.adapter import evaluate_adapter
from tts_adapt.evaluate.scoring import Listeners
evaluate_adapter(sys.argv[1], target_dir="work/sweep_lambda/target/heldout", data="work/corpus", old_speakers=8,
                 unseen_speakers=0, per_speaker=4, listeners=Listeners(), progress=False)
PY
  echo "$1 done $(date +%T)"
}
fit peft --warm-start-steps 0
fit warm50 --warm-start-steps 50
fit warm200 --warm-start-steps 200
cell peft_aprior0_lam30000 peft 30000 --lalora-a-prior 0
cell peft_aprior1_lam30000 peft 30000 --lalora-a-prior 1
cell peft_aprior10_lam30000 peft 30000 --lalora-a-prior 10
cell peft_aprior100_lam30000 peft 30000 --lalora-a-prior 100
cell peft_aprior1_lam100000 peft 100000 --lalora-a-prior 1
cell warm50_aprior0_lam30000 warm50 30000 --lalora-a-prior 0
cell warm50_aprior0_lam100000 warm50 100000 --lalora-a-prior 0
cell warm50_lam0 warm50 0 --lalora-a-prior 0
cell warm200_aprior0_lam30000 warm200 30000 --lalora-a-prior 0
cell warm200_aprior0_lam100000 warm200 100000 --lalora-a-prior 0
