#!/usr/bin/env bash
# The main job, end to end: set-up, the local Redis server, simulated history into the landing zone, every raw
# asset into the DuckDB warehouse, dbt features and labels, real-time features backfilled, the latest snapshots
# into Redis, an XGBoost model trained and registered in MLflow as champion (all recorded in the Dagster
# instance that `dagster dev` shows), then a live week replayed through the stream as live traffic and scored,
# with a report, and monitored (realised performance, label maturity, drift, skew) with a summary and a verdict.
set -euo pipefail
# Simulated history is months, not years: let labels mature after 30 days unless told otherwise.
export FRAUD_PLATFORM_LABEL_MATURITY_DAYS="${FRAUD_PLATFORM_LABEL_MATURITY_DAYS:-30}"
# A bounded model search (FRAUD_PLATFORM_SEARCH_SECONDS=45) keeps training to a few minutes on two cores.
export FRAUD_PLATFORM_SEARCH_SECONDS="${FRAUD_PLATFORM_SEARCH_SECONDS:-45}"
cd "$(dirname "${BASH_SOURCE[0]}")/.."  # the project root: the paths below are relative to it
source scripts/setup.sh
CARDS=${CARDS:-5000}
DAYS=${DAYS:-180}
START=${START:-2026-01-01}
SEED=${SEED:-42}
LIVE_DAYS=${LIVE_DAYS:-7}
# The stream's longest window is 90 days: the warm-up replays that many days so every live vector is full.
WARM_UP_DAYS=${WARM_UP_DAYS:-90}
# DRIFT_DAY=YYYY-MM-DD (or "last": the last live day) breaks that day's GPS coordinates before it is replayed
# (python -m fraud_platform.monitoring.demo drift): its distance and speed features drift, the drift check
# fails on exactly those and the monitoring retrain sensor asks for a training run. Empty: no drift.
DRIFT_DAY=${DRIFT_DAY:-}
# A home the main job ran in keeps what its live week left: each transaction's first content claimed, each
# decided once, the feature log's first copy loaded; and the drift rewrites a landed day in place. So a drift
# demo needs a home the main job never ran in, and a home with a drifted day cannot show a clean week again.
RECOVERY="$FRAUD_PLATFORM_HOME/recovery/main-job"
DRIFTED="$FRAUD_PLATFORM_HOME/main-job-drifted-day"
if [ -d "$RECOVERY" ] && { [ -n "$DRIFT_DAY" ] || [ -f "$DRIFTED" ]; }; then
  drifted=""
  [ -f "$DRIFTED" ] && drifted=" with GPS drift injected on $(cat "$DRIFTED")"
  echo "scripts/main.sh: the main job already ran in $FRAUD_PLATFORM_HOME$drifted, and its live week cannot be" \
    "replayed with other content: start over with" \
    "'.venv/bin/fraud-platform redis stop && rm -rf $FRAUD_PLATFORM_HOME', then run this again" >&2
  exit 2
fi

if [ -z "${REDIS_URL:-}" ]; then
  fraud-platform redis start
fi
fraud-platform simulate --cards "$CARDS" --days "$DAYS" --start "$START" --seed "$SEED"
# The world in a steady state: training starts once every card's 90-day window is full (day 90), so the model
# learns from the same kind of vectors the warmed-up stream serves. The live week ends the label maturity
# before the last simulated day, so its labels are final "now" (the last day): realised performance has
# numbers. Training and its test window end before the live week.
day_offset() { python -c "import datetime as d; print(d.date.fromisoformat('$1') + d.timedelta(days=$2))"; }
LAST_DAY=$(day_offset "$START" $((DAYS - 1)))
LAST_LIVE=$(day_offset "$LAST_DAY" "-$FRAUD_PLATFORM_LABEL_MATURITY_DAYS")
FIRST_LIVE=$(day_offset "$LAST_LIVE" $((1 - LIVE_DAYS)))
WARM_FROM=$(day_offset "$FIRST_LIVE" "-$WARM_UP_DAYS")
TEST_TO=$(day_offset "$FIRST_LIVE" -1)
TEST_FROM=$(day_offset "$TEST_TO" -13)
TRAIN_TO=$(day_offset "$TEST_FROM" -8)  # a 7-day gap before the test window
TRAIN_FROM=$(day_offset "$START" 90)
if [ "$DRIFT_DAY" = last ]; then DRIFT_DAY=$LAST_LIVE; fi
fraud-platform load
fraud-platform refresh
fraud-platform train --train-from "$TRAIN_FROM" --train-to "$TRAIN_TO" --test-from "$TEST_FROM" --test-to "$TEST_TO"
if [ -n "$DRIFT_DAY" ]; then
  python -m fraud_platform.monitoring.demo drift "$DRIFT_DAY"
  echo "$DRIFT_DAY" > "$DRIFTED"
fi

