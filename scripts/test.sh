#!/usr/bin/env bash
# The test command: set-up, lint, then the whole test suite against real services the tests start.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
ruff check .
ruff format --check .
exec python -m pytest "$@"
