"""The loop closes with the real processes: a running scoring flow, `dagster-daemon run` with the project's
workspace and sensors, and the `dagster` CLI.

The scenario, on one simulated world (history | live days | tail):
1. History: landed and loaded, refreshed and trained in this process: champion v1, deliberately weak (a
   single day of mature labels to fit on).
2. `python -m bytewax.run "bytewax_flows.scoring:build_flow()"` runs for the whole test. The live days are
   published on the bus and decided by v1; a trickle of tail events keeps traffic flowing until the flow's
   feature log lands them (landing batches with source "stream").
3. The bank's claims feed lands the chargebacks reported during the live days (a context batch).
4. `dagster-daemon run`, with both sensors started by `dagster sensor start`: `landing_sensor`
   loads the new batches. `dagster job launch -j batch_refresh` stands in for the `daily_batch_refresh`
   schedule's tick: dbt rebuilds the labels, so the live days' labels mature (maturity
   FRAUD_PLATFORM_LABEL_MATURITY_DAYS) and `retrain_sensor` (FRAUD_PLATFORM_RETRAIN_MIN_NEW_LABELS) launches
   `train_model`. The challenger v2's dataset reaches into the live days: the stream's own transactions,
   labelled, are in its training window (its first live days) and make its validation and test windows;
   it beats v1 on its test window and becomes champion.
5. The rest of the tail is published: the running flow (FRAUD_PLATFORM_MODEL_REFRESH_SECONDS=1) decides it
   with v2; every published transaction is decided exactly once.
"""

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import redis
from mlflow import MlflowClient

from fraud_platform.config import Settings
from fraud_platform.defs.automation import SEEN_HORIZON, landing_sensor
from fraud_platform.defs.raw import LANDING_DAYS
from fraud_platform.defs.resources import LandingResource
from fraud_platform.defs.training import MODEL_ASSET
from fraud_platform.lib.bus import STREAM_SOURCE, events_from_table, publish
from fraud_platform.lib.keys import DECISIONS_STREAM
from fraud_platform.lib.landing import MANIFEST, LandingZone
from fraud_platform.lib.redis_server import LocalRedisServer
from fraud_platform.lib.schema import TRANSACTIONS
from fraud_platform.lib.simulator import SimulatedData, SimulationConfig, simulate
from fraud_platform.pipeline import instance_for, load_landing, refresh_batch_side, train_model
from fraud_platform.scoring.decisions import read_decisions
from fraud_platform.scoring.metrics import METRICS_KEY
from fraud_platform.testing import ROOT, scoring_flow_process
from fraud_platform.training import registry

MATURITY_DAYS = 7
HISTORY_DAYS = 19  # 12 days of mature labels: train on 1, a 7-day gap, 2 validation and 2 test days
LIVE_DAYS = 35  # then 47 days of mature labels: train on 21 (the last 2 of them live), 7-day gap, 9 + 10 days
WORLD = SimulationConfig(
    cards=600,
    days=HISTORY_DAYS + LIVE_DAYS + 1,
    seed=17,
    fraud_card_share=0.3,
    median_report_delay_days=3.0,
)
MIN_NEW_LABELS = 10_000  # about 35,000 labels mature
TRICKLE_SECONDS = 2.0
TIMEOUT = 300.0  # per wait: the machine is slow and shared
WORKSPACE = str(ROOT / "workspace.yaml")


def _cut(data: SimulatedData) -> tuple[pa.Table, pa.Table, pa.Table, pa.Table, pa.Table]:
    """History, live and tail transactions; chargebacks known at the end of the history and those reported
    during the live days."""
    start = datetime.combine(WORLD.start, datetime.min.time(), UTC)
    history_end, live_end = (
        start + timedelta(days=HISTORY_DAYS),
        start + timedelta(days=HISTORY_DAYS + LIVE_DAYS),
    )
    txns, claims = data.transactions, data.chargebacks
    stamp, reported = txns.column("timestamp"), claims.column("reported_at")
    return (
        txns.filter(pc.less(stamp, history_end)),
        txns.filter(pc.and_(pc.greater_equal(stamp, history_end), pc.less(stamp, live_end))),
        txns.filter(pc.greater_equal(stamp, live_end)),
        claims.filter(pc.less(reported, history_end)),
        claims.filter(pc.and_(pc.greater_equal(reported, history_end), pc.less(reported, live_end))),
    )


def _wait(condition: Callable[[], bool], what: str, processes: dict[str, subprocess.Popen]) -> None:
    """Poll `condition` until true; fail naming `what` on timeout or when a long-running process died."""
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        for name, process in processes.items():
            assert process.poll() is None, f"{name} exited with {process.returncode} while waiting for {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1.0)


def _dagster(env: dict[str, str], *arguments: str) -> None:
    """One `dagster` CLI command against the project's workspace."""
    done = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), *arguments, "-w", WORKSPACE],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, f"dagster {' '.join(arguments)}:\n{done.stdout}\n{done.stderr}"


