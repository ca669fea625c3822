"""Bytewax connectors for Kafka (FRAUD_PLATFORM_TRANSPORT=kafka): transactions in, decisions and dead letters out.

Built on `bytewax.connectors.kafka`; topic names from `fraud_platform.lib.bus.kafka_topics`, brokers and
librdkafka properties (TLS, SASL) from the settings. Features and the online store stay in Redis.

* `TransactionsSource`: the transactions topic, one Bytewax partition per Kafka partition, from the beginning
  (or from the offset in the recovery snapshot). Consumer errors are not raised: they come into the flow as
  `KafkaError` items and `decode_message` turns each into a dead letter with the reason (a fatal client error
  stops the flow instead). The snapshot is the offset after the last message read; Bytewax 0.21.1's own
  partition would snapshot an error's invalid offset (-1001 + 1 = OFFSET_STORED) when an error ends a batch,
  which resumes at the wrong place, so `next_offset` counts only real offsets. With `exit_when_drained` the
  source stops at the end of each partition.
* `KafkaDeadLetterSink`: dead letters to the dead-letter topic, value the raw payload, header `reason`.
* `KafkaDecisionSink`: decisions to the decisions topic keyed by card_id, once per transaction as far as
  Redis can tell: a batch's decisions whose `decided:<transaction_id>` marker is absent are produced and
  flushed (acknowledged by the brokers), then the Redis decision sink sets the markers and appends to the
  live decisions stream. A crash between the flush and the markers produces those decisions again on
  recovery (at most one batch): the topic is at-least-once, and consumers dedupe by transaction_id.
  Nothing is lost: no marker is set before its decision is on Kafka. One partition, like the Redis
  decision sink: one producer per flow.

Every producer raises on an undelivered message (`bus.raise_undelivered`), so the flow stops (and
recovers) instead of dropping output.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeAlias

import redis
from bytewax.connectors.kafka import KafkaError, KafkaSink, KafkaSinkMessage, KafkaSource, KafkaSourceMessage
from bytewax.inputs import StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatefulSinkPartition, StatelessSinkPartition

from bytewax_flows.partitions import OnePartitionSink
from bytewax_flows.redis_io import stream_client
from fraud_platform.config import Settings
from fraud_platform.lib.bus import (
    DEFAULT_EVENT_WINDOW,
    DeadLetter,
    EventWindow,
    dead_letter,
    decode_event,
    kafka_properties,
    kafka_topics,
)
from fraud_platform.lib.schema import Transaction

if TYPE_CHECKING:
    from fraud_platform.scoring.scorer import Decision

KafkaItem: TypeAlias = KafkaSourceMessage[bytes | None, bytes | None] | KafkaError[bytes | None, bytes | None]
REASON_HEADER = "reason"


def _where(message: KafkaSourceMessage[Any, Any]) -> str:
    return f"{message.topic} partition {message.partition} offset {message.offset}"


def decode_message(
    item: KafkaItem, window: EventWindow = DEFAULT_EVENT_WINDOW, now_ms: int | None = None
) -> Transaction | DeadLetter:
    """A Kafka message's event parsed and validated (`bus.decode_event` with `window` and `now_ms`); a
    consumer error or a message without a value becomes a DeadLetter with the reason. A fatal client error
    raises RuntimeError."""
    if isinstance(item, KafkaError):
        if item.err.fatal():
            raise RuntimeError(f"fatal Kafka consumer error on {_where(item.msg)}: {item.err.str()}")
        return dead_letter(
            f"Kafka consumer error on {_where(item.msg)}: {item.err.str()}", item.msg.value or b""
        )
    if item.value is None:
        return dead_letter(
            f"Kafka message without a value at {_where(item)} (payload: its key)", item.key or b""
        )
    return decode_event(item.value, window, now_ms)


def next_offset(previous: int | None, batch: list[KafkaItem]) -> int | None:
    """The offset to resume from after `batch`: one past its last real message offset (errors without an
    offset do not move it)."""
    offsets = [(item.msg if isinstance(item, KafkaError) else item).offset for item in batch]
    valid = [offset for offset in offsets if offset is not None and offset >= 0]
    return max(valid) + 1 if valid else previous


class _ResumablePartition(StatefulSourcePartition[KafkaItem, int | None]):
    """Bytewax's Kafka partition with the snapshot from `next_offset`."""

    def __init__(
        self, inner: StatefulSourcePartition[KafkaItem, int | None], resume_state: int | None
    ) -> None:
        self._inner = inner
        self._offset = resume_state

    def next_batch(self) -> list[KafkaItem]:
        """The next messages and errors of the partition."""
        batch = self._inner.next_batch()
        self._offset = next_offset(self._offset, batch)
        return batch

    def snapshot(self) -> int | None:
        """The offset after the last message read (None before the first: start from the beginning)."""
        return self._offset

    def close(self) -> None:
        """Close the consumer."""
        self._inner.close()


