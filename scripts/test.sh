#!/usr/bin/env bash
# Set up .venv (all dependencies, Chromium for the browser tests) and run the whole test suite.
# Any argument is passed to pytest, e.g. `scripts/test.sh tests/test_training.py -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
exec .venv/bin/python -m pytest "$@"
