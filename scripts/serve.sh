#!/usr/bin/env bash
# Set up .venv (service dependencies) and start the service on the shipped default model.
# Any argument is passed to `python -m service` (see `--help`); settings can also come from FER_* variables.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m service "$@"
