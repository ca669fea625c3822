"""The real-time feature flow: transaction events in, per-card window features out to Redis.

    python -m bytewax.run "bytewax_flows.realtime_features:build_flow()" -s 1             # follow the streams
    python -m bytewax.run "bytewax_flows.realtime_features:build_flow(exit_when_drained=True)" -w 2

Reads the transactions from the configured transport (FRAUD_PLATFORM_TRANSPORT: every shard of the Redis
transactions stream, or the Kafka transactions topic: `stream_connectors`), validates each event with `schema.parse_transaction` (bad
ones go to the transport's dead letters with the reason), keys by card, runs `features.realtime.update` on the
card's state and writes each card's newest feature vector to Redis. Configuration comes from the
environment (`Settings.from_env()`): transport, shards, allowed lateness, feature TTL and the Redis server
(features and the online store are in Redis with either transport). A transaction_id is one transaction
(`TransactionIds`): the first event with an id stands, a later one with other content (on any card) is a
dead letter, an identical re-send goes on (the card's state and the decision marker make it idempotent).
Building the
flow tunes the process's garbage collector for a heap of long-lived card states, its thresholds following the
batch sizes (`tune_collector`).

Tests build the same flow with a TestingSource and TestingSinks; the per-transaction rows (served rows and
corrections) go to `sink` when one is given. `feature_steps` is the feature part as a function, so the
scoring flow (`bytewax_flows.scoring`) runs exactly these steps before it scores.
"""

from __future__ import annotations

import gc
import time
from functools import partial
from typing import NamedTuple, TypeGuard

import redis
from bytewax import operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import Sink
from redis.cluster import RedisCluster

from bytewax_flows.kafka_io import KafkaDeadLetterSink, KafkaItem, TransactionsSource, decode_message
from bytewax_flows.redis_io import CardFeatureSink, DeadLetterSink, RedisStreamSource, stream_client
from fraud_platform.config import Settings
from fraud_platform.features.realtime import CardState, DuplicateTransaction, FeatureRow, update
from fraud_platform.lib.bus import (
    DEFAULT_EVENT_WINDOW,
    DUPLICATE_REASON,
    REUSED_ID_REASON,
    DeadLetter,
    EventWindow,
    content_hash,
    decode_event,
    transaction_event,
)
from fraud_platform.lib.keys import transactions_stream
from fraud_platform.lib.redis_server import redis_url
from fraud_platform.lib.schema import Transaction
from fraud_platform.scoring.decisions import first_seen_key

FLOW_ID = "realtime_features"
# The garbage collector's thresholds follow the traffic, as the source's batches do (`tune_collector`, each
# batch). Card states live long and most per-event objects die young. Under a backlog (batches of
# BACKLOG_BATCH events or more) the youngest generation is collected every 20,000 net container allocations
# instead of 700: about 10 % more events/s. But each young collection pauses the worker for as long as it
# takes to free what it holds, and most of that is XGBoost's: every model call defines a class (about 20
# objects in reference cycles, ~1 us an object to free). At 1,000 requests/s those collections took 7-20 ms,
# 12-35 ms next to a CPU-burning neighbour, the cause of most of the flow's stalls over 20 ms there
# (docs/benchmarks.md, 2026-12-01 11:07); collected every 2,000 they take at most 3-6 ms. A collection of
# generation 1 walks whatever survived the young ones since the last: up to (middle threshold + 2) x young
# threshold objects (24,000 light, 80,000 under a backlog; with (20,000, 50) it was a million and a 217 ms
# stall). A full collection walks every card state created since start-up (~0.9 s per 4 million objects; what
# gc.freeze() froze at start-up is skipped): at most one per 100 million net allocations in either setting,
# rarer than a 30 s latency window can show, so a p99.9 over hours can contain one that the benchmark's does
# not.
LIGHT_GC_THRESHOLDS = (2_000, 10, 5_000)
BACKLOG_GC_THRESHOLDS = (20_000, 2, 2_500)
BACKLOG_BATCH = 100  # events in one source batch: the flow is catching up, throughput over pauses
_CLAIM_CHUNK = 1_000
# KEYS: the first-seen markers; ARGV[1] their TTL, ARGV[i + 1] the i-th event's content hash. Returns the
# (1-based) positions whose id was first seen with another content. One SET NX GET per event.
_CLAIM_SCRIPT = """
local conflicts = {}
for i, key in ipairs(KEYS) do
  local first = redis.call('SET', key, ARGV[i + 1], 'NX', 'GET', 'EX', ARGV[1])
  if first and first ~= ARGV[i + 1] then
    conflicts[#conflicts + 1] = i
  end
end
return conflicts
"""


