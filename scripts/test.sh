#!/usr/bin/env bash
# Run the whole test suite (slow end-to-end tests included) in the project's
# environment, setting it up first when needed.
#   scripts/test.sh [pytest options...]     e.g. scripts/test.sh -m "not slow"
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --no-quickstart
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