class TransactionsSource(KafkaSource):
    """The transactions topic: messages and consumer errors (never raised), from the beginning."""

    def __init__(
        self, settings: Settings, *, exit_when_drained: bool = False, batch_size: int = 1_000
    ) -> None:
        super().__init__(
            list(settings.kafka_brokers),
            [kafka_topics(settings.kafka_topic_prefix).transactions],
            tail=not exit_when_drained,
            add_config=dict(settings.kafka_config),
            batch_size=batch_size,
            raise_on_errors=False,
        )

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _ResumablePartition:
        """A reader of one Kafka partition, after the snapshot's offset or from the beginning."""
        return _ResumablePartition(super().build_part(step_id, for_part, resume_state), resume_state)


def _producer(
    settings: Settings, topic: str, step_id: str, worker_index: int, worker_count: int
) -> StatelessSinkPartition[KafkaSinkMessage[Any, bytes]]:
    """A Bytewax Kafka sink partition for `topic` that raises on undelivered messages."""
    sink = KafkaSink(
        list(settings.kafka_brokers), topic, add_config=kafka_properties(settings, producer=True)
    )
    return sink.build(step_id, worker_index, worker_count)


def dead_letter_message(letter: DeadLetter) -> KafkaSinkMessage[None, bytes]:
    """A dead letter as a Kafka message: no key, the raw payload, the reason in a header."""
    return KafkaSinkMessage(None, letter.payload, headers=[(REASON_HEADER, letter.reason.encode())])


def decision_message(decision: Decision) -> KafkaSinkMessage[bytes, bytes]:
    """A decision as a Kafka message keyed by card_id, with the decision's JSON (`decision_event`)."""
    from fraud_platform.scoring.decisions import decision_event  # see undecided

    return KafkaSinkMessage(decision.card_id.encode(), decision_event(decision))


class _DeadLetterPartition(StatelessSinkPartition[DeadLetter]):
    def __init__(self, producer: StatelessSinkPartition[KafkaSinkMessage[Any, bytes]]) -> None:
        self._producer = producer

    def write_batch(self, items: list[DeadLetter]) -> None:
        """Produce the batch's dead letters and wait for the brokers' acknowledgement."""
        self._producer.write_batch([dead_letter_message(letter) for letter in items])

    def close(self) -> None:
        self._producer.close()


class KafkaDeadLetterSink(DynamicSink[DeadLetter]):
    """Events the flow could not use, to the dead-letter topic (at-least-once: may repeat after recovery)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _DeadLetterPartition:
        """A producer for one worker."""
        topic = kafka_topics(self._settings.kafka_topic_prefix).dead_letters
        return _DeadLetterPartition(_producer(self._settings, topic, step_id, worker_index, worker_count))


def undecided(client: redis.Redis, decisions: list[Decision], shards: int | None = None) -> list[Decision]:
    """The first decision of each transaction in the batch that has no `decided:` marker yet (one MGET; one
    per shard on Redis Cluster, where `shards` is required)."""
    # Imported here: the scoring package loads the model libraries, which the feature flow does not need.
    from fraud_platform.scoring.decisions import stored_decisions

    if not decisions:
        return []
    markers = stored_decisions(client, decisions, shards)
    fresh: dict[str, Decision] = {}
    for decision, marker in zip(decisions, markers, strict=True):
        if marker is None:
            fresh.setdefault(decision.transaction_id, decision)
    return list(fresh.values())


class _DecisionPartition(StatefulSinkPartition["Decision", None]):
    def __init__(
        self,
        client: redis.Redis,
        producer: StatelessSinkPartition[KafkaSinkMessage[Any, bytes]],
        markers: StatefulSinkPartition[Decision, None],
        shards: int,
    ) -> None:
        self._client = client
        self._producer = producer
        self._markers = markers
        self._shards = shards

    def write_batch(self, items: list[Decision]) -> None:
        """Produce the new decisions and wait for the brokers, then mark them decided in Redis (the markers of
        the batch before are confirmed first, so that it counts as decided)."""
        self._markers.snapshot()  # the Redis sink confirms its batch in flight
        self._producer.write_batch(
            [decision_message(decision) for decision in undecided(self._client, items, self._shards)]
        )
        self._markers.write_batch(items)

    def snapshot(self) -> None:
        """Confirm the markers in flight."""
        self._markers.snapshot()

    def close(self) -> None:
        self._producer.close()
        self._markers.close()
        self._client.close()


class KafkaDecisionSink(OnePartitionSink["Decision", None]):
    """Decisions to the decisions topic, keyed by card_id; `markers` (the Redis decision sink) records each
    transaction as decided after its decision is on Kafka and keeps the live decisions stream. Items
    (key, Decision), any key: one partition, one producer."""

    PART = "decisions"

    def __init__(self, settings: Settings, redis_url: str, markers: OnePartitionSink[Decision, None]) -> None:
        self._settings = settings
        self._url = redis_url
        self._markers = markers

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _DecisionPartition:
        """A producer and the Redis decisions partition."""
        topic = kafka_topics(self._settings.kafka_topic_prefix).decisions
        return _DecisionPartition(
            stream_client(self._url, self._settings.redis_cluster),
            _producer(self._settings, topic, step_id, 0, 1),
            self._markers.build_part(step_id, for_part, None),
            self._settings.stream_shards,
        )