def build_flow(
    source: Source[bytes | None] | Source[KafkaItem] | None = None,
    sink: Sink[FeatureRow] | None = None,
    dead_letter_sink: Sink[DeadLetter] | None = None,
    card_sink: Sink[FeatureRow] | None = None,
    *,
    settings: Settings | None = None,
    exit_when_drained: bool = False,
) -> Dataflow:
    """The dataflow. `source` and `dead_letter_sink` default to the configured transport's, `card_sink` to
    Redis (from settings).

    `source` yields raw event payloads (bytes; None for a stream entry without an event) or Kafka messages
    and errors; `sink`, when given, receives every FeatureRow; `exit_when_drained` stops the source at the
    end of the streams (partitions).
    """
    settings = settings or Settings.from_env()
    tune_collector(0)
    transaction_ids = None
    if source is None or dead_letter_sink is None or card_sink is None:
        url = redis_url(settings)
        transaction_ids = TransactionIds(
            stream_client(url, settings.redis_cluster), settings.marker_ttl_seconds
        )
        transport_source, transport_dead_letters = stream_connectors(settings, url, exit_when_drained)
        source = source or transport_source
        dead_letter_sink = dead_letter_sink or transport_dead_letters
        card_sink = card_sink or CardFeatureSink(url, settings.feature_ttl_seconds, settings.redis_cluster)
    lateness_ms = settings.allowed_lateness_seconds * 1000

    flow = Dataflow(FLOW_ID)
    feature_steps(
        flow,
        source,
        dead_letter_sink,
        card_sink,
        lateness_ms,
        sink,
        event_window=EventWindow.from_settings(settings),
        transaction_ids=transaction_ids,
    )
    return flow


def stream_connectors(
    settings: Settings, url: str, exit_when_drained: bool = False
) -> tuple[Source[bytes | None] | Source[KafkaItem], Sink[DeadLetter]]:
    """The transactions source and the dead-letter sink of FRAUD_PLATFORM_TRANSPORT: the Redis streams
    (`url`) or the Kafka topics."""
    if settings.transport == "kafka":
        return TransactionsSource(settings, exit_when_drained=exit_when_drained), KafkaDeadLetterSink(
            settings
        )
    shards = [transactions_stream(shard) for shard in range(settings.stream_shards)]
    return (
        RedisStreamSource(url, shards, exit_when_drained=exit_when_drained, cluster=settings.redis_cluster),
        DeadLetterSink(url, settings.redis_cluster),
    )


