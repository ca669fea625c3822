#!/usr/bin/env bash
# Idempotent set-up, sourced by scripts/main.sh and scripts/test.sh: a virtual environment with the pinned
# install, the project home with DAGSTER_HOME and its dagster.yaml, and the dbt manifest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

pick_python() {
  for candidate in "${PYTHON:-}" python3.11 python3.12 python3; do
    [ -n "$candidate" ] || continue
    command -v "$candidate" >/dev/null 2>&1 || continue
    if "$candidate" -c 'import sys; sys.exit(0 if sys.version_info[:2] in ((3, 11), (3, 12)) else 1)'; then
      echo "$candidate"; return 0
    fi
  done
  echo "error: Python 3.11 or 3.12 is required (bytewax 0.21.1 has no wheels for newer versions); set PYTHON" >&2
  return 1
}

if [ ! -x .venv/bin/python ]; then
  "$(pick_python)" -m venv .venv
fi
stamp=".venv/.installed-$(cat requirements.lock pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "setup: installing pinned dependencies into .venv (about a minute the first time)" >&2
  .venv/bin/python -m pip install -qq --disable-pip-version-check -r requirements.lock
  .venv/bin/python -m pip install -qq --disable-pip-version-check --no-deps -e .
  rm -f .venv/.installed-*
  touch "$stamp"
fi

export PATH="$ROOT/.venv/bin:$PATH"
export DO_NOT_TRACK=1
export DBT_PROFILES_DIR="$ROOT/dbt_project"
eval "$(fraud-platform env)"
fraud-platform init >/dev/null
# dagster-dbt reads the manifest when the definitions load: build it now.
(cd dbt_project && dbt parse --quiet >/dev/null)
