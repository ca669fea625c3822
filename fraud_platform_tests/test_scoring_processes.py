"""The scoring flow spread over two processes (`bytewax.run -i/-a`, one worker each, shards split between them)
decides exactly as one process does: the same transactions, once each, with the same score, decision, reasons
and model version, and the same per-card real-time features in Redis."""

import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import redis

from fraud_platform.config import Settings
from fraud_platform.features.packing import REALTIME_LAYOUT
from fraud_platform.lib.bus import events_from_table, publish
from fraud_platform.lib.keys import card_realtime_key
from fraud_platform.lib.landing import LandingZone
from fraud_platform.lib.redis_server import LocalRedisServer, free_port
from fraud_platform.lib.simulator import SimulationConfig, simulate
from fraud_platform.scoring.decisions import read_decisions
from fraud_platform.scoring.scorer import APPROVE, DECLINE, REVIEW
from fraud_platform.testing import (
    load_random_batch_features,
    register_model,
    scoring_flow_process,
    scoring_settings,
    set_champion,
)

COMPARED = ("score", "decision", "reasons", "model_version")


def _decide(
    client: redis.Redis, settings: Settings, history: pa.Table, processes: int
) -> tuple[dict[str, dict], dict[str, np.ndarray]]:
    """From an empty server: batch features, the events on the bus, the flow in `processes` processes until
    drained; return transaction_id -> decision fields and card_id -> real-time features."""
    zone = LandingZone(settings.landing_dir)
    landed_before = {batch.batch_id for batch in zone.batches()}
    client.flushdb()
    load_random_batch_features(client, history, seed=3)
    publish(client, events_from_table(history), settings.stream_shards)
    env = {**os.environ, **settings.environment()}
    addresses = ";".join(f"localhost:{free_port()}" for _ in range(processes))
    options = [["-i", str(index), "-a", addresses] for index in range(processes)] if processes > 1 else [[]]
    flows = [scoring_flow_process(env, *option) for option in options]
    outputs = []
    for flow in flows:
        try:
            output, _ = flow.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for other in flows:
                other.kill()
            raise
        assert flow.returncode == 0, output.decode(errors="replace")
        outputs.append(output.decode(errors="replace"))
    # Each process decided some of the transactions (its metrics line): the work really was split.
    assert all(re.search(r"scoring: [1-9]\d* decisions/s", output) for output in outputs), outputs
    # The flow's one feature log (durable with recovery: one partition) landed every decision once.
    logged = [batch for batch in zone.batches() if batch.batch_id not in landed_before]
    assert sum(batch.transactions for batch in logged) == history.num_rows
    decisions = read_decisions(client)
    ids = [decision["transaction_id"] for decision in decisions]
    assert len(ids) == len(set(ids)), "a transaction was decided twice"
    by_id = {decision["transaction_id"]: {key: decision[key] for key in COMPARED} for decision in decisions}
    cards = sorted(set(history.column("card_id").to_pylist()))
    packed = client.mget([card_realtime_key(card) for card in cards])
    assert all(value is not None for value in packed), "a card has no real-time features"
    features = {card: REALTIME_LAYOUT.unpack(value) for card, value in zip(cards, packed, strict=True)}
    return by_id, features


@pytest.mark.slow
def test_two_processes_decide_as_one(tmp_path: Path, redis_server: LocalRedisServer) -> None:
    settings = scoring_settings(tmp_path / "home", redis_server.url)
    set_champion(settings, register_model(settings, 1, review=0.2, decline=0.6))
    history = simulate(SimulationConfig(cards=300, days=5, seed=21, fraud_card_share=0.3)).transactions
    client = redis_server.client()

    spread, spread_features = _decide(client, settings, history, processes=2)
    single, single_features = _decide(client, settings, history, processes=1)

    assert set(spread) == set(history.column("transaction_id").to_pylist())  # every one, none lost
    assert spread == single
    assert {decision["decision"] for decision in single.values()} == {APPROVE, REVIEW, DECLINE}
    assert spread_features.keys() == single_features.keys()
    for card, values in single_features.items():
        np.testing.assert_array_equal(spread_features[card], values, err_msg=card)
