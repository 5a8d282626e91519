#!/usr/bin/env bash
# Idempotent setup: creates .venv with the pinned dependencies and installs skippipe editable.
#   ./setup.sh           set up (a no-op when requirements.txt has not changed)
#   ./setup.sh --test    set up, then check the code's style (ruff) and run the whole test suite
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
  echo "setup: installing pinned dependencies (first run takes a few minutes; log: $VENV/setup.log)" >&2
  if ! { "$VENV/bin/python" -m pip install -q --upgrade pip setuptools &&
         "$VENV/bin/python" -m pip install -q -r requirements.txt &&
         "$VENV/bin/python" -m pip install -q --no-deps -e . ; } > "$VENV/setup.log" 2>&1; then
    tail -n 20 "$VENV/setup.log" >&2
    echo "setup: installation failed (full log: $VENV/setup.log)" >&2
    exit 1
  fi
  echo "$want" > "$STAMP"
fi

if [ "${1:-}" = "--test" ]; then
  shift
  if ! "$VENV/bin/ruff" check --quiet . || ! "$VENV/bin/ruff" format --check --quiet .; then
    echo "setup: style check failed (fix with: .venv/bin/ruff format . && .venv/bin/ruff check --fix .)" >&2
    exit 1
  fi
  exec "$VENV/bin/python" -m pytest "$@"
fi
