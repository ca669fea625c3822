"""The real-time feature flow against a real Redis server: parity with the backfill, dead letters, recovery,
and `python -m bytewax.run` with two workers and with two processes."""

import dataclasses
import gc
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pytest
import redis
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, run_main
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bytewax_flows.realtime_features import (
    BACKLOG_GC_THRESHOLDS,
    LIGHT_GC_THRESHOLDS,
    CardFeatures,
    build_flow,
)
from bytewax_flows.redis_io import CardFeatureSink, DeadLetterSink, RedisStreamSource
from fraud_platform.config import Settings
from fraud_platform.features.backfill import backfill
from fraud_platform.features.packing import REALTIME_LAYOUT
from fraud_platform.features.realtime import FEATURE_NAMES, CardState, FeatureRow
from fraud_platform.lib.bus import (
    DUPLICATE_REASON,
    EVENT_FIELD,
    events_from_table,
    publish,
    read_dead_letters,
    transaction_event,
)
from fraud_platform.lib.keys import card_realtime_key, transactions_stream
from fraud_platform.lib.redis_server import LocalRedisServer, free_port
from fraud_platform.lib.schema import TRANSACTIONS, Transaction
from fraud_platform.lib.simulator import SimulationConfig, simulate
from fraud_platform.scoring.decisions import first_seen_key
from fraud_platform_tests.test_realtime_features import arrivals, txn

TTL = 3_600
MARKER_TTL = 7_200  # the first-seen markers' own TTL, longer than the features'
BAD_PAYLOADS = [b"{not json", b"[1, 2]", b'{"transaction_id": "x"}', b"x" * 20_000]


def reordered(table: pa.Table, lateness_ms: int, seed: int, duplicates: int = 10) -> list[dict]:
    """The table's events (plus exact repeats of some) in an arrival order at most `lateness_ms` late."""
    events = list(events_from_table(table))
    rng = np.random.default_rng(seed)
    events += [events[index] for index in rng.choice(len(events), duplicates, replace=False)]
    arrival = np.array([event["timestamp"] for event in events]) + rng.integers(
        0, lateness_ms + 1, len(events)
    )
    return [events[index] for index in np.argsort(arrival, kind="stable")]


def expected_features(table: pa.Table) -> dict[str, np.ndarray]:
    """transaction_id -> the backfill's feature vector."""
    result = backfill(table, processes=1)
    matrix = np.column_stack([result.column(name).to_numpy() for name in FEATURE_NAMES])
    return dict(zip(result.column("transaction_id").to_pylist(), matrix, strict=True))


def newest_per_card(table: pa.Table) -> dict[str, str]:
    """card_id -> transaction_id of the card's newest event by (timestamp, transaction_id)."""
    rows = table.select(["card_id", "timestamp", "transaction_id"]).to_pylist()
    newest: dict[str, tuple] = {}
    for row in rows:
        key = (row["timestamp"], row["transaction_id"])
        newest[row["card_id"]] = max(newest.get(row["card_id"], key), key)
    return {card: key[1] for card, key in newest.items()}


def assert_rows_match(rows: list[FeatureRow], expected: dict[str, np.ndarray]) -> None:
    last = {row.transaction_id: np.array(row.values) for row in rows}
    assert last.keys() == expected.keys()
    for transaction_id, values in expected.items():
        np.testing.assert_allclose(last[transaction_id], values, rtol=0, atol=1e-9, err_msg=transaction_id)


def stored_cards(clean_redis: redis.Redis) -> dict[str, bytes]:
    """Every real-time card key and its packed value."""
    return {key.decode(): clean_redis.get(key) for key in clean_redis.scan_iter(match="rt:*", count=1_000)}


def assert_store_matches(clean_redis: redis.Redis, table: pa.Table, expected: dict[str, np.ndarray]) -> None:
    stored = stored_cards(clean_redis)
    newest = newest_per_card(table)
    assert stored.keys() == {card_realtime_key(card) for card in newest}
    for card, transaction_id in newest.items():
        np.testing.assert_allclose(
            REALTIME_LAYOUT.unpack(stored[card_realtime_key(card)]),
            expected[transaction_id],
            rtol=0,
            atol=1e-9,
        )
    assert 0 < clean_redis.ttl(card_realtime_key(next(iter(newest)))) <= TTL


def run_in_process(
    payloads: list[bytes], url: str, lateness_seconds: int = 300, rows: list | None = None
) -> list[FeatureRow]:
    rows = [] if rows is None else rows
    config = dataclasses.replace(Settings.from_env({}), allowed_lateness_seconds=lateness_seconds)
    flow = build_flow(
        TestingSource(payloads, batch_size=64),
        TestingSink(rows),
        DeadLetterSink(url),
        CardFeatureSink(url, TTL),
        settings=config,
    )
    run_main(flow)
    return rows


