#!/usr/bin/env bash
# The main job, end to end: set-up, the local Redis server, simulated history into the landing zone, every raw
# asset into the DuckDB warehouse, dbt features and labels, real-time features backfilled, the latest snapshots
# into Redis, and an XGBoost model trained and registered in MLflow as champion (all recorded in the Dagster
# instance that `dagster dev` shows).
set -euo pipefail
# Simulated history is months, not years: let labels mature after 30 days unless told otherwise.
export FRAUD_PLATFORM_LABEL_MATURITY_DAYS="${FRAUD_PLATFORM_LABEL_MATURITY_DAYS:-30}"
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
CARDS=${CARDS:-5000}
DAYS=${DAYS:-120}
START=${START:-2026-01-01}
SEED=${SEED:-42}

if [ -z "${REDIS_URL:-}" ]; then
  fraud-platform redis start
fi
fraud-platform simulate --cards "$CARDS" --days "$DAYS" --start "$START" --seed "$SEED"
fraud-platform load
fraud-platform refresh
fraud-platform train
cat <<MSG

Done. Look around:
  Dagster UI:  export FRAUD_PLATFORM_LABEL_MATURITY_DAYS=$FRAUD_PLATFORM_LABEL_MATURITY_DAYS; source scripts/setup.sh && dagster dev
               (http://127.0.0.1:3000: asset groups raw, batch_features, labels, realtime_features, online, training)
  MLflow UI:   source scripts/setup.sh && mlflow ui --backend-store-uri "$MLFLOW_TRACKING_URI"   (http://127.0.0.1:5000)
  Warehouse:   $FRAUD_PLATFORM_WAREHOUSE (DuckDB)
  Landing:     $FRAUD_PLATFORM_LANDING
  Redis:       fraud-platform redis status   (stop it with: fraud-platform redis stop)
MSG
