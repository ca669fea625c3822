#!/usr/bin/env bash
# Idempotent set-up: a virtual environment with the pinned install, the project home with DAGSTER_HOME and its
# dagster.yaml, and the dbt manifest; then the configuration exported.
#
#   source scripts/setup.sh      from your shell (or scripts/main.sh, scripts/test.sh): .venv/bin on PATH and the
#                                configuration exported; your shell's options and directory are left as they were,
#                                and a failure returns non-zero instead of closing the shell.
#   eval "$(scripts/setup.sh)"   the same, executed: the preparation runs and the exports are printed.
#
# The strict work (set -euo pipefail, cd) runs in a child bash process. A second run skips what is done: the
# install is stamped with a hash of requirements.lock + pyproject.toml, the manifest with a hash of the dbt project
# and the configuration, and the home is prepared only when its dagster.yaml is missing.

if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
  # Sourced: run this file as a child process and take its exports (nothing else leaks into the caller).
  _fraud_platform_setup() {
    unset -f _fraud_platform_setup
    local root exports
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)" || return 1
    exports="$("${BASH:-bash}" "$root/scripts/setup.sh")" || return 1
    case ":$PATH:" in
      *":$root/.venv/bin:"*) ;;
      *) export PATH="$root/.venv/bin:$PATH" ;;
    esac
    eval "$exports"
  }
  _fraud_platform_setup
  return
fi

set -euo pipefail
exec 3>&1 1>&2 # stdout carries the exports only (fd 3); everything else goes to stderr
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
  python="$(pick_python)"
  "$python" -m venv .venv
fi
install_stamp=".venv/.installed-$(cat requirements.lock pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$install_stamp" ]; then
  echo "setup: installing pinned dependencies into .venv (about a minute the first time)"
  .venv/bin/python -m pip install -qq --disable-pip-version-check -r requirements.lock
  .venv/bin/python -m pip install -qq --disable-pip-version-check --no-deps -e .
  rm -f .venv/.installed-*
  touch "$install_stamp"
fi

export PATH="$ROOT/.venv/bin:$PATH"
exports="$(fraud-platform env)"
exports+="$(printf '\nexport %s=%q' DO_NOT_TRACK 1 DBT_PROFILES_DIR "$ROOT/dbt_project")"
eval "$exports"

if [ ! -f "$DAGSTER_HOME/dagster.yaml" ]; then
  fraud-platform init >/dev/null
fi

# dagster-dbt reads the manifest when the definitions load: build it when the project, the configuration (its
# vars read environment variables) or the install changed.
dbt_hash="$(
  {
    find dbt_project \( -path dbt_project/target -o -path dbt_project/logs -o -path dbt_project/dbt_packages \
      -o -name .user.yml \) -prune -o -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
    echo "$exports" "$install_stamp"
  } | sha256sum | cut -c1-16
)"
parse_stamp="dbt_project/target/.parsed-$dbt_hash"
if [ ! -f "$parse_stamp" ] || [ ! -f dbt_project/target/manifest.json ]; then
  (cd dbt_project && dbt parse --quiet >/dev/null)
  rm -f dbt_project/target/.parsed-*
  touch "$parse_stamp"
fi

echo "$exports" >&3
