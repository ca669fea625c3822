#!/usr/bin/env bash
# The test command: set-up, lint, then the whole test suite against real services the tests start.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."  # the project root: ruff and pytest run from here
source scripts/setup.sh
ruff check .
ruff format --check .
exec python -m pytest "$@"
