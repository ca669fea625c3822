"""Where decisions go: the decisions stream (idempotent by transaction_id) and the feature log (landing zone).

* `write_decisions`: one Lua script call per chunk of 1,000 decisions. For each decision it sets a marker
  `decided:<transaction_id>` holding the decision's JSON (SET NX EX ttl) and appends the decision to
  `DECISIONS_STREAM` only when the marker is new, so replaying events (a restart without recovery, a replay of
  a day) adds no duplicate; the marker is also where the authorization API reads a transaction's first
  decision (idempotent re-sends). With `max_length` > 0 the stream is trimmed to about that many entries
  (MAXLEN ~): consumers that need every decision read the feature log in the warehouse; the stream is the
  live view.
  The same call answers the API's waiting requests: a request adds the transaction_id to the set `awaiting`
  and its server's reply list (one per server process) to the transaction's waiters list
  `awaiting:<transaction_id>` (`HANDOFF_SCRIPT`, run by the API as it puts the event on the bus); the script
  pushes the first decision to every registered reply list and removes the transaction from both. While no
  request waits, this costs one SCARD per call.
  The script runs atomically: there is no window in which a marker exists without its decision, or in which
  a waiter registers after the decision and misses it. On Redis Cluster every key the script and the
  hand-off touch carries the hash tag of the card's transactions shard (`decision_tag`): each shard has its
  decisions stream `stream:decisions:{<shard>}`, waiting set and markers `decided:{<shard>}:<transaction_id>`
  in the slot of `stream:transactions:{<shard>}`, and a batch's decisions are written one script call per
  shard. On one server the keys have no tag: one decisions stream, one script call per 1,000 decisions.
  `PipelinedDecisionWriter` makes the same calls without waiting for their replies (the scoring flow's
  decisions sink: it reads them a batch later, and writes a batch again when one failed).
* `FeatureLog`: decisions with the transaction and the served feature vector, buffered and published to the
  landing zone as one batch (transactions + context table `decisions`, source "stream") when
  `flush_events` decisions are buffered, when the oldest has waited `flush_seconds` (on a quiet stream
  too), and at shutdown, by a background thread: the worker only converts the decisions to Arrow, 256 at a
  time. The landing sensor loads the batches into the warehouse like any other. Under Bytewax recovery,
  `checkpoint` makes the log durable with the point the flow resumes from: each snapshot holds the parts
  not landed yet and a resumed flow starts with them, so a kill -9 loses no decision; a part landed after
  the snapshot is logged again on replay, and the load keeps its first copy. The background thread spools
  the parts to disk every half second (`SpooledPart`), so a snapshot carries file names, not the decisions.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from operator import attrgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import pyarrow as pa
import redis
from redis.cluster import RedisCluster
from redis.connection import Connection

from fraud_platform.features.vector import FEATURE_DEFINITION_VERSION, MODEL_FEATURES
from fraud_platform.lib.bus import STREAM_SOURCE, stream_id
from fraud_platform.lib.keys import DECISIONS_STREAM, shard_of, shard_tag
from fraud_platform.lib.landing import LandingZone
from fraud_platform.lib.schema import DECISIONS, TIMESTAMP, TRANSACTIONS

if TYPE_CHECKING:  # the scorer imports XGBoost and MLflow: `fraud-platform decisions` needs neither
    from fraud_platform.scoring.scorer import Decision

logger = logging.getLogger(__name__)
MODEL_INDEX = {name: index for index, name in enumerate(MODEL_FEATURES)}

DECISION_FIELD = "decision"
MARKER_PREFIX = "decided:"
CHUNK = 1_000
WAITING_KEY = "awaiting"  # the set of transaction_ids with API requests waiting for their decision
WAITERS_PREFIX = "awaiting:"
FIRST_SEEN_PREFIX = "seen:"  # + transaction_id: the content hash of the first event with that id
REPLY_PREFIX = "reply:"  # + a token: one reply list (inbox) per API server process (and shard on a cluster)
# A reply list nobody reads any more (its server stopped) disappears after this.
REPLY_TTL_SECONDS = 60
# KEYS[1] the stream, KEYS[2] WAITING_KEY, KEYS[i + 2] the i-th decision's marker; ARGV[1] the marker TTL,
# ARGV[2] the stream's maximum length (0: untrimmed), ARGV[3] the reply lists' TTL, ARGV[4] WAITERS_PREFIX,
# then per decision ARGV[2i + 3] its transaction_id and ARGV[2i + 4] its JSON. Without API requests waiting
# (an empty WAITING_KEY) the replies cost one SCARD per call; the waiters lists' names are built here, so
# the keys of the (rare) decisions someone waits for are not sent with every call.
_WRITE_SCRIPT = """
local added = 0
local max_length = tonumber(ARGV[2])
local waiting = redis.call('SCARD', KEYS[2]) > 0
for i = 1, #KEYS - 2 do
  local marker, decision = KEYS[i + 2], ARGV[2 * i + 4]
  if redis.call('SET', marker, decision, 'NX', 'EX', ARGV[1]) then
    if max_length > 0 then
      redis.call('XADD', KEYS[1], 'MAXLEN', '~', max_length, '*', 'decision', decision)
    else
      redis.call('XADD', KEYS[1], '*', 'decision', decision)
    end
    added = added + 1
  end
  if waiting and redis.call('SREM', KEYS[2], ARGV[2 * i + 3]) == 1 then
    local first, waiters = redis.call('GET', marker), ARGV[4] .. ARGV[2 * i + 3]
    for _, reply in ipairs(redis.call('LRANGE', waiters, 0, -1)) do
      redis.call('LPUSH', reply, first)
      redis.call('EXPIRE', reply, ARGV[3])
    end
    redis.call('DEL', waiters)
  end
