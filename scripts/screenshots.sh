#!/usr/bin/env bash
# Screenshots of the UIs after the main job, with a real headless browser: the distribution's Chromium
# (apt-get install chromium) driven by Playwright (pip extra "test"). Starts the Dagster and MLflow UIs on
# free loopback ports with the platform's environment, saves docs/images/*.png, stops the UIs.
#   DRIFT_DAY=last scripts/main.sh && scripts/screenshots.sh   # the README's pictures: the drifted last day
#   DAY=YYYY-MM-DD picks the monitoring partition shown (default: the newest monitored day)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
[ -x "$CHROMIUM" ] || { echo "no Chromium at $CHROMIUM: apt-get install chromium (or set CHROMIUM)" >&2; exit 1; }
free_port() { python -c "from fraud_platform.lib.redis_server import free_port; print(free_port())"; }
DAGSTER_PORT=$(free_port)
MLFLOW_PORT=$(free_port)
LOGS=$(mktemp -d)
fraud-platform ui dagster --port "$DAGSTER_PORT" >"$LOGS/dagster.log" 2>&1 &
DAGSTER_PID=$!
fraud-platform ui mlflow --port "$MLFLOW_PORT" >"$LOGS/mlflow.log" 2>&1 &
MLFLOW_PID=$!
trap 'kill -INT $DAGSTER_PID $MLFLOW_PID 2>/dev/null; wait $DAGSTER_PID $MLFLOW_PID 2>/dev/null; rm -rf "$LOGS"' EXIT

CHROMIUM=$CHROMIUM DAGSTER="http://127.0.0.1:$DAGSTER_PORT" MLFLOW="http://127.0.0.1:$MLFLOW_PORT" \
  DAY=${DAY:-} python - <<'PY'
"""Wait for both UIs, then photograph the lineage, a monitoring partition and the champion's MLflow page."""
import os
import time
import urllib.request
from pathlib import Path

import duckdb
from mlflow import MlflowClient
from playwright.sync_api import sync_playwright

from fraud_platform.config import Settings
from fraud_platform.training.registry import MODEL_NAME, champion_version

settings = Settings.from_env()
dagster, mlflow = os.environ["DAGSTER"], os.environ["MLFLOW"]
for url in (f"{dagster}/server_info", f"{mlflow}/health"):
    deadline = time.monotonic() + 180
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"{url} did not answer within 180 s") from None
            time.sleep(1)
champion = champion_version(MlflowClient(settings.mlflow_tracking_uri))
if champion is None:
    raise SystemExit("no champion model: run scripts/main.sh first")
day = os.environ["DAY"]
if not day:
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as connection:
        day = str(connection.execute("SELECT max(day) FROM monitoring.drift").fetchall()[0][0])
images = Path("docs/images")
images.mkdir(parents=True, exist_ok=True)
shots = [
    # The closed loop: the stream's specs between the model / online features and raw/decisions.
    ("lineage.png", f"{dagster}/assets/stream/feature_log?view=lineage&lineageScope=neighbors&lineageDepth=1",
     "text=decisions"),
    ("monitoring_partition.png", f"{dagster}/assets/monitoring/drift?view=events&partition={day}",
     "text=top_features"),
    ("mlflow_model_version.png", f"{mlflow}/#/models/{MODEL_NAME}/versions/{champion.version}",
     "text=Schema"),
]
with sync_playwright() as playwright:
    browser = playwright.chromium.launch(executable_path=os.environ["CHROMIUM"], args=["--no-sandbox"])
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    # Dagster's first-visit newsletter dialog opens a second after a page loads, over whatever it shows:
    # the browser starts as one that dismissed it (the UI's own localStorage flag).
    page.add_init_script("window.localStorage.setItem('communityNux', JSON.stringify('1'))")
    for name, url, ready in shots:
        page.goto(url, wait_until="load", timeout=120_000)  # the UIs poll: never "networkidle"
        page.wait_for_selector(ready, timeout=90_000)
        time.sleep(3)  # the graph's layout animation
        if page.locator("[role=dialog]").count():
            raise SystemExit(f"a dialog covers {url}: not saving {name}")
        page.screenshot(path=str(images / name))
        print(f"saved {images / name} ({url})")
    browser.close()
PY
