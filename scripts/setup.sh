#!/usr/bin/env bash
# Create/refresh the project's virtual environment at .venv.
#   scripts/setup.sh          service dependencies only (what `scripts/serve.sh` needs)
#   scripts/setup.sh test     service + training + test dependencies, and Debian's Chromium for the browser tests
# Re-running is cheap: pip only runs again when pyproject.toml or requirements.lock changed.
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null 2>&1 || python=python3

if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
fi

spec="."
[ "$extra" = "test" ] && spec=".[test]"
stamp=".venv/.installed-$(cat pyproject.toml requirements.lock | sha256sum | cut -c1-16)-${extra:-service}"
if [ ! -f "$stamp" ]; then
  # The lock as constraints: exactly the versions the project was tested with (unused pins are ignored).
  .venv/bin/python -m pip install --quiet -c requirements.lock -e "$spec"
  touch "$stamp"
fi

if [ "$extra" = "test" ] && [ ! -x /usr/bin/chromium ]; then
  # The browser tests drive Debian's Chromium (never a downloaded browser).
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "note: /usr/bin/chromium is missing (apt-get install chromium); the browser tests will be skipped" >&2
  fi
fi