@pytest.fixture(scope="module")
def history() -> pa.Table:
    return simulate(SimulationConfig(cards=60, days=3, seed=21)).transactions


def test_flow_equals_the_backfill_and_dead_letters_every_bad_event(
    redis_server: LocalRedisServer, clean_redis: redis.Redis, history: pa.Table
) -> None:
    events = reordered(history, lateness_ms=300_000, seed=1, duplicates=12)
    payloads = [orjson.dumps(event) for event in events]
    payloads[5:5] = BAD_PAYLOADS
    rows = run_in_process(payloads, redis_server.url)

    expected = expected_features(history)
    assert_rows_match(rows, expected)
    served = [row for row in rows if not row.correction]
    assert len(served) == history.num_rows  # every transaction served once, duplicates not again
    assert_store_matches(clean_redis, history, expected)
    reasons = [letter.reason for letter in read_dead_letters(clean_redis)]
    assert reasons.count(DUPLICATE_REASON) == 12
    assert len(reasons) == 12 + len(BAD_PAYLOADS)
    assert any(reason.startswith("invalid JSON") for reason in reasons)
    assert "event must be a JSON object, got list" in reasons
    assert "missing field 'amount'" in reasons
    assert any("exceeds the limit" in reason for reason in reasons)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stream=arrivals(), batch_size=st.sampled_from([1, 3, 50]))
