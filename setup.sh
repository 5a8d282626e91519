#!/usr/bin/env bash
# Idempotent setup: creates .venv with the pinned dependencies and installs skippipe editable.
#   ./setup.sh           set up (a no-op when requirements.txt has not changed)
#   ./setup.sh --test    set up, then run the whole test suite
set -euo pipefail
cd "$(dirname "$0")"
VENV=.venv
STAMP="$VENV/.skippipe-installed"
want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV" >&2
  python3 -m venv "$VENV"
fi
if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing pinned dependencies (first run takes a few minutes)" >&2
  "$VENV/bin/python" -m pip install -q --upgrade pip setuptools >&2
  "$VENV/bin/python" -m pip install -q -r requirements.txt >&2
  "$VENV/bin/python" -m pip install -q --no-deps -e . >&2
  echo "$want" > "$STAMP"
fi

if [ "${1:-}" = "--test" ]; then
  shift
  exec "$VENV/bin/python" -m pytest "$@"
fi