# The stream keeps its state between runs through Bytewax recovery, as a restarted production flow does.
rm -rf "$RECOVERY" && mkdir -p "$RECOVERY" && python -m bytewax.recovery "$RECOVERY" 1
score() { python -m bytewax.run "bytewax_flows.scoring:build_flow(exit_when_drained=True)" -r "$RECOVERY" -s 5 -b 0; }
# Warm-up: the days before the first live day fill each card's windows. They are decided too, served the
# first live day's snapshots: monitoring recognises them as replays (a snapshot newer than the day) and
# leaves them out.
fraud-platform online --snapshot-date "$TEST_TO"
fraud-platform replay --reset --from "$WARM_FROM" --to "$TEST_TO"
score
# Live days: each is served the snapshots of the day before it, like the 02:00 refresh does in production.
# `--reset` sets the warm-up's decisions aside (the stream's state stays: it lives in the recovery store).
# The last live day also goes through the synchronous path: the flow runs as a service, `fraud-platform
# serve` in front of it, and the day arrives at 1,000 tx/s with every 20th transaction sent as an authorization
# request (one at a time, in its turn) and the rest onto the bus. The server judges a request's timestamp by
# its wall clock: the simulated history is months old, so this server accepts events up to ten years old.
# Then the flow is stopped and one draining run (recovery resumes it) decides whatever was left.
authorize_day() {
  local port flow api
  port=$(python -c "from fraud_platform.lib.redis_server import free_port; print(free_port())")
  python -m bytewax.run "bytewax_flows.scoring:build_flow()" -r "$RECOVERY" -s 5 -b 0 \
    > "$FRAUD_PLATFORM_HOME/main-job-flow.log" 2>&1 &
  flow=$!
  FRAUD_PLATFORM_MAX_EVENT_AGE_DAYS=3650 fraud-platform serve --port "$port" \
    > "$FRAUD_PLATFORM_HOME/main-job-api.log" 2>&1 &
  api=$!
  trap 'kill "$api" "$flow" 2>/dev/null' EXIT
  fraud-platform replay $RESET --day "$1" --rate 1000 --authorize-every 20 --api-url "http://127.0.0.1:$port"
  sleep 2  # the flow catches up with the last events published
  kill "$api" "$flow"
  wait "$api" "$flow" || true
  trap - EXIT
  score
}
RESET=--reset
DAY=$FIRST_LIVE
while [[ "$DAY" < "$LAST_LIVE" || "$DAY" == "$LAST_LIVE" ]]; do
  fraud-platform online --snapshot-date "$(day_offset "$DAY" -1)"
  if [ "$DAY" == "$LAST_LIVE" ]; then
    authorize_day "$DAY"
  else
    fraud-platform replay $RESET --day "$DAY"
    score
  fi
  RESET=
  DAY=$(day_offset "$DAY" 1)
done
# The report: throughput and latency (each day's backlog drained at full speed, so the latency includes
# queueing inside the flow; docs/benchmarks.md has it at a steady 1,000 tx/s), decisions by type and their
# quality against the simulator's fraud truth.
fraud-platform report --from "$FIRST_LIVE" --to "$LAST_LIVE"

# Monitoring: load the stream's feature log (its decisions with the served vectors) into the warehouse, then
# materialise the monitoring group for every live day and summarise the last (docs/monitoring.md); then say in
# plain words which checks failed where and whether the monitoring retrain sensor asks for a training run.
fraud-platform load
fraud-platform monitor --from "$FIRST_LIVE" --to "$LAST_LIVE"
echo
echo "Monitoring verdict for the live week $FIRST_LIVE .. $LAST_LIVE${DRIFT_DAY:+ (GPS drift injected on $DRIFT_DAY)}:"
python -m fraud_platform.monitoring.demo verdict "$FIRST_LIVE" "$LAST_LIVE" | sed 's/^/  /'
cat <<MSG

Done. Look around (in $PWD, from any shell):
  Dagster UI:  FRAUD_PLATFORM_LABEL_MATURITY_DAYS=$FRAUD_PLATFORM_LABEL_MATURITY_DAYS .venv/bin/fraud-platform ui dagster
               (http://127.0.0.1:3000: asset groups raw, batch_features, labels, realtime_features, online, training,
               stream (the scoring flow's outputs: the loop drawn), monitoring: one partition per monitored day
               of decisions, with checks, tables and charts)
  MLflow UI:   .venv/bin/fraud-platform ui mlflow   (http://127.0.0.1:5000; experiment fraud-monitoring: one run per
               day and model version)
  Warehouse:   $FRAUD_PLATFORM_WAREHOUSE (DuckDB)
  Landing:     $FRAUD_PLATFORM_LANDING
  Decisions:   .venv/bin/fraud-platform decisions --count 20   (a table of the newest decisions with their reasons,
               and the flow's metrics; --decision review, --card ID, --json)
  Redis:       .venv/bin/fraud-platform redis status   (stop it with: .venv/bin/fraud-platform redis stop)
  Or first:    source scripts/setup.sh   (the venv on PATH, the configuration exported; your shell stays as it is)
MSG
