#!/usr/bin/env bash
# Runs the whole test suite (and the linter) in the project's virtualenv.
# Extra arguments go to pytest, e.g. scripts/test.sh tests/unit -k token
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
ruff check .
pytest -q -p no:cacheprovider "$@"
