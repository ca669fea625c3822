"""Faults of the stream, with the real processes: kill -9 of the scoring flow mid-stream and a restart from
Bytewax recovery decides every transaction exactly once, with the features an uninterrupted run computes;
a restart of the Redis server mid-stream is waited out and nothing is lost or decided twice. Neither fault
puts the server's password into the flow's logs. Three kill -9s at the main job's recovery settings (-s 5
-b 0) lose no feature-log record: after `load`, raw.decisions holds every decision once."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pytest
import redis

from fraud_platform.features.backfill import backfill
from fraud_platform.features.packing import REALTIME_LAYOUT
from fraud_platform.features.realtime import FEATURE_NAMES
from fraud_platform.lib.bus import events_from_table, publish
from fraud_platform.lib.keys import DECISIONS_STREAM, card_realtime_key
from fraud_platform.lib.redis_server import LocalRedisServer, free_port
from fraud_platform.lib.simulator import SimulationConfig, simulate
from fraud_platform.pipeline import instance_for, load_landing
from fraud_platform.scoring.decisions import read_decisions
from fraud_platform.testing import register_model, scoring_settings, set_champion

ROOT = Path(__file__).resolve().parents[1]


def _scoring_flow(
    recovery: Path | None, env: dict[str, str], snapshot_seconds: int = 1, follow: bool = False
) -> subprocess.Popen:
    recovery_options = ["-r", str(recovery), "-s", str(snapshot_seconds), "-b", "0"] if recovery else []
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bytewax.run",
            f"bytewax_flows.scoring:build_flow(exit_when_drained={not follow})",
            *recovery_options,
        ],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _history() -> pa.Table:
    history = simulate(SimulationConfig(cards=3_000, days=30, seed=11)).transactions
    return history.sort_by([("timestamp", "ascending"), ("transaction_id", "ascending")])


def _wait_for_progress(
    flow: subprocess.Popen, client: redis.Redis, decisions: int, at_least_seconds: float
) -> None:
    started = time.monotonic()
    while client.xlen(DECISIONS_STREAM) < decisions or time.monotonic() - started < at_least_seconds:
        assert flow.poll() is None, flow.communicate()[0]
        assert time.monotonic() - started < 120, "the flow made no progress"
        time.sleep(0.05)


def _assert_decided_exactly_once(client: redis.Redis, history: pa.Table) -> None:
    ids = [decision["transaction_id"] for decision in read_decisions(client)]
    assert len(ids) == len(set(ids)) == history.num_rows  # every transaction once: none lost, none twice


@pytest.mark.slow
def test_kill_9_and_restart_decide_every_transaction_exactly_once(
    tmp_path: Path, redis_server: LocalRedisServer, clean_redis: redis.Redis
) -> None:
    settings = scoring_settings(tmp_path / "home", redis_server.url)
    set_champion(settings, register_model(settings, 1, review=0.2, decline=0.6))
    history = _history()
    publish(clean_redis, events_from_table(history), settings.stream_shards)
    recovery = _recovery_store(tmp_path / "recovery")
    env = {**os.environ, **settings.environment(), "FRAUD_PLATFORM_SCORING_MODE": "model"}

    first = _scoring_flow(recovery, env)
    # Kill once a third is decided and snapshots (every second) have been taken.
    _wait_for_progress(first, clean_redis, history.num_rows // 3, at_least_seconds=3)
    first.send_signal(signal.SIGKILL)
    first.wait()
    decided_before = clean_redis.xlen(DECISIONS_STREAM)
    assert decided_before < history.num_rows  # it really died mid-stream

    second = _scoring_flow(recovery, env)
    output, _ = second.communicate(timeout=300)
    assert second.returncode == 0, output

    _assert_decided_exactly_once(clean_redis, history)
    assert redis_server.password not in output  # the flow never logs the server's URL
    # The per-card state after the restart equals an uninterrupted computation (the backfill).
    expected = backfill(history)
    newest = {}
    for card, values in zip(
        history.column("card_id").to_pylist(),
        zip(*(expected.column(name).to_numpy() for name in FEATURE_NAMES), strict=True),
        strict=True,
    ):
        newest[card] = np.array(values)
    for card, values in newest.items():
        stored = REALTIME_LAYOUT.unpack(clean_redis.get(card_realtime_key(card)))
        np.testing.assert_allclose(stored, values, rtol=1e-12, equal_nan=True, err_msg=card)


def _recovery_store(directory: Path) -> Path:
    directory.mkdir()
    subprocess.run([sys.executable, "-m", "bytewax.recovery", str(directory), "1"], check=True, cwd=ROOT)
    return directory


@pytest.mark.slow
def test_three_kill_9s_at_the_main_jobs_settings_lose_no_feature_log_record(
    tmp_path: Path, redis_server: LocalRedisServer, clean_redis: redis.Redis
) -> None:
    settings = scoring_settings(tmp_path / "home", redis_server.url, mode="rules")
    history = _history()
    # The history arrives in four parts, one before each run: whatever the machine's speed, every kill falls
    # in the middle of the stream (a quiet machine decided everything before a third kill could land).
    quarter = -(-history.num_rows // 4)
    parts = [history.slice(start, quarter) for start in range(0, history.num_rows, quarter)]
    recovery = _recovery_store(tmp_path / "recovery")
    env = {**os.environ, **settings.environment()}
    for part in parts[:3]:
        publish(clean_redis, events_from_table(part), settings.stream_shards)
        # Each run follows the stream and gets past its first snapshots (every 5 s) before the kill.
        flow = _scoring_flow(recovery, env, snapshot_seconds=5, follow=True)
        started = clean_redis.xlen(DECISIONS_STREAM)
        _wait_for_progress(flow, clean_redis, started + 1, at_least_seconds=0)
        _wait_for_progress(flow, clean_redis, started + part.num_rows // 2, at_least_seconds=6)
        flow.send_signal(signal.SIGKILL)
        flow.wait()
    assert clean_redis.xlen(DECISIONS_STREAM) < history.num_rows  # the last one really died mid-stream

    publish(clean_redis, events_from_table(parts[3]), settings.stream_shards)
    last = _scoring_flow(recovery, env, snapshot_seconds=5)
    output, _ = last.communicate(timeout=600)
    assert last.returncode == 0, output
    _assert_decided_exactly_once(clean_redis, history)
    assert any((settings.landing_dir / ".spool").iterdir())  # the snapshots named spooled parts

    assert load_landing(settings, instance_for(settings)).success
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as connection:
        decisions = connection.execute(
            "SELECT count(*), count(DISTINCT transaction_id) FROM raw.decisions"
        ).fetchone()
        (transactions,) = connection.execute("SELECT count(*) FROM raw.transactions").fetchall()
        missing = connection.execute(
            "SELECT count(*) FROM history ANTI JOIN raw.decisions USING (transaction_id)"
        ).fetchall()
    assert decisions == (history.num_rows, history.num_rows)  # every decision's record, once
    assert transactions == (history.num_rows,) and missing == [(0,)]


@pytest.mark.slow
def test_a_redis_restart_mid_stream_is_waited_out(tmp_path: Path) -> None:
    server = LocalRedisServer(tmp_path / "redis", free_port())
    server.start()
    try:
        client = server.client()
        settings = scoring_settings(tmp_path / "home", server.url)
        set_champion(settings, register_model(settings, 1, review=0.2, decline=0.6))
        history = _history()
        publish(client, events_from_table(history), settings.stream_shards)
        flow = _scoring_flow(None, {**os.environ, **settings.environment()})
        _wait_for_progress(flow, client, history.num_rows // 4, at_least_seconds=1)
        server.stop()  # SIGTERM: the server flushes its append-only file and exits
        time.sleep(1.0)
        assert flow.poll() is None  # the flow waits, it does not crash
        server.start()
        output, _ = flow.communicate(timeout=300)
        assert flow.returncode == 0, output
        _assert_decided_exactly_once(server.client(), history)
        assert server.password not in output  # not even in the logged connection errors
    finally:
        server.stop()
