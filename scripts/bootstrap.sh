#!/usr/bin/env bash
# Creates .venv (if needed) and installs Moorage with its test tools into it.
# Sourced by demo.sh and test.sh; safe to run again.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
if [ ! -x "$ROOT/.venv/bin/python" ]; then
  "$PY" -m venv "$ROOT/.venv"
fi
stamp="$ROOT/.venv/.moorage-installed"
if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
  "$ROOT/.venv/bin/pip" install --quiet --disable-pip-version-check -e "$ROOT[test]"
  touch "$stamp"
fi
export PATH="$ROOT/.venv/bin:$PATH"
