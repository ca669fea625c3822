#!/usr/bin/env bash
# The main job, end to end: set-up, the local Redis server, simulated history into the landing zone, and
# every raw asset materialised into the DuckDB warehouse (recorded in the Dagster instance `dagster dev` shows).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
CARDS=${CARDS:-5000}
DAYS=${DAYS:-60}
START=${START:-2026-01-01}
SEED=${SEED:-42}

if [ -z "${REDIS_URL:-}" ]; then
  fraud-platform redis start
fi
fraud-platform simulate --cards "$CARDS" --days "$DAYS" --start "$START" --seed "$SEED"
fraud-platform load
cat <<MSG

Done. Look around:
  Dagster UI:  source scripts/setup.sh && dagster dev      (http://127.0.0.1:3000, assets in group 'raw')
  Warehouse:   $FRAUD_PLATFORM_WAREHOUSE (DuckDB)
  Landing:     $FRAUD_PLATFORM_LANDING
  Redis:       fraud-platform redis status   (stop it with: fraud-platform redis stop)
MSG