def feature_steps(
    flow: Dataflow,
    source: Source[bytes | None] | Source[KafkaItem],
    dead_letter_sink: Sink[DeadLetter],
    card_sink: Sink[FeatureRow],
    allowed_lateness_ms: int,
    row_sink: Sink[FeatureRow] | None = None,
    *,
    event_window: EventWindow = DEFAULT_EVENT_WINDOW,
    transaction_ids: TransactionIds | None = None,
) -> Stream[Served | FeatureRow]:
    """The feature part every flow shares: events in, card features and dead letters out. Returns every
    transaction's served row with the transaction (`Served`) and the corrections (what scoring consumes).
    `event_window`: how far a timestamp may lie from its clock (`bus.EventWindow`); `transaction_ids`: the
    first-seen markers that dead-letter a reused id (None: only duplicates within a card are caught)."""
    payloads = op.input("transactions", flow, source)
    # bytes | None: the JSON of one event (Redis); KafkaSourceMessage | KafkaError (Kafka)
    decoded = op.flat_map_batch("decode", payloads, partial(_decode_all, event_window, transaction_ids))
    # Transaction | DeadLetter
    checked = op.branch("split_invalid", decoded, _is_transaction)
    # checked.trues: Transaction; checked.falses: DeadLetter
    by_card = op.key_on("key_by_card", checked.trues, _card_id)
    # (card_id, Transaction)
    updated = op.stateful_batch(
        "update_card_state", by_card, lambda state: CardFeatures(state, allowed_lateness_ms)
    )
    # (card_id, Served | FeatureRow | DeadLetter): served rows with their transaction, then corrections;
    # a DeadLetter for a duplicate
    results = op.branch("split_duplicates", op.key_rm("unkey", updated), _is_output)
    # results.trues: Served | FeatureRow; results.falses: DeadLetter
    rows = op.flat_map_batch("rows", results.trues, _rows)
    # FeatureRow: served rows and corrections
    op.output("card_features", rows, card_sink)
    if row_sink is not None:
        op.output("feature_rows", rows, row_sink)
    op.output("dead_letters", op.merge("all_dead_letters", checked.falses, results.falses), dead_letter_sink)
    return results.trues


class Served(NamedTuple):
    """A transaction's served feature row (what a decision at its arrival sees), with the transaction and the
    wall-clock time (epoch ms) the flow took it in."""

    txn: Transaction
    row: FeatureRow
    received_ms: int


class CardFeatures(StatefulBatchLogic[Transaction, Served | FeatureRow | DeadLetter, bytes | None]):
    """One card's step: `update` for each of its transactions in a batch; a duplicate becomes a dead letter.
    The served row of each transaction comes wrapped in `Served`, corrections as plain rows.

    (`stateful_map` would wrap the same call in two more Python layers per event; this is the measured
    cheaper equivalent.) A snapshot is the packed state (`CardState.pack`, bytes), packed by each batch for
    the state it leaves: Bytewax asks every card touched in an epoch for its snapshot at the epoch's end, with
    recovery or without, and the worker pauses meanwhile; ready bytes cost that pause 0.6 us a card to pickle
    where a state cost 8 (the slower host, the simulator's cards). A flow resumed from a snapshot of the
    earlier format (the state itself) takes it as it is.
    """

    def __init__(self, resume_state: bytes | CardState | None, allowed_lateness_ms: int) -> None:
        if isinstance(resume_state, CardState):
            resume_state = resume_state.pack()
        self.packed = resume_state  # the state's snapshot
        self.state = CardState.unpack(resume_state) if resume_state is not None else None
        self.allowed_lateness_ms = allowed_lateness_ms

    def on_batch(self, values: list[Transaction]) -> tuple[list[Served | FeatureRow | DeadLetter], bool]:
        """Rows for the card's transactions of this batch, in order; the state is kept, and packed."""
        emitted: list[Served | FeatureRow | DeadLetter] = []
        state = self.state
        received_ms = time.time_ns() // 1_000_000
        for txn in values:
            try:
                state, rows = update(state, txn, allowed_lateness_ms=self.allowed_lateness_ms)
            except DuplicateTransaction:
                emitted.append(DeadLetter(DUPLICATE_REASON, transaction_event(txn)))
                continue
            emitted.append(Served(txn, rows[0], received_ms))  # `update` returns the served row first
            emitted.extend(rows[1:])
        self.state = state
        if state is not None:
            self.packed = state.pack()
        return emitted, StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes | None:
        """The card's packed state for recovery."""
        return self.packed


