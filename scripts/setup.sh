#!/usr/bin/env bash
# Set up tts_adapt on a fresh Debian/Ubuntu machine, then run the main job.
#   scripts/setup.sh [--no-quickstart] [quickstart options...]
# Installs the Debian packages flite, espeak-ng, sox and wordnet-base when missing (with sudo
# only when not root; with --no-quickstart, the test set-up, also chromium),
# creates .venv and installs the toolkit into it. Safe to re-run: finished steps
# are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

run_quickstart=1
if [[ "${1:-}" == "--no-quickstart" ]]; then run_quickstart=0; shift; fi

log() { printf '[setup %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

# 1. Debian packages the corpus builder and the phonemiser need (wordnet-base, a data package: the example
#    sentences of the corpus's diverse text); the test set-up (--no-quickstart, as scripts/test.sh runs it)
#    adds chromium, the browser the demo's end-to-end test drives with Playwright
progs=(flite espeak-ng sox)
(( run_quickstart )) || progs+=(chromium)
missing=()
for prog in "${progs[@]}"; do command -v "$prog" >/dev/null 2>&1 || missing+=("$prog"); done
[[ -f /usr/share/wordnet/data.noun ]] || missing+=(wordnet-base)
if (( ${#missing[@]} )); then
  sudo=""; [[ "$(id -u)" -ne 0 ]] && sudo="sudo"
  log "installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# 2. Python environment (re-installed only when pyproject.toml changes)
python=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  log "creating virtual environment .venv with $($python --version)"
  $python -m venv .venv
fi
stamp=.venv/.tts_adapt-install
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [[ ! -f $stamp || "$(cat "$stamp")" != "$want" ]]; then
  log "installing tts_adapt and its dependencies into .venv (torch is large: a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[test]"
  echo "$want" > "$stamp"
fi
log "environment ready: $(.venv/bin/tts-adapt --version)"

# 3. The main job
if (( run_quickstart )); then
  exec .venv/bin/tts-adapt quickstart "$@"
fi
