"""The transaction bus: Redis Streams (the default) or Kafka (FRAUD_PLATFORM_TRANSPORT=kafka), keyed by card.

Redis layout (names from `fraud_platform.lib.keys`): a card's events go to shard `shard_of(card_id, shards)`,
the stream `stream:transactions:<shard>`; each entry has one field, `event`, the event as JSON (the input of
`schema.parse_transaction`: timestamp as epoch ms or ISO-8601 with a zone). An event that cannot be used goes
to `stream:dead-letter` with fields `reason` and `payload` (the raw bytes, cut to DEAD_LETTER_PAYLOAD_BYTES).

Beyond the schema, `decode_event` refuses a JSON object with a repeated key (a JSON parser keeps the last one
silently) and an event whose timestamp is implausible for its clock (`EventWindow`): a live event's clock is
the wall clock; an event of a replay carries the replayed time in the field `replay_clock` (epoch ms), which
the platform's own producers of history set (`events_from_table`, `transaction_event`), so history replays
as it happened. A replay clock itself must lie between 1990 and now.
Streams are trimmed to about FRAUD_PLATFORM_STREAM_MAX_LENGTH entries per shard on publish (0: never); a
consumer resumes from its own position (the Bytewax source snapshots it).

Kafka layout (`kafka_topics`, prefix FRAUD_PLATFORM_KAFKA_TOPIC_PREFIX): `<prefix>.transactions`, message key
the card_id (so a card's events keep their order in one partition), value the same JSON event as on Redis;
`<prefix>.decisions`, keyed by card_id, value the decision's JSON; `<prefix>.dead-letter`, value the raw
payload and the reason in the header `reason`. Retention is the topics' own; the Bytewax source keeps its
offsets in its recovery snapshots, not in a consumer group. docs/scale-out.md has the whole picture.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import redis

from fraud_platform.config import (
    DEFAULT_MAX_EVENT_AGE_DAYS,
    DEFAULT_MAX_EVENT_FUTURE_SECONDS,
    MAX_EVENT_AGE_VAR,
    MAX_EVENT_FUTURE_VAR,
    Settings,
)
from fraud_platform.lib.keys import DEAD_LETTER_STREAM, shard_of, transactions_stream
from fraud_platform.lib.landing import LandingZone
from fraud_platform.lib.schema import (
    DAY_MS,
    EVENT_FIELDS,
    MIN_TIMESTAMP_MS,
    TIMESTAMP_RANGE,
    TRANSACTIONS,
    InvalidTransaction,
    Transaction,
    parse_transaction,
)

if TYPE_CHECKING:
    from confluent_kafka import KafkaError, Message
    from redis.connection import Connection

EVENT_FIELD = "event"
# A card transaction is a few hundred bytes; anything this large is not one.
MAX_EVENT_BYTES = 16 * 1024
DEAD_LETTER_PAYLOAD_BYTES = 4 * 1024
DUPLICATE_REASON = "duplicate transaction_id"
REUSED_ID_REASON = "transaction_id reused with other content"
PIPELINE_SIZE = 1_000
STREAM_START = "0-0"  # the id before every entry
REPLAY_CLOCK_FIELD = "replay_clock"
_EVENT_KEY = EVENT_FIELD.encode()


class DeadLetter(NamedTuple):
    """An event the stream could not use: why, and its raw payload (cut to DEAD_LETTER_PAYLOAD_BYTES)."""

    reason: str
    payload: bytes


def dead_letter(reason: str, payload: bytes) -> DeadLetter:
    """A DeadLetter with the payload cut to DEAD_LETTER_PAYLOAD_BYTES."""
    return DeadLetter(reason, payload[:DEAD_LETTER_PAYLOAD_BYTES])


@dataclass(frozen=True, slots=True)
class EventWindow:
    """How far an event's timestamp may lie behind or ahead of its clock (milliseconds)."""

    max_age_ms: int = DEFAULT_MAX_EVENT_AGE_DAYS * DAY_MS
    max_future_ms: int = DEFAULT_MAX_EVENT_FUTURE_SECONDS * 1000

    @classmethod
    def from_settings(cls, settings: Settings) -> EventWindow:
        """FRAUD_PLATFORM_MAX_EVENT_AGE_DAYS and FRAUD_PLATFORM_MAX_EVENT_FUTURE_SECONDS."""
        return cls(settings.max_event_age_days * DAY_MS, settings.max_event_future_seconds * 1000)

    def violation(self, timestamp_ms: int, replay_clock: Any, now_ms: int) -> str | None:
        """Why `timestamp_ms` is implausible against the replay clock (None: live, the wall clock `now_ms`),
        or None when it is plausible."""
        if replay_clock is None:
            clock = now_ms
        elif type(replay_clock) is int and MIN_TIMESTAMP_MS <= replay_clock <= now_ms + self.max_future_ms:
            clock = replay_clock
        else:
            return (
                f"field '{REPLAY_CLOCK_FIELD}' must be epoch ms from {TIMESTAMP_RANGE[:4]} up to now, "
                f"got {replay_clock!r:.40}"
            )
        if timestamp_ms > clock + self.max_future_ms:
            return (
                f"field 'timestamp' ({_utc(timestamp_ms)}) is {_duration(timestamp_ms - clock)} ahead of the "
                f"{_clock_name(replay_clock)}, more than {MAX_EVENT_FUTURE_VAR}={self.max_future_ms // 1000}"
            )
        if timestamp_ms < clock - self.max_age_ms:
            return (
                f"field 'timestamp' ({_utc(timestamp_ms)}) is {_duration(clock - timestamp_ms)} behind the "
                f"{_clock_name(replay_clock)}, more than {MAX_EVENT_AGE_VAR}={self.max_age_ms // DAY_MS}"
            )
        return None