def _start_daemon(env: dict[str, str], log: Path) -> subprocess.Popen:
    """`dagster-daemon run` in a process group of its own (it starts a code server and run workers)."""
    with log.open("ab") as output:
        return subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", WORKSPACE],
            env=env,
            cwd=ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _signal(process: subprocess.Popen, signum: int) -> None:
    """Signal the process, and its group when it leads one."""
    try:
        if os.getpgid(process.pid) == process.pid:
            os.killpg(process.pid, signum)
        else:
            process.send_signal(signum)
    except ProcessLookupError:
        pass


@contextmanager
def _processes(logs: Path) -> Iterator[dict[str, subprocess.Popen]]:
    """Long-running processes by name, each in its own process group: ended at exit, logs printed on failure."""
    running: dict[str, subprocess.Popen] = {}
    try:
        yield running
    except BaseException:
        for path in sorted(logs.glob("*.log")):
            print(f"----- {path.name} -----\n{path.read_text(errors='replace')[-20_000:]}")
        raise
    finally:
        for process in running.values():
            _signal(process, signal.SIGTERM)
        for process in running.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                _signal(process, signal.SIGKILL)
                process.wait()


def _runs(instance: dg.DagsterInstance, job: str, earlier: set[str]) -> list[dg.DagsterRun]:
    """The runs of `job` but the `earlier` ones."""
    runs = instance.get_runs(filters=dg.RunsFilter(job_name=job))
    return [run for run in runs if run.run_id not in earlier]


def _runs_of_sensor(instance: dg.DagsterInstance, sensor: str) -> list[dg.DagsterRun]:
    """The runs `sensor` requested."""
    return [run for run in instance.get_runs() if run.tags.get("dagster/sensor_name") == sensor]


def _all_succeeded(runs: list[dg.DagsterRun]) -> bool:
    failed = [
        run for run in runs if run.status in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)
    ]
    assert not failed, f"run(s) failed: {[(run.job_name, run.run_id, run.tags) for run in failed]}"
    return bool(runs) and all(run.status == dg.DagsterRunStatus.SUCCESS for run in runs)