class TransactionIds:
    """First-seen markers in Redis: `seen:<transaction_id>` holds the content hash of the first event with the
    id (for `ttl_seconds`). `check` turns every later event with the id but other content into a dead letter
    (REUSED_ID_REASON), on any card and any worker, in one script call per 1,000 events (a pipeline per
    node on Redis Cluster). An identical re-send, and the replay of a recovered flow, pass."""

    def __init__(self, client: redis.Redis | RedisCluster, ttl_seconds: int) -> None:
        self._script = client.register_script(_CLAIM_SCRIPT)
        self._cluster = client if isinstance(client, RedisCluster) else None
        self._ttl = ttl_seconds

    def _first_seen_elsewhere(self, keys: list[str], hashes: list[bytes]) -> list[int]:
        """The (1-based) positions whose id was first seen with another content. On Redis Cluster the keys
        lie in many slots: SET NX GET per key, one pipeline per node, instead of the script."""
        if self._cluster is None:
            return self._script(keys=keys, args=[self._ttl, *hashes])
        pipeline = self._cluster.pipeline(transaction=False)
        for key, digest in zip(keys, hashes, strict=True):
            pipeline.set(key, digest, nx=True, get=True, ex=self._ttl)  # its reply: the old value (GET)
        firsts = pipeline.execute()
        return [
            position
            for position, (first, digest) in enumerate(zip(firsts, hashes, strict=True), start=1)
            if first is not None and first != digest
        ]

    def check(self, items: list[Transaction | DeadLetter]) -> list[Transaction | DeadLetter]:
        """The items, each transaction whose id was first seen with other content replaced by a dead letter."""
        positions = [index for index, item in enumerate(items) if isinstance(item, Transaction)]
        for start in range(0, len(positions), _CLAIM_CHUNK):
            chunk = positions[start : start + _CLAIM_CHUNK]
            txns: list[Transaction] = [items[index] for index in chunk]  # type: ignore[misc]
            conflicts = self._first_seen_elsewhere(
                [first_seen_key(txn.transaction_id) for txn in txns], [content_hash(txn) for txn in txns]
            )
            for position in conflicts:
                txn = txns[position - 1]
                items[chunk[position - 1]] = DeadLetter(REUSED_ID_REASON, transaction_event(txn))
        return items


def tune_collector(batch_size: int) -> None:
    """Set the process's garbage-collector thresholds for a source batch of `batch_size` events: short young
    collections under light traffic, fewer under a backlog (LIGHT_GC_THRESHOLDS, BACKLOG_GC_THRESHOLDS).
    Process-wide: under bytewax.run the flow owns its process."""
    gc.set_threshold(*(BACKLOG_GC_THRESHOLDS if batch_size >= BACKLOG_BATCH else LIGHT_GC_THRESHOLDS))


def _decode_all(
    window: EventWindow, transaction_ids: TransactionIds | None, items: list[bytes | None] | list[KafkaItem]
) -> list[Transaction | DeadLetter]:
    tune_collector(len(items))
    now_ms = time.time_ns() // 1_000_000  # the wall clock of live events, once per batch
    decoded = [
        decode_event(item, window, now_ms)
        if item is None or isinstance(item, bytes)
        else decode_message(item, window, now_ms)
        for item in items
    ]
    return transaction_ids.check(decoded) if transaction_ids is not None else decoded


def _is_transaction(item: Transaction | DeadLetter) -> TypeGuard[Transaction]:
    return isinstance(item, Transaction)


def _is_output(item: Served | FeatureRow | DeadLetter) -> TypeGuard[Served | FeatureRow]:
    return not isinstance(item, DeadLetter)


def _rows(items: list[Served | FeatureRow]) -> list[FeatureRow]:
    return [item.row if isinstance(item, Served) else item for item in items]


def _card_id(txn: Transaction) -> str:
    return txn.card_id