end
return added
"""
# The API's hand-off of a batch of transactions, atomic against _WRITE_SCRIPT: KEYS[1] WAITING_KEY, then per
# transaction i KEYS[4i - 2] its marker, KEYS[4i - 1] its waiters list, KEYS[4i] its card's shard of the
# transactions stream, KEYS[4i + 1] its first-seen marker; ARGV[1] the reply list to register (the server
# process's inbox), ARGV[2] the waiters lists' TTL, ARGV[3] the number w of XADD arguments per transaction,
# ARGV[4] the first-seen markers' TTL, then per transaction its transaction_id, its content hash
# (`bus.content_hash`) and its w XADD arguments after the stream name (`bus.xadd_arguments`). Returns, per
# transaction: 0 when its id was first seen with other content (nothing is published), its stored first
# decision when it was decided already (nothing is published), else nil: the reply list is registered and the
# event put on the bus. On one server the first-seen marker is the one the flow's claim sets
# (`TransactionIds`), which then finds the same content there and passes the event; on Redis Cluster the
# hand-off's carries the shard's tag and the flow's none, so the API refuses an id reused within a shard and
# the flow dead-letters any reuse.
HANDOFF_SCRIPT = """
local inbox, ttl, width, seen_ttl = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local stored = {}
for i = 1, (#KEYS - 1) / 4 do
  local at = 5 + (i - 1) * (width + 2)
  local first = redis.call('SET', KEYS[4 * i + 1], ARGV[at + 1], 'NX', 'GET', 'EX', seen_ttl)
  if first and first ~= ARGV[at + 1] then
    stored[i] = 0
  else
    local decided = redis.call('GET', KEYS[4 * i - 2])
    if decided then
      stored[i] = decided
    else
      redis.call('SADD', KEYS[1], ARGV[at])
      redis.call('RPUSH', KEYS[4 * i - 1], inbox)
      redis.call('EXPIRE', KEYS[4 * i - 1], ttl)
      redis.call('XADD', KEYS[4 * i], unpack(ARGV, at + 2, at + 1 + width))
      stored[i] = false
    end
  end
end
return stored
"""


def decision_tag(card_id: str, shards: int, cluster: bool) -> str:
    """The hash tag of a card's decision keys: its transactions shard's on Redis Cluster, none ("") else."""
    return shard_tag(shard_of(card_id, shards)) if cluster else ""


def _prefix(prefix: str, tag: str) -> str:
    return f"{prefix}{tag}:" if tag else prefix


def marker_key(transaction_id: str, tag: str = "") -> str:
    """The key that records that a transaction was decided: its first decision's JSON."""
    return _prefix(MARKER_PREFIX, tag) + transaction_id


def first_seen_key(transaction_id: str, tag: str = "") -> str:
    """The key holding the content hash of the first event with a transaction_id (tells a reused id)."""
    return _prefix(FIRST_SEEN_PREFIX, tag) + transaction_id


def waiters_key(transaction_id: str, tag: str = "") -> str:
    """The list of reply lists waiting for a transaction's decision (the API's requests)."""
    return _prefix(WAITERS_PREFIX, tag) + transaction_id


def waiting_key(tag: str = "") -> str:
    """The set of transaction_ids with API requests waiting (of one shard on a cluster)."""
    return f"{WAITING_KEY}:{tag}" if tag else WAITING_KEY


def reply_key(token: str, tag: str = "") -> str:
    """An API server process's reply list (inbox): the decisions its requests wait for arrive there."""
    return _prefix(REPLY_PREFIX, tag) + token


def decisions_stream(tag: str = "") -> str:
    """The decisions stream (of one shard on a cluster)."""
    return f"{DECISIONS_STREAM}:{tag}" if tag else DECISIONS_STREAM


def _reason_details(decision: Decision) -> list[dict[str, Any]]:
    """Each reason with its served value (None: missing) and contribution (None: not computed)."""
    shares = decision.contributions or (None,) * len(decision.reasons)
    details = []
    for name, share in zip(decision.reasons, shares, strict=True):
        value = float(decision.features[MODEL_INDEX[name]])
        details.append(
            {"feature": name, "value": None if math.isnan(value) else value, "contribution": share}
        )
    return details


def decision_event(decision: Decision) -> bytes:
    """The decision as the JSON of its stream entry (times in epoch ms; the transaction's amount and currency);
    `reason_details` gives each reason's served value (null: missing) and its contribution to the score
    (log-odds)."""
    return orjson.dumps(
        {
            "transaction_id": decision.transaction_id,
            "card_id": decision.card_id,
            "amount": decision.txn.amount,
            "currency": decision.txn.currency,
            "score": decision.score,
            "decision": decision.decision,
            "reasons": decision.reasons,
            "reason_details": _reason_details(decision),
            "model_version": decision.model_version,
            "feature_definition_version": FEATURE_DEFINITION_VERSION,
            "event_time": decision.event_ms,
            "received_time": decision.received_ms,
            "decision_time": decision.decision_ms,
        }
    )


def write_decisions(
    client: redis.Redis | RedisCluster,
    decisions: Sequence[Decision],
    marker_ttl_seconds: int,
    max_length: int = 0,
    *,
    shards: int | None = None,
) -> int:
    """Append the decisions not written before to the decisions stream and answer the API requests waiting
    for them (with the first decision); return how many were new.

    On Redis Cluster `shards` (FRAUD_PLATFORM_STREAM_SHARDS) is required: the decisions are grouped by their
    card's shard, and `max_length` bounds each shard's decisions stream."""
    if shards is None and isinstance(client, RedisCluster):
        raise ValueError("write_decisions on Redis Cluster needs `shards`, the transactions shard count")
    script = client.register_script(_WRITE_SCRIPT)
    calls = _script_calls(
        decisions, marker_ttl_seconds, max_length, shards if isinstance(client, RedisCluster) else None
    )
    return sum(int(script(keys=keys, args=arguments)) for keys, arguments in calls)


def _script_calls(
    decisions: Sequence[Decision], marker_ttl_seconds: int, max_length: int, shards: int | None
) -> Iterator[tuple[list[str], list[Any]]]:
    """The keys and arguments of each _WRITE_SCRIPT call that writes the decisions: one per chunk of CHUNK
    decisions of one tag (`shards` None: one server, no tags)."""
    for tag, group in _by_tag(decisions, shards).items():
        meta = [marker_ttl_seconds, max_length, REPLY_TTL_SECONDS, _prefix(WAITERS_PREFIX, tag)]
        for start in range(0, len(group), CHUNK):
            chunk = group[start : start + CHUNK]
            keys = [decisions_stream(tag), waiting_key(tag)]
            keys.extend(marker_key(decision.transaction_id, tag) for decision in chunk)
            arguments = chain.from_iterable(
                (decision.transaction_id, decision_event(decision)) for decision in chunk
            )
            yield keys, [*meta, *arguments]


class PipelinedDecisionWriter:
    """`write_decisions` without waiting for Redis: a batch's script calls are sent on a connection of their
    own and their replies read when the next batch is written or at `confirm`, so the flow scores the next
    batch while Redis writes this one (the API's waiting requests are answered as Redis runs the script, as
    before). At most one batch is in flight. A batch whose replies are not all successes (a lost connection,
    a restarted server without the script, an out-of-memory server) is written again with `write_decisions`
    (its retries wait for a restarting server; the markers make the second write change nothing twice) and
    its error raised only if that fails too. On Redis Cluster every batch is written at once by
    `write_decisions` (`shards` required)."""

    def __init__(
        self,
        client: redis.Redis | RedisCluster,
        marker_ttl_seconds: int,
        max_length: int = 0,
        shards: int | None = None,
    ) -> None:
        if shards is None and isinstance(client, RedisCluster):
            raise ValueError(
                "PipelinedDecisionWriter on Redis Cluster needs `shards`, the transactions shard count"
            )
        self._client = client
        self._ttl = marker_ttl_seconds
        self._max_length = max_length
        self._shards = shards
        self._connection: Connection | None = None  # taken from the client's pool on the first send
        self._sha = ""
        self._in_flight: Sequence[Decision] = ()
        self._replies = 0  # the script calls of the batch in flight

    def write(self, decisions: Sequence[Decision]) -> None:
        """Confirm the batch in flight, then send these decisions' script calls."""
        self.confirm()
        if not decisions:
            return
        if isinstance(self._client, RedisCluster):
            write_decisions(self._client, decisions, self._ttl, self._max_length, shards=self._shards)
            return
        if self._connection is None:
            self._sha = self._client.script_load(_WRITE_SCRIPT)
            self._connection = self._client.connection_pool.get_connection()
        calls = [
            ("EVALSHA", self._sha, len(keys), *keys, *arguments)
            for keys, arguments in _script_calls(decisions, self._ttl, self._max_length, None)
        ]
        self._in_flight, self._replies = decisions, len(calls)
        try:
            self._connection.send_packed_command(self._connection.pack_commands(calls))
        except redis.RedisError as error:
            self._rewrite(error)

    def confirm(self) -> None:
        """Read the replies of the batch in flight; write it again if any is not a success."""
        if not self._in_flight:
            return
        failure: redis.RedisError | None = None
        try:
            for _ in range(self._replies):
                try:
                    self._connection.read_response()
                except redis.ResponseError as error:  # the other replies are still to be read
                    failure = error
        except redis.RedisError as error:  # the connection is lost
            failure = error
        if failure is not None:
            self._rewrite(failure)
        self._in_flight, self._replies = (), 0

    def _rewrite(self, failure: redis.RedisError) -> None:
        logger.warning("writing %d decisions failed (%s): written again", len(self._in_flight), failure)
        self._connection.disconnect()
        write_decisions(self._client, self._in_flight, self._ttl, self._max_length)
        self._sha = self._client.script_load(_WRITE_SCRIPT)  # a restarted server has lost it
        self._in_flight, self._replies = (), 0

    def close(self) -> None:
        """Confirm the batch in flight and return the connection to the client's pool."""
        self.confirm()
        if self._connection is not None:
            self._client.connection_pool.release(self._connection)
            self._connection = None


def stored_decisions(
    client: redis.Redis | RedisCluster, decisions: Sequence[Decision], shards: int | None = None
) -> list[bytes | None]:
    """The stored first decision (the marker) of each decision's transaction, None where there is none: one
    MGET; on Redis Cluster (`shards` required) one MGET per shard, in one pipeline."""
    if not isinstance(client, RedisCluster):
        return client.mget([marker_key(decision.transaction_id) for decision in decisions])
    if shards is None:
        raise ValueError("stored_decisions on Redis Cluster needs `shards`, the transactions shard count")
    positions: dict[str, list[int]] = {}
    for position, decision in enumerate(decisions):
        positions.setdefault(decision_tag(decision.card_id, shards, True), []).append(position)
    pipeline = client.pipeline(transaction=False)
    for (
        tag,
        group,
    ) in positions.items():  # (redis-py's cluster pipeline refuses .mget: it cannot know one slot)
        pipeline.execute_command(
            "MGET", *(marker_key(decisions[position].transaction_id, tag) for position in group)
        )
    stored: list[bytes | None] = [None] * len(decisions)
    for group, reply in zip(positions.values(), pipeline.execute(), strict=True):
        for position, value in zip(group, reply, strict=True):
            stored[position] = value
    return stored


def _by_tag(decisions: Sequence[Decision], shards: int | None) -> Mapping[str, Sequence[Decision]]:
    """The decisions by the tag of their keys: all untagged on one server (`shards` None), by shard else."""
    if shards is None:
        return {"": decisions}
    groups: dict[str, list[Decision]] = {}
    for decision in decisions:
        groups.setdefault(decision_tag(decision.card_id, shards, True), []).append(decision)
    return groups


def decisions_streams(client: redis.Redis | RedisCluster) -> list[str | bytes]:
    """The decisions stream; on Redis Cluster the shards' decisions streams that exist."""
    if isinstance(client, RedisCluster):
        return sorted(client.scan_iter(match=f"{DECISIONS_STREAM}:{{*}}", _type="STREAM"))
    return [DECISIONS_STREAM]


def read_decisions(
    client: redis.Redis | RedisCluster, count: int | None = None, *, newest: bool = False
) -> list[dict[str, Any]]:
    """Decisions from the stream, oldest first (or the newest `count`, newest first). On Redis Cluster the
    shards' decisions streams merged by entry id (the time each was written)."""
    streams = decisions_streams(client)
    read = client.xrevrange if newest else client.xrange
    entries = [entry for stream in streams for entry in read(stream, count=count)]
    if len(streams) > 1:
        entries.sort(key=lambda entry: stream_id(entry[0].decode()), reverse=newest)
        entries = entries[:count] if count is not None else entries
    return [orjson.loads(fields[DECISION_FIELD.encode()]) for _, fields in entries]


def _timestamps(millis: Sequence[int]) -> pa.Array:
    return pa.array(np.asarray(millis, np.int64) * 1000, TIMESTAMP)  # epoch ms to the schema's microseconds


# A transaction's values in TRANSACTIONS order (its epoch ms for the timestamp column).
_TRANSACTION_VALUES = attrgetter(
    *("timestamp_ms" if field.name == "timestamp" else field.name for field in TRANSACTIONS)
)


def _transposed(rows: Iterable[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Rows of equal length as columns."""
    return list(zip(*rows, strict=True))


def decision_tables(decisions: Sequence[Decision]) -> tuple[pa.Table, pa.Table]:
    """The transactions and the `decisions` context table of a feature-log batch (columns transposed in C:
    the worker converts every decision it makes)."""
    (
        ids,
        cards,
        scores,
        verdicts,
        reasons,
        versions,
        event_ms,
        received_ms,
        decision_ms,
        txns,
        features,
        _,
    ) = _transposed(decisions)
    transactions = pa.table(
        {
            field.name: _timestamps(values) if field.name == "timestamp" else pa.array(values, field.type)
            for field, values in zip(TRANSACTIONS, _transposed(map(_TRANSACTION_VALUES, txns)), strict=True)
        }
    )
    vectors = np.concatenate(features).astype(np.float32, copy=False)
    offsets = pa.array(np.arange(0, vectors.size + 1, len(MODEL_FEATURES), dtype=np.int32))
    table = pa.table(
        {
            "transaction_id": ids,
            "card_id": cards,
            "score": pa.array(scores, pa.float64()),
            "decision": verdicts,
            "reasons": pa.array(reasons, pa.list_(pa.string())),
            "model_version": versions,
            "event_time": _timestamps(event_ms),
            "received_time": _timestamps(received_ms),
            "decision_time": _timestamps(decision_ms),
            "feature_definition_version": [FEATURE_DEFINITION_VERSION] * len(decisions),
            "features": pa.ListArray.from_arrays(offsets, pa.array(vectors)),
        },
        schema=DECISIONS,
    )
    return transactions, table


LogPart = tuple[pa.Table, pa.Table]  # a part of the feature log: its transactions and decisions
# Decisions converted to Arrow together: at 1,000 tx/s the flow's micro-batches hold a few decisions each, and
# converting each one cost about 0.9 ms of the worker's time per micro-batch on the slower host.
CONVERT_ROWS = 256
# How often the publisher spools converted parts to disk once snapshots are taken: a snapshot holds at most
# about this long of decisions as tables, the rest as file names.
SPOOL_SECONDS = 0.5
# The publisher's CPU priority (Linux): landing 50,000 decisions costs a core for 0.1-0.2 s, and at normal
# priority that burst held up the serving processes next to it (the authorization API's slowest requests at
# 1,000 requests/s came in bursts at each landing); at the lowest priority it takes the CPU they leave.
PUBLISHER_NICENESS = 19
# A landed spooled part's files are deleted once this many of the newest snapshots no longer name it: the
# newest committed snapshot then does not (the newest one may still be in flight when a crash comes).
SPOOL_RETAIN_SNAPSHOTS = 2


@dataclass(frozen=True)
class SpooledPart:
    """A part of the feature log written to its spool directory (Arrow IPC files, synced) for snapshots."""

    directory: Path
    rows: int

    def read(self) -> LogPart:
        """The part's transactions and decisions; FeatureLogError names a spooled part that is gone."""
        try:
            return (
                pa.ipc.open_file(pa.memory_map(str(self.directory / "transactions.arrow"))).read_all(),
                pa.ipc.open_file(pa.memory_map(str(self.directory / "decisions.arrow"))).read_all(),
            )
        except (OSError, pa.ArrowInvalid) as error:
            raise FeatureLogError(
                f"feature log: spooled part {self.directory} ({self.rows} decisions) is unreadable: {error}; "
                "a recovery snapshot names it (restore the landing zone's .spool directory with the "
                "recovery store)"
            ) from error


LogEntry = LogPart | SpooledPart  # what a recovery snapshot of the log holds


class FeatureLogError(RuntimeError):
    """The feature log could not publish to the landing zone; the decisions stay buffered."""


class FeatureLog:
    """Buffers decisions and publishes them to the landing zone in batches; `close` publishes the rest.

    Decisions are converted to Arrow tables CONVERT_ROWS at a time as they are added (the per-column cost of
    a conversion paid once per 256 decisions, not once per micro-batch, and no long pause either), the rest
    when a snapshot or a publication takes them; landing batches are written by a background thread
    (parquet writing releases the GIL) at the lowest CPU priority on Linux (PUBLISHER_NICENESS): the flow's
    worker never pauses long for a flush, and the processes serving decisions go first. A failed
    publication keeps the decisions buffered and is raised by the next `add`.

    Once snapshots are taken (`checkpoint`: Bytewax asks at every epoch's end, with recovery or without),
    the same thread spools the converted parts to the landing zone's `.spool` directory every SPOOL_SECONDS,
    so a snapshot holds the names of spooled parts and only the newest half second of decisions as tables:
    the worker no longer pickles every decision not yet landed at each snapshot. A spooled part's files are
    deleted once it landed and none of the SPOOL_RETAIN_SNAPSHOTS newest snapshots names it, also at `close`
    (a flow resumed from its last snapshot adopts the parts that one names)."""

    def __init__(
        self,
        landing_dir: Path,
        name: str,
        flush_events: int = 50_000,
        flush_seconds: float = 60.0,
        buffered: Sequence[LogEntry] = (),
    ) -> None:
        self.zone = LandingZone(landing_dir)
        self.name = name
        self.flush_events = flush_events
        self.flush_seconds = flush_seconds
        self._entries: list[LogEntry] = list(buffered)  # restored from a recovery snapshot, then converted
        for entry in self._entries:
            if isinstance(entry, SpooledPart) and not entry.directory.is_dir():
                entry.read()  # raises FeatureLogError naming the missing part
        self._decisions: list[Decision] = []  # added since the last conversion to a part
        self._rows = sum(_rows(entry) for entry in self._entries)
        self._in_flight: list[LogEntry] = []  # taken by a spooling or publication not finished yet
        # the spooled parts each of the newest checkpoints named (spooling starts with the first checkpoint),
        # and those landed since
        self._named: deque[set[SpooledPart]] = deque(maxlen=SPOOL_RETAIN_SNAPSHOTS)
        self._landed: list[SpooledPart] = []
        self._oldest = time.monotonic()  # monotonic time the oldest buffered decision arrived
        self._lock = threading.Lock()  # guards the buffer
        self._publication = threading.Lock()  # one spooling or publication at a time
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._failure: Exception | None = None
        self._publisher = threading.Thread(
            target=self._publish_when_due, name=f"feature-log-{name}", daemon=True
        )
        self._publisher.start()

    def add(self, decisions: Sequence[Decision]) -> None:
        """Buffer decisions; the publisher lands a batch once the buffer is full or its oldest is due.
        Raises FeatureLogError when the last publication failed."""
        if self._failure is not None:
            raise FeatureLogError(
                f"feature log {self.name}: publishing failed: {self._failure}"
            ) from self._failure
        if not decisions:
            return
        with self._lock:
            if not self._rows:
                self._oldest = time.monotonic()
            self._decisions.extend(decisions)
            self._rows += len(decisions)
            if len(self._decisions) >= CONVERT_ROWS:
                self._convert()
            full = self._rows >= self.flush_events
        if full:
            self._wake.set()

    def flush(self) -> str | None:
        """Publish the buffered decisions as one landing batch now, in this thread; return its id (None when
        empty)."""
        with self._publication:
            return self._publish(self._take())

    def checkpoint(self) -> list[LogEntry]:
        """What a recovery snapshot must hold for no decision to be lost: every part not landed yet, spooled
        ones by name (a part landed after the snapshot is logged again on replay; the load keeps its first
        copy)."""
        with self._lock:
            self._convert()
            entries = [*self._in_flight, *self._entries]
            self._named.append({entry for entry in entries if isinstance(entry, SpooledPart)})
            return entries

    def close(self) -> str | None:
        """Stop the publisher and publish what is buffered; the spooled parts the newest snapshots name stay
        (a flow resumed from the last one lands them again)."""
        self._closed.set()
        self._wake.set()
        self._publisher.join()
        batch_id = self.flush()
        self._delete_landed()
        return batch_id

    def _convert(self) -> None:
        """The decisions not converted yet become one part (the caller holds the lock)."""
        if self._decisions:
            self._entries.append(decision_tables(self._decisions))
            self._decisions = []

    def _take(self) -> list[LogEntry]:
        with self._lock:
            self._convert()
            taken, self._entries, self._rows = self._entries, [], 0
            self._in_flight = taken
            return taken

    def _publish_when_due(self) -> None:
        if sys.platform == "linux":  # Linux gives each thread a niceness of its own
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), PUBLISHER_NICENESS)
            except OSError as error:  # a sandbox refusing it: landing at normal priority still lands
                logger.warning("feature log: landing at normal CPU priority (%s)", error)
        while not self._closed.is_set():
            self._wake.wait(min(SPOOL_SECONDS, self.flush_seconds / 4))
            self._wake.clear()
            with self._lock:
                due = self._rows >= self.flush_events or (
                    self._rows > 0 and time.monotonic() - self._oldest >= self.flush_seconds
                )
                spooling = bool(self._named)
            if self._closed.is_set():
                break
            try:
                if due:
                    self.flush()
                elif spooling:
                    self._spool()
                self._delete_landed()
                self._failure = None
            except Exception as error:  # e.g. a full disk: the decisions stay buffered (and in every
                # snapshot), the next add() raises in the flow, so a failure is never silent
                logger.exception("feature log: publishing or spooling %d decisions failed", self._rows)
                self._failure = error

    def _spool(self) -> None:
        """Write the parts held as tables to one spooled part (synced), which takes their place in the
        buffer."""
        with self._publication:
            with self._lock:
                parts = [entry for entry in self._entries if not isinstance(entry, SpooledPart)]
                if not parts:
                    return
                self._entries = [entry for entry in self._entries if isinstance(entry, SpooledPart)]
                self._in_flight = parts
            replacement: list[LogEntry] = parts  # kept as tables if the spooling fails
            try:
                replacement = [self._write_spooled(parts)]
            finally:
                with self._lock:  # after the spooled parts before it, before the parts converted meanwhile
                    spooled = sum(isinstance(entry, SpooledPart) for entry in self._entries)
                    self._entries[spooled:spooled] = replacement
                    self._in_flight = []

    def _write_spooled(self, parts: list[LogPart]) -> SpooledPart:
        transactions = pa.concat_tables([part[0] for part in parts])
        decisions = pa.concat_tables([part[1] for part in parts])
        self.zone.spool_dir.mkdir(parents=True, exist_ok=True)
        directory = self.zone.spool_dir / f"{self.name}-{time.time_ns():x}-{os.getpid()}"
        staging = directory.with_suffix(".staging")
        staging.mkdir()
        for file_name, table in (("transactions.arrow", transactions), ("decisions.arrow", decisions)):
            with open(staging / file_name, "wb") as file:
                with pa.ipc.new_file(file, table.schema) as writer:
                    writer.write_table(table)
                file.flush()
                os.fsync(file.fileno())
        os.rename(staging, directory)
        _sync_directory(self.zone.spool_dir)
        return SpooledPart(directory, decisions.num_rows)

    def _delete_landed(self) -> None:
        """Delete the landed spooled parts that none of the SPOOL_RETAIN_SNAPSHOTS newest snapshots names."""
        with self._lock:
            if len(self._named) < SPOOL_RETAIN_SNAPSHOTS:  # a snapshot of an earlier run may still name them
                return
            named = set().union(*self._named)
            due = [part for part in self._landed if part not in named]
            self._landed = [part for part in self._landed if part in named]
        for part in due:
            shutil.rmtree(part.directory, ignore_errors=True)

    def _publish(self, taken: list[LogEntry]) -> str | None:
        if not taken:
            return None
        batch_id = f"stream-{self.name}-{time.time_ns():x}-{os.getpid()}"
        try:
            parts = [entry.read() if isinstance(entry, SpooledPart) else entry for entry in taken]
            transactions = pa.concat_tables([part[0] for part in parts])
            decisions = pa.concat_tables([part[1] for part in parts])
            self.zone.write_batch(
                batch_id,
                transactions,
                {"decisions": decisions},
                source=STREAM_SOURCE,
                parameters={
                    "decisions": decisions.num_rows,
                    "feature_definition_version": FEATURE_DEFINITION_VERSION,
                },
            )
        except BaseException:
            with self._lock:  # back to the front of the buffer, in order
                self._entries = [*taken, *self._entries]
                self._rows += sum(_rows(entry) for entry in taken)
                self._in_flight = []
            raise
        with self._lock:
            self._in_flight = []
            self._landed += [entry for entry in taken if isinstance(entry, SpooledPart)]
        logger.info("feature log: %d decisions landed as batch %s", decisions.num_rows, batch_id)
        return batch_id


def _rows(entry: LogEntry) -> int:
    return entry.rows if isinstance(entry, SpooledPart) else entry[1].num_rows


def _sync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