def test_flow_parity_on_generated_streams_with_ties_bursts_duplicates_and_lateness(
    redis_server: LocalRedisServer, stream: tuple[list[Transaction], int], batch_size: int
) -> None:
    events, lateness_ms = stream
    clean_redis = redis_server.client()
    clean_redis.flushdb()
    rows: list[FeatureRow] = []
    config = dataclasses.replace(Settings.from_env({}), allowed_lateness_seconds=lateness_ms // 1000)
    flow = build_flow(
        TestingSource([transaction_event(event) for event in events], batch_size=batch_size),
        TestingSink(rows),
        DeadLetterSink(redis_server.url),
        CardFeatureSink(redis_server.url, TTL),
        settings=config,
    )
    run_main(flow)
    unique = {event.transaction_id: event for event in events}
    table = _table(list(unique.values()))
    expected = expected_features(table)
    assert_rows_match(rows, expected)
    assert_store_matches(clean_redis, table, expected)
    assert len(read_dead_letters(clean_redis)) == len(events) - len(unique)


def _table(events: list[Transaction]) -> pa.Table:
    columns = {field.name: [getattr(event, field.name, None) for event in events] for field in TRANSACTIONS}
    columns["timestamp"] = pa.array([event.timestamp_ms * 1000 for event in events], pa.int64()).cast(
        TRANSACTIONS.field("timestamp").type
    )
    return pa.table(columns, schema=TRANSACTIONS)


def test_redis_source_resumes_exactly_after_recovery(
    redis_server: LocalRedisServer, clean_redis: redis.Redis, history: pa.Table, tmp_path: Path
) -> None:
    events = reordered(history, lateness_ms=300_000, seed=2, duplicates=0)
    shards = 3
    streams = [transactions_stream(shard) for shard in range(shards)]
    recovery = tmp_path / "recovery"
    recovery.mkdir()
    init_db_dir(recovery, 1)
    rows: list[FeatureRow] = []

    def run() -> None:
        flow = build_flow(
            RedisStreamSource(redis_server.url, streams, batch_size=100, exit_when_drained=True),
            TestingSink(rows),
            DeadLetterSink(redis_server.url),
            CardFeatureSink(redis_server.url, TTL),
            settings=Settings.from_env({}),
        )
        run_main(flow, epoch_interval=None, recovery_config=RecoveryConfig(recovery))

    half = len(events) // 2
    publish(clean_redis, events[:half], shards)
    clean_redis.xadd(streams[0], {"not-an-event": "x"})
    run()
    publish(clean_redis, events[half:], shards)
    run()  # resumes from the snapshot: reads only what the first run had not
    assert_rows_match(rows, expected_features(history))
    assert len([row for row in rows if not row.correction]) == history.num_rows  # nothing read twice
    assert [letter.reason for letter in read_dead_letters(clean_redis)] == [
        f"stream entry has no '{EVENT_FIELD}' field"
    ]
    assert_store_matches(clean_redis, history, expected_features(history))


def test_a_card_snapshot_is_its_state_packed_by_the_batch_and_resumes_identically() -> None:
    first = CardFeatures(None, 300_000)
    assert first.snapshot() is None
    first.on_batch([txn("a", 0)])
    snapshot = first.snapshot()
    assert isinstance(snapshot, bytes) and CardState.unpack(snapshot) == first.state

    resumed = CardFeatures(snapshot, 300_000)
    earlier_format = CardFeatures(CardState.unpack(snapshot), 300_000)  # a snapshot taken before packing
    rows = [card.on_batch([txn("b", 1)])[0] for card in (first, resumed, earlier_format)]
    assert [row.row for (row,) in rows] == [rows[0][0].row] * 3
    assert rows[0][0].row.values[FEATURE_NAMES.index("txn_count_10m")] == 2
    assert resumed.state == earlier_format.state == first.state
    assert CardState.unpack(resumed.snapshot()) == first.state  # the batch packed the state it left


def _bytewax_run(arguments: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bytewax.run",
            "bytewax_flows.realtime_features:build_flow(exit_when_drained=True)",
            *arguments,
        ],
        env=env,
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, output


@pytest.mark.slow
def test_bytewax_run_with_two_workers_and_with_two_processes_gives_identical_output(
    platform_env: Settings, redis_server: LocalRedisServer, clean_redis: redis.Redis, history: pa.Table
) -> None:
    env = {
        **os.environ,
        "REDIS_URL": redis_server.url,
        "FRAUD_PLATFORM_FEATURE_TTL_SECONDS": str(TTL),
        "FRAUD_PLATFORM_MARKER_TTL_SECONDS": str(MARKER_TTL),
    }
    events = reordered(history, lateness_ms=300_000, seed=3, duplicates=5)
    expected = expected_features(history)

    def two_workers() -> list[subprocess.Popen]:
        return [_bytewax_run(["-w", "2"], env)]

    def two_processes() -> list[subprocess.Popen]:
        addresses = f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"
        return [_bytewax_run(["-i", str(index), "-a", addresses], env) for index in range(2)]

    outputs = []
    for launch in (two_workers, two_processes):
        clean_redis.flushdb()
        publish(clean_redis, events, platform_env.stream_shards)
        _wait(launch())
        assert_store_matches(
            clean_redis, history, expected
        )  # the backfill's values: what one worker computes
        letters = read_dead_letters(clean_redis)
        assert sorted(letter.reason for letter in letters) == [DUPLICATE_REASON] * 5
        first_seen = next(clean_redis.scan_iter(match=first_seen_key("*")))
        assert TTL < clean_redis.ttl(first_seen) <= MARKER_TTL
        outputs.append((stored_cards(clean_redis), sorted(letter.payload for letter in letters)))
    assert outputs[0] == outputs[1]


@pytest.mark.parametrize(
    ("events", "batch_size", "thresholds"),
    [(20_000, 5, LIGHT_GC_THRESHOLDS), (150_000, 500, BACKLOG_GC_THRESHOLDS)],
    ids=["light traffic", "backlog"],
)
def test_garbage_collections_stay_small_while_card_states_accumulate(
    platform_env: Settings, events: int, batch_size: int, thresholds: tuple[int, int, int]
) -> None:
    """The source's batch size sets the collector (`tune_collector`): a young collection walks about the
    young threshold's count of objects (2,000 with small batches: 3-5 ms pauses instead of the 7-35 ms of
    20,000 in docs/benchmarks.md), one of generation 1 at most about (t1 + 2) x t0 however many card states
    and rows pile up (at (20,000, 50) a million objects, a 217 ms pause). Full collections stay as rare as
    t0 x t1 x t2 net allocations."""
    now_ms = int(time.time() * 1000)
    payloads = [
        orjson.dumps(
            {
                "transaction_id": f"gc{index}",
                "card_id": f"new-card-{index}",  # every event a card never seen: a state that stays
                "merchant_id": "m1",
                "amount": 10.0,
                "currency": "EUR",
                "timestamp": now_ms - 60_000 + index // 10,
            }
        )
        for index in range(events)
    ]
    walked: dict[int, list[int]] = {0: [], 1: []}  # objects in the collected generations, by generation

    def count_walked(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and info["generation"] < 2:
            generations = range(info["generation"] + 1)
            walked[info["generation"]].append(sum(len(gc.get_objects(generation=g)) for g in generations))

    thresholds_before = gc.get_threshold()
    rows: list[FeatureRow] = []
    flow = build_flow(
        TestingSource(payloads, batch_size=batch_size),
        TestingSink(rows),
        TestingSink([]),
        TestingSink([]),
        settings=platform_env,
    )
    gc.callbacks.append(count_walked)
    try:
        run_main(flow)
        in_force = gc.get_threshold()
    finally:
        gc.callbacks.remove(count_walked)
        gc.set_threshold(*thresholds_before)
    assert len(rows) == len(payloads)  # every row kept: each event's card state and row survive the run
    assert in_force == thresholds
    young, middle, old = thresholds
    assert walked[0] and max(walked[0]) <= 2 * young, (max(walked[0]), young)
    assert walked[1] and max(walked[1]) <= (middle + 2) * young <= 80_000, (max(walked[1]), young, middle)
    assert young * middle * old >= 100_000_000
