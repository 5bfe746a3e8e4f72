#!/usr/bin/env bash
# The toolkit on a CUDA GPU, in one command (about 10 minutes on one GPU, plus the installation):
#   scripts/gpu-check.sh [--device cuda:0] [--workdir work/gpu-check]
# 1. sets up the project's environment (scripts/setup.sh, without its CPU quickstart);
# 2. runs the tests marked `cuda` (GPU against CPU, mixed precision, curvature fitted on the GPU);
# 3. runs `tts-adapt quickstart --device cuda` (corpus, K-FAC, two adaptations, evaluation), timed,
#    and compares its table with the published CPU run (docs/quickstart_cpu.json): the runs agree when
#    every figure's 95 % interval overlaps the CPU run's (benchmarks/compare_quickstart.py says why);
# 4. times the K-FAC fit against a forward+backward, a VITS-sized adaptation step against a
#    forward+backward, and adaptation steps per second on the GPU;
# 5. prints one summary: the tables, the timings and the goals (quickstart <= 2 minutes on one GPU,
#    K-FAC fit <= 1.3x and VITS step <= 3x a forward+backward).
# Paste the summary (the end of <workdir>/gpu-check.log) into an issue.
set -euo pipefail
cd "$(dirname "$0")/.."
device=cuda
workdir=work/gpu-check
while [[ $# -gt 0 ]]; do
  case $1 in
    --device) device=$2; shift 2 ;;
    --workdir) workdir=$2; shift 2 ;;
    *) echo "usage: $0 [--device cuda:N] [--workdir DIR]" >&2; exit 2 ;;
  esac
done
mkdir -p "$workdir"
log=$workdir/gpu-check.log
: > "$log"
say() { printf '%s\n' "$*" | tee -a "$log"; }
step() { say ""; say "== $* ($(date '+%T'))"; }

step "setting up"
scripts/setup.sh --no-quickstart 2>&1 | tail -n 3 | tee -a "$log"
py=.venv/bin/python
$py - <<'EOF' 2>&1 | tee -a "$log"
import torch
if not torch.cuda.is_available():
    raise SystemExit(f"PyTorch {torch.__version__} sees no CUDA GPU (built with CUDA {torch.version.cuda}); "
                     "check nvidia-smi and CUDA_VISIBLE_DEVICES")
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"cuda:{i}: {p.name}, {p.total_memory / 2**30:.0f} GB; PyTorch {torch.__version__}, CUDA {torch.version.cuda}")
EOF

step "tests marked cuda"
$py -m pytest -p no:cacheprovider -q -m cuda tests/test_cuda.py 2>&1 | tail -n 15 | tee -a "$log"

step "quickstart on $device"
start=$(date +%s)
.venv/bin/tts-adapt quickstart --workdir "$workdir" --device "$device" -q 2>&1 | tee -a "$log"
quickstart_s=$(( $(date +%s) - start ))
say "quickstart wall time: ${quickstart_s} s (goal: <= 120 s on one GPU once the corpus is built)"
step "GPU against the published CPU run"
$py benchmarks/compare_quickstart.py "$workdir/quickstart.json" docs/quickstart_cpu.json 2>&1 | tee -a "$log" || true

step "K-FAC fit against a forward+backward (goal <= 1.3)"
$py benchmarks/bench_curvature.py --model tts_adapt/pretrained/base --corpus "$workdir/corpus" --device "$device" \
  2>&1 | tee -a "$log"
step "VITS-sized adaptation step against a forward+backward (goal <= 3)"
$py benchmarks/bench_zoo_step.py --device "$device" 2>&1 | tee -a "$log"
step "adaptation steps per second, fp32 and bf16"
for precision in fp32 bf16; do
  $py benchmarks/bench_adapt.py --model tts_adapt/pretrained/base --corpus "$workdir/corpus" --device "$device" \
    --precision "$precision" --adapt-steps 0 2>&1 | tee -a "$log"
done
step "done: the whole log is $log"