DEFAULT_EVENT_WINDOW = EventWindow()


def _utc(millis: int) -> str:
    return datetime.fromtimestamp(millis / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _clock_name(replay_clock: int | None) -> str:
    """The clock an event was judged against, for its dead letter (formatted only when there is one)."""
    return "wall clock" if replay_clock is None else f"replay clock ({_utc(replay_clock)})"


def _duration(millis: int) -> str:
    return f"{millis / DAY_MS:,.1f} days" if millis >= DAY_MS else f"{millis / 1000:,.0f} s"


class _RepeatedKey(ValueError):
    pass


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise _RepeatedKey(next(key for index, key in enumerate(keys) if key in keys[:index]))
    return dict(pairs)


def repeated_key(payload: bytes) -> str | None:
    """The first key repeated within one JSON object of the payload (at any depth), or None.

    Raises RecursionError for a payload nested deeper than Python's parser goes."""
    try:
        json.loads(payload, object_pairs_hook=_unique_pairs)
    except _RepeatedKey as error:
        return str(error)
    except ValueError:  # orjson read it: nothing this parser refuses can hide a repeated key
        return None
    return None


def decode_event(
    payload: bytes | None,
    window: EventWindow = DEFAULT_EVENT_WINDOW,
    now_ms: int | None = None,
    *,
    live: bool = False,
) -> Transaction | DeadLetter:
    """Parse and validate one stream payload; every problem becomes a DeadLetter with the reason.

    The timestamp is judged by `window` against the event's replay clock or the wall clock (`now_ms`,
    default: the current time). With `live` (an authorization request) a replay clock is refused: only history
    put on the bus by the platform's own replay may bring its clock."""
    if payload is None:
        return DeadLetter(f"stream entry has no '{EVENT_FIELD}' field", b"")
    if len(payload) > MAX_EVENT_BYTES:
        return dead_letter(
            f"event of {len(payload):,} bytes exceeds the limit of {MAX_EVENT_BYTES:,}", payload
        )
    try:
        raw = orjson.loads(payload)
        keys, clock = (len(raw), raw.get(REPLAY_CLOCK_FIELD)) if type(raw) is dict else (0, None)
        txn = parse_transaction(raw)
    except orjson.JSONDecodeError as error:
        return dead_letter(f"invalid JSON: {error}", payload)
    except InvalidTransaction as error:
        return dead_letter(str(error), payload)
    # Each key and each text value is two quotes: a count that matches the plain event's proves no key is
    # repeated; anything else (escaped quotes, other fields, nested values, repeats) gets the full check.
    texts = 4 + (txn.channel is not None) + (txn.mcc is not None)
    if payload.count(b'"') != 2 * (keys + texts):
        try:
            key = repeated_key(payload)
        except RecursionError:
            return dead_letter("JSON nested too deeply for an event", payload)
        if key is not None:
            return dead_letter(f"key '{key:.40}' appears more than once in the JSON object", payload)
    if live and clock is not None:
        return dead_letter(
            f"field '{REPLAY_CLOCK_FIELD}' is for replays of history; an authorization is judged by the wall clock",
            payload,
        )
    if now_ms is None:
        now_ms = time.time_ns() // 1_000_000
    if clock is None and now_ms - window.max_age_ms <= txn.timestamp_ms <= now_ms + window.max_future_ms:
        return txn  # the live common case, without a call
    reason = window.violation(txn.timestamp_ms, clock, now_ms)
    return txn if reason is None else dead_letter(reason, payload)


def content_hash(txn: Transaction) -> bytes:
    """8 bytes identifying everything of a transaction but its id (stable across processes): what the
    first-seen markers hold, so a transaction_id reused with other content is told from a re-send."""
    content = (
        f"{txn.card_id}\0{txn.merchant_id}\0{txn.amount!r}\0{txn.currency}\0{txn.timestamp_ms}"
        f"\0{txn.lat!r}\0{txn.lon!r}\0{txn.channel}\0{txn.mcc}"
    )
    return hashlib.blake2b(content.encode(), digest_size=8).digest()


def transaction_event(txn: Transaction) -> bytes:
    """A validated transaction back as an event payload (timestamp in epoch ms, absent fields left out).

    It was judged against its clock where it came in (the API, the stream), so it is stamped with its own
    time as replay clock: the flow does not judge it again against a later wall clock."""
    event = {field: getattr(txn, field) for field in EVENT_FIELDS if field != "timestamp"}
    event["timestamp"] = event[REPLAY_CLOCK_FIELD] = txn.timestamp_ms
    return orjson.dumps({key: value for key, value in event.items() if value is not None})


def events_from_table(table: pa.Table) -> Iterator[dict[str, Any]]:
    """Landing rows (schema.TRANSACTIONS) as events: timestamp in epoch ms, empty optional fields left out,
    stamped with the replay clock (`REPLAY_CLOCK_FIELD`): history replays at its own time."""
    millis = pc.divide(
        pc.cast(pc.cast(table.column("timestamp"), TRANSACTIONS.field("timestamp").type), pa.int64()), 1000
    )
    table = table.set_column(table.schema.get_field_index("timestamp"), "timestamp", millis)
    table = table.append_column(REPLAY_CLOCK_FIELD, millis)
    columns = [*EVENT_FIELDS, REPLAY_CLOCK_FIELD]
    for batch in table.select(columns).to_batches(max_chunksize=PIPELINE_SIZE * 10):
        for row in batch.to_pylist():
            yield {key: value for key, value in row.items() if value is not None}


class KafkaTopics(NamedTuple):
    """The platform's Kafka topics."""

    transactions: str
    decisions: str
    dead_letters: str


def kafka_topics(prefix: str) -> KafkaTopics:
    """The topic names under a prefix (FRAUD_PLATFORM_KAFKA_TOPIC_PREFIX)."""
    return KafkaTopics(f"{prefix}.transactions", f"{prefix}.decisions", f"{prefix}.dead-letter")


class UndeliveredMessage(RuntimeError):
    """Kafka did not acknowledge a produced message (after librdkafka's own retries)."""


def raise_undelivered(error: KafkaError | None, message: Message) -> None:
    """librdkafka delivery report: a failure raises from the producer's poll/flush, so none is silent."""
    if error is not None:
        raise UndeliveredMessage(f"Kafka did not take a message for topic {message.topic()}: {error.str()}")


def kafka_properties(settings: Settings, *, producer: bool = False) -> dict[str, Any]:
    """librdkafka configuration: the brokers and FRAUD_PLATFORM_KAFKA_CONFIG; a producer's also raises on
    undelivered messages."""
    properties: dict[str, Any] = {"bootstrap.servers": ",".join(settings.kafka_brokers)}
    properties.update(settings.kafka_config)
    if producer:
        properties["on_delivery"] = raise_undelivered
    return properties


def create_topics(settings: Settings, timeout_seconds: float = 30.0) -> list[str]:
    """Create the missing platform topics with FRAUD_PLATFORM_STREAM_SHARDS partitions each and the
    brokers' default replication and retention; return the names created."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(kafka_properties(settings))
    requests = [
        NewTopic(topic, num_partitions=settings.stream_shards)
        for topic in kafka_topics(settings.kafka_topic_prefix)
    ]
    created = []
    for topic, future in admin.create_topics(requests, request_timeout=timeout_seconds).items():
        try:
            future.result(timeout=timeout_seconds)
            created.append(topic)
        except KafkaException as error:
            if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    return created


class KafkaPublisher:
    """Produces events to the transactions topic keyed by card_id: a card's events stay in order in one
    partition (librdkafka's default partitioner, CRC32 of the key)."""

    def __init__(self, settings: Settings) -> None:
        from confluent_kafka import Producer

        self.topic = kafka_topics(settings.kafka_topic_prefix).transactions
        self._undelivered: list[str] = []
        properties = kafka_properties(settings) | {"on_delivery": self._record_undelivered}
        self._producer = Producer(properties)

    def _record_undelivered(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self._undelivered.append(f"{message.topic()}: {error.str()}")

    def publish(self, events: Iterable[Mapping[str, Any]]) -> int:
        """Produce the events and wait until the brokers have them all; return how many.

        Raises UndeliveredMessage after the flush when any was not delivered (librdkafka retries until
        message.timeout.ms), with their count and the first failure. The delivery report only records: an
        exception raised inside librdkafka's callback was never freed (DuckDB's bindings then reported
        "leaked instance" at the test run's exit).
        """
        published = 0
        for event in events:
            key, value = str(event.get("card_id", "")).encode(), orjson.dumps(event)
            while True:
                try:
                    self._producer.produce(self.topic, value, key)
                    break
                except BufferError:  # the local queue is full: let deliveries drain it
                    self._producer.poll(0.1)
            published += 1
        self._producer.flush()
        if self._undelivered:
            failures, self._undelivered = self._undelivered, []
            raise UndeliveredMessage(
                f"Kafka did not take {len(failures)} message(s), the first for topic {failures[0]}"
            )
        return published


def xadd_arguments(
    card_id: str, payload: bytes, shards: int, max_length: int = 0
) -> tuple[str | int | bytes, ...]:
    """What follows XADD for one event payload on Redis: its card's shard of the transactions stream, the trim
    (`max_length` > 0) and the entry."""
    trim = ("MAXLEN", "~", max_length) if max_length > 0 else ()
    return (transactions_stream(shard_of(card_id, shards)), *trim, "*", EVENT_FIELD, payload)


def publish(
    target: redis.Redis | KafkaPublisher,
    events: Iterable[Mapping[str, Any]],
    shards: int,
    *,
    max_length: int = 0,
) -> int:
    """Publish events to the bus; return the number published. A KafkaPublisher produces them to the
    transactions topic (its partitions shard it; `shards` and `max_length` are Redis settings).

    On Redis: XADD each event to its card's shard, PIPELINE_SIZE per round trip. Events are published as
    given (a bad one is the stream's to dead-letter); one without a card_id goes to the shard of the empty
    card id. `max_length` > 0 trims each shard to about that many entries (`MAXLEN ~`): a consumer further
    behind than that loses the oldest events.
    """
    if isinstance(target, KafkaPublisher):
        return target.publish(events)
    published = 0
    pipeline = target.pipeline(transaction=False)
    for event in events:
        card_id = str(event.get("card_id", ""))
        pipeline.execute_command("XADD", *xadd_arguments(card_id, orjson.dumps(event), shards, max_length))
        published += 1
        if len(pipeline) >= PIPELINE_SIZE:
            pipeline.execute()
    pipeline.execute()
    return published


@dataclass(frozen=True)
class ReplayResult:
    """What a replay published to the bus, handed to the authorization API, and how fast."""

    published: int
    seconds: float
    authorized: int = 0

    @property
    def rate(self) -> float:
        """Transactions per second achieved."""
        return (self.published + self.authorized) / self.seconds if self.seconds > 0 else 0.0


def replay(
    target: redis.Redis | KafkaPublisher,
    tables: Iterable[pa.Table],
    shards: int,
    *,
    rate: float | None = None,
    progress: Callable[[int], None] | None = None,
    max_length: int = 0,
    authorize: Callable[[dict[str, Any]], None] | None = None,
    authorize_every: int = 0,
) -> ReplayResult:
    """Publish the transactions of `tables` in order to the bus (`publish`), at `rate` per second (None: as
    fast as possible).

    Pacing publishes small chunks and sleeps until each chunk's scheduled time, so the average rate holds
    over any stretch longer than a chunk (at most a fiftieth of a second's worth of events). With `authorize`,
    every `authorize_every`-th event is not published but handed to it at its scheduled time, as a live
    authorization (without the replay clock), after everything before it was published: a card's events
    still reach the flow in order.
    """
    if rate is not None and rate <= 0:
        raise ValueError(f"rate must be positive, got {rate}")
    if authorize is not None and authorize_every < 1:
        raise ValueError(f"authorize_every must be at least 1, got {authorize_every}")
    chunk = PIPELINE_SIZE if rate is None else max(1, min(PIPELINE_SIZE, int(rate / 50)))
    report = progress or (lambda _count: None)
    started = time.perf_counter()
    published = authorized = 0
    pending: list[dict[str, Any]] = []

    def flush() -> None:
        nonlocal published
        published += _publish_paced(
            target, pending, shards, rate, started, published + authorized, max_length
        )
        report(len(pending))
        pending.clear()

    for table in tables:
        for event in events_from_table(table):
            if authorize is not None and (published + authorized + len(pending)) % authorize_every == 0:
                flush()
                _wait_for_turn(rate, started, published + authorized)
                authorize({key: value for key, value in event.items() if key != REPLAY_CLOCK_FIELD})
                authorized += 1
                report(1)
                continue
            pending.append(event)
            if len(pending) >= chunk:
                flush()
    if pending:
        flush()
    return ReplayResult(published, time.perf_counter() - started, authorized)


def _wait_for_turn(rate: float | None, started: float, sent: int) -> None:
    if rate is not None:
        delay = started + sent / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)


def _publish_paced(
    target: redis.Redis | KafkaPublisher,
    events: list[dict[str, Any]],
    shards: int,
    rate: float | None,
    started: float,
    sent: int,
    max_length: int,
) -> int:
    if not events:
        return 0
    _wait_for_turn(rate, started, sent)
    return publish(target, events, shards, max_length=max_length)


STREAM_SOURCE = "stream"  # landing batches the scoring flow logged: never replayed back into it


def landing_days(zone: LandingZone, days: Iterable[str]) -> Iterator[pa.Table]:
    """Each day's landed transactions over every batch but the stream's own feature log, sorted by
    (timestamp, transaction_id)."""
    for day in days:
        files = zone.transaction_files(day, exclude_source=STREAM_SOURCE)
        if files:
            table = pa.concat_tables([pq.read_table(path, schema=TRANSACTIONS) for path in files])
            yield table.sort_by([("timestamp", "ascending"), ("transaction_id", "ascending")])


def stream_last_id(client: redis.Redis, stream: str) -> str:
    """Id of the newest entry of `stream` (STREAM_START when it is empty or does not exist)."""
    newest = client.xrevrange(stream, count=1)
    return newest[0][0].decode() if newest else STREAM_START


def stream_id(entry_id: str) -> tuple[int, int]:
    """A stream entry id ("<ms>-<seq>") as a comparable pair."""
    millis, _, sequence = entry_id.partition("-")
    return int(millis), int(sequence or 0)


def read_streams(
    client: redis.Redis, after: Mapping[str, str], count: int, block_ms: int | None
) -> dict[str, list[tuple[str, bytes | None]]]:
    """One XREAD of several streams (of one slot on a cluster): up to `count` entries of each after its id in
    `after`, as (id, event payload or None), for the streams that had any; waits up to block_ms if none had."""
    return stream_entries(client.xread(dict(after), count=count, block=block_ms))


def send_read_streams(connection: Connection, after: Mapping[str, str], count: int) -> None:
    """Send one XREAD of several streams (up to `count` entries of each after its id in `after`, no wait) on
    `connection` without reading the reply: `client.parse_response(connection, "XREAD")` then
    `stream_entries` read it later, so Redis serves the read while the caller works."""
    connection.send_command("XREAD", "COUNT", count, "STREAMS", *after.keys(), *after.values())


def stream_entries(reply: list | None) -> dict[str, list[tuple[str, bytes | None]]]:
    """An XREAD reply as redis-py parses it: (id, event payload or None) of each stream that had entries."""
    return {
        stream.decode(): [(entry_id.decode(), fields.get(_EVENT_KEY)) for entry_id, fields in entries]
        for stream, entries in reply or ()
    }


def write_dead_letters(client: redis.Redis, letters: Iterable[DeadLetter]) -> int:
    """XADD dead letters to the dead-letter stream in one pipeline; return how many."""
    pipeline = client.pipeline(transaction=False)
    for letter in letters:
        pipeline.execute_command(
            "XADD", DEAD_LETTER_STREAM, "*", "reason", letter.reason, "payload", letter.payload
        )
    written = len(pipeline)
    if written:
        pipeline.execute()
    return written


def read_dead_letters(client: redis.Redis, count: int | None = None) -> list[DeadLetter]:
    """The dead-letter stream's entries, oldest first (at most `count`)."""
    entries = client.xrange(DEAD_LETTER_STREAM, count=count)
    return [DeadLetter(fields[b"reason"].decode(), fields[b"payload"]) for _, fields in entries]