@pytest.mark.slow
def test_the_running_stream_swaps_to_the_model_retrained_on_its_own_decisions(
    tmp_path: Path, redis_server: LocalRedisServer, clean_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [*Settings.from_env({}).environment(), "REDIS_URL", "MLFLOW_TRACKING_URI"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FRAUD_PLATFORM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setenv("FRAUD_PLATFORM_LABEL_MATURITY_DAYS", str(MATURITY_DAYS))
    monkeypatch.setenv("FRAUD_PLATFORM_RETRAIN_MIN_NEW_LABELS", str(MIN_NEW_LABELS))
    monkeypatch.setenv("FRAUD_PLATFORM_MODEL_REFRESH_SECONDS", "1")
    monkeypatch.setenv("FRAUD_PLATFORM_SEARCH_TRIALS", "3")  # the starting points: the loop is under test
    settings = Settings.from_env()
    env = {**os.environ, **settings.environment(), "DO_NOT_TRACK": "1"}
    data = simulate(WORLD)
    history, live, tail, known_claims, new_claims = _cut(data)
    zone = LandingZone(settings.landing_dir)
    context = {"cards": data.cards, "merchants": data.merchants, "chargebacks": known_claims}
    zone.write_batch("history", history, context, source="simulator")

    # 1. Champion v1 from the history alone.
    instance = instance_for(settings)
    assert load_landing(settings, instance).success
    assert refresh_batch_side(instance).success
    assert train_model(instance).success
    mlflow = MlflowClient(settings.mlflow_tracking_uri)
    v1 = registry.champion_version(mlflow)
    assert v1 is not None
    earlier = {run.run_id for run in instance.get_runs()}

    logs = tmp_path / "logs"
    logs.mkdir()
    with _processes(logs) as running:
        # 2. The stream, and the live days on the bus.
        running["flow"] = scoring_flow_process(env, exit_when_drained=False, log=logs / "flow.log")
        published = [*live.column("transaction_id").to_pylist()]
        publish(clean_redis, events_from_table(live), settings.stream_shards)
        for sensor in ("landing_sensor", "retrain_sensor"):
            _dagster(env, "sensor", "start", sensor)
        running["daemon"] = _start_daemon(env, logs / "daemon.log")

        # A trickle of tail events until the feature log has landed every live transaction.
        trickle = iter(events_from_table(tail))

        def live_landed() -> bool:
            logged = sum(
                sum(batch.days.values()) for batch in zone.batches() if batch.source == STREAM_SOURCE
            )
            if logged < len(live):
                event = next(trickle)
                publish(clean_redis, [event], settings.stream_shards)
                published.append(event["transaction_id"])
                time.sleep(TRICKLE_SECONDS)
            return logged >= len(live)

        _wait(live_landed, "the feature log to land the live days", running)
        # 3. The claims feed (while the landing sensor's earlier runs may still be queued: a tick's context run
        # reads only the batches that tick saw, so no claim is checked before its transaction is loaded).
        zone.write_batch("claims", TRANSACTIONS.empty_table(), {"chargebacks": new_claims}, source="claims")

        # 4. The landing sensor loads everything landed; the schedule's stand-in rebuilds the batch side.
        landed = {batch.batch_id for batch in zone.batches()} - {"history"}

        def loaded() -> bool:
            runs = _runs_of_sensor(instance, "landing_sensor")
            keys = ",".join(run.tags.get("dagster/run_key", "") for run in runs)
            return all(batch in keys for batch in landed) and _all_succeeded(runs)

        _wait(loaded, "landing_sensor to load the stream's and the claims' batches", running)
        _dagster(env, "job", "launch", "-j", "batch_refresh")
        _wait(lambda: _all_succeeded(_runs(instance, "batch_refresh", earlier)), "batch_refresh", running)
        _wait(
            lambda: _all_succeeded(_runs(instance, "train_model", earlier)),
            "retrain_sensor's train_model run",
            running,
        )
        (retrain,) = _runs(instance, "train_model", earlier)
        assert retrain.tags.get("dagster/sensor_name") == "retrain_sensor"
        v2 = registry.champion_version(mlflow)
        assert v2 is not None and str(v2.version) != str(v1.version)

        # 5. The rest of the tail, once the flow serves v2 (its watcher polls the registry off the hot path).
        served_v2 = str(v2.version).encode()
        _wait(
            lambda: clean_redis.hget(METRICS_KEY, "model_version") == served_v2,
            "the flow to serve v2",
            running,
        )
        after_swap = list(trickle)
        publish(clean_redis, after_swap, settings.stream_shards)
        _wait(
            lambda: clean_redis.xlen(DECISIONS_STREAM) >= len(published) + len(after_swap),
            "the tail",
            running,
        )

    decisions = read_decisions(clean_redis)
    ids = [decision["transaction_id"] for decision in decisions]
    assert len(ids) == len(set(ids))  # none decided twice
    swapped = {event["transaction_id"] for event in after_swap}
    assert set(ids) == set(published) | swapped  # none lost
    version = {decision["transaction_id"]: decision["model_version"] for decision in decisions}
    assert {version[tid] for tid in published} == {str(v1.version)}
    assert {version[tid] for tid in swapped} == {str(v2.version)}

    model = instance.get_latest_materialization_event(MODEL_ASSET).asset_materialization.metadata
    assert model["promoted_to_champion"].value and model["challenge"].value == "beats the champion"
    assert int(v2.tags["labels_known"]) - int(v1.tags["labels_known"]) >= MIN_NEW_LABELS
    assert v2.tags["trained_until"] > v1.tags["trained_until"]
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as connection:
        streamed, logged = connection.execute(
            "SELECT count(*) FILTER (WHERE batch_id LIKE 'stream-%'), (SELECT count(*) FROM raw.decisions) "
            "FROM raw.transactions"
        ).fetchone()
        # The stream's transactions, labelled, in v2's dataset: the windows the challenge was decided on.
        from_stream = dict(
            connection.execute(
                "SELECT d.split, count(*) FROM training.dataset AS d JOIN raw.transactions AS t "
                "USING (transaction_id) WHERE t.batch_id LIKE 'stream-%' GROUP BY d.split"
            ).fetchall()
        )
    assert streamed >= len(live) and logged >= len(live)
    assert all(from_stream.get(split, 0) > 1_000 for split in ("train", "validation", "test"))


def test_the_landing_sensor_sees_each_batch_once_with_a_bounded_cursor(platform_env: Settings) -> None:
    """A feature log lands a batch a minute for years: the cursor keeps only the batches of the last
    SEEN_HORIZON, and every batch is still requested exactly once."""
    settings = platform_env
    zone = LandingZone(settings.landing_dir)
    instance = instance_for(settings)
    resources = {"landing": LandingResource(root=str(settings.landing_dir))}
    history = simulate(SimulationConfig(cards=20, days=1, seed=3)).transactions
    start = datetime(2026, 3, 1, tzinfo=UTC)
    requested: list[str] = []
    cursor = None
    for index in range(8):  # one batch every 20 minutes, the sensor ticking after each
        batch = f"stream-{index}"
        zone.write_batch(batch, history.slice(index, 1), source=STREAM_SOURCE)
        manifest = zone.batches_dir / batch / MANIFEST
        stamped = (start + index * SEEN_HORIZON / 3).isoformat(timespec="seconds")
        manifest.write_text(manifest.read_text().replace(zone.manifest(batch).created_at, stamped))
        result = landing_sensor(
            dg.build_sensor_context(instance=instance, resources=resources, cursor=cursor)
        )
        requested += [run.run_key for run in result.run_requests]
        cursor = result.cursor
        if result.dynamic_partitions_requests:
            instance.add_dynamic_partitions(
                LANDING_DAYS.name, list(result.dynamic_partitions_requests[0].partition_keys)
            )
    assert requested == [f"transactions:stream-{index}" for index in range(8)]
    assert sorted(json.loads(cursor)["seen"]) == [f"stream-{index}" for index in range(4, 8)]

    # A cursor of an earlier version (every id seen) is still understood.
    again = landing_sensor(
        dg.build_sensor_context(
            instance=instance, resources=resources, cursor=json.dumps([f"stream-{i}" for i in range(8)])
        )
    )
    assert again.skip_reason is not None and not again.run_requests
