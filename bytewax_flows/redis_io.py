"""Bytewax connectors for Redis: the sharded transaction streams in, card features and dead letters out.

* `RedisStreamSource`: one partition per stream shard, read with XREAD COUNT/BLOCK after the last id read.
  Micro-batches adapt to the traffic: XREAD returns at once with whatever is waiting, up to `batch_size`
  per shard, so light traffic gives small batches (an event is never held back to fill one) and a backlog
  gives full ones. On one server all the shards of a worker thread are read by one XREAD per round (its
  first partition reads for all; each partition takes its entries in its next batch), and only an idle
  worker waits: that read blocks (up to `block_ms`, 1 ms, as Bytewax's Kafka source does) only when the
  worker read nothing since its last blocking read, and it wakes on an event of any of the worker's shards.
  So an event on any shard ends an idle worker's wait at once (before, only the first shard's did: an event
  on another waited for the end of that 1 ms block), a round costs one XREAD instead of one per shard, and
  a busy worker does not wait on an empty shard while others have events. (An idle flow costs little either
  way: about 0.012 cores with the shared read, 0.015 before, at one request per second on the slower host.)
  On Redis Cluster (each shard a slot of its own) and when draining, each partition reads its own shard and
  only the worker's first one may block. Under a backlog (a read that filled a shard's batch) the next read
  is sent ahead, on one server, and taken the next round: Redis serves it while the worker processes this
  batch rather than after the round's decisions (+16-18 % events/s on one worker, docs/benchmarks.md).
  The partition's snapshot is the last id it took, so a recovered flow resumes right after what it had
  processed (a read sent ahead and not taken is read again).
  With `exit_when_drained` a partition stops once it has read everything that was in its stream when it
  started (tests, benchmarks, replays of history).
* `CardFeatureSink`: each card's newest feature vector, packed, under `card_realtime_key` with a TTL; one
  MSETEX per batch (pipelined SET ... EX on servers without it), only the last row of a card in the batch.
* `DeadLetterSink`: events the flow could not use, to the dead-letter stream with their reason.

Writes are idempotent per card (SET) and the source is exactly-once on resume; dead letters may repeat
after a recovery (at-least-once). Each connector's `cluster` (None: FRAUD_PLATFORM_REDIS_CLUSTER from the
environment; the flows pass their settings') makes every client a `RedisCluster`: the
shards are keys of their own slots, spread over the nodes, and the card features go out as one pipeline per
node.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import redis
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from redis.backoff import ExponentialBackoff
from redis.cluster import RedisCluster
from redis.connection import Connection
from redis.retry import Retry

from fraud_platform.features.packing import REALTIME_LAYOUT
from fraud_platform.features.realtime import FeatureRow
from fraud_platform.lib.bus import (
    STREAM_START,
    DeadLetter,
    read_streams,
    send_read_streams,
    stream_entries,
    stream_id,
    stream_last_id,
    write_dead_letters,
)
from fraud_platform.lib.keys import card_realtime_key
from fraud_platform.lib.online_store import write_with_ttl
from fraud_platform.lib.redis_server import RedisClient, redis_client

# A restarting server (refused connections, then "loading the dataset") is waited for, up to about a minute,
# with exponential backoff: the flow continues instead of crash-looping. Writes are idempotent (MSETEX per
# key, decisions through their SET NX marker), so a retried batch changes nothing twice.
_RETRY = Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=40)
_RETRY_ON = [redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError]


def stream_client(url: str, cluster: bool | None = None) -> RedisClient:
    """A client for the flows: fails fast on a dead socket, retries while the server restarts; a cluster
    client when `cluster` (None: FRAUD_PLATFORM_REDIS_CLUSTER)."""
    return redis_client(
        url,
        cluster=cluster,
        socket_connect_timeout=5,
        socket_timeout=30,
        retry=_RETRY,
        retry_on_error=_RETRY_ON,
    )


class _WorkerReads:
    """Shared by the partitions of one worker thread: its group of streams read together (on one server),
    and whether any read returned entries since the worker's blocking read (if so, the worker is busy and
    does not wait)."""

    __slots__ = ("has_blocking_group", "read_since_wait", "shared")

    def __init__(self) -> None:
        self.read_since_wait = False
        self.has_blocking_group = False
        self.shared: _StreamGroup | None = None


class _StreamGroup:
    """Streams read together by one XREAD, each after its last id read, by the group's first partition; the
    entries wait in their partition's `pending` until its next batch. On one server all the streams of a
    worker are one group; on a cluster (a stream per slot) and for partitions that stop when drained, each
    stream is a group of its own.

    Under a backlog (a read that filled a stream's batch) the group sends its next read at once, on a
    connection of its own, and takes its reply at the next round: Redis serves the read while the worker
    processes this batch, instead of after the decisions the round ends with (on one server; a cluster
    client reads in turn). Light traffic reads when the round asks, as before."""

    def __init__(
        self, client: RedisClient, batch_size: int, block_ms: int | None, worker: _WorkerReads
    ) -> None:
        self.client = client
        self.partitions: dict[str, _StreamPartition] = {}  # the first one reads for all
        self._batch_size = batch_size
        self._block_ms = block_ms
        self._worker = worker
        self._connection: Connection | None = None  # the read sent ahead's, from the client's pool
        self._read_ahead = False  # a read was sent on it and its reply not taken

    def read(self) -> None:
        """Take the read sent ahead, if any and it had entries; else read the streams whose entries were all
        taken (waits up to block_ms if the worker is idle)."""
        if self._read_ahead and self._take(self._reply_ahead()):
            return
        after = {stream: part.read_id for stream, part in self.partitions.items() if not part.pending}
        if not after:
            return
        block_ms = None
        if self._block_ms is not None:
            block_ms = None if self._worker.read_since_wait else self._block_ms
            self._worker.read_since_wait = False
        self._take(read_streams(self.client, after, self._batch_size, block_ms))

    def _take(self, entries_by_stream: dict[str, list[tuple[str, bytes | None]]]) -> bool:
        """Add the entries to their partitions' pending; send the next read ahead if any stream's batch was
        full. Whether there were entries."""
        for stream, entries in entries_by_stream.items():
            partition = self.partitions[stream]
            partition.pending.extend(entries)
            partition.read_id = entries[-1][0]
            self._worker.read_since_wait = True
        if isinstance(self.client, redis.Redis) and any(
            len(entries) == self._batch_size for entries in entries_by_stream.values()
        ):
            self._send_ahead()
        return bool(entries_by_stream)

    def _send_ahead(self) -> None:
        after = {stream: part.read_id for stream, part in self.partitions.items()}
        try:
            if self._connection is None:
                self._connection = self.client.connection_pool.get_connection()
            send_read_streams(self._connection, after, self._batch_size)
        except redis.RedisError:  # the round's own read will read these entries (with retries)
            if self._connection is not None:
                self._connection.disconnect()
            return
        self._read_ahead = True

    def _reply_ahead(self) -> dict[str, list[tuple[str, bytes | None]]]:
        """The entries of the read sent ahead; none if it failed (the round's own read reads them again)."""
        self._read_ahead = False
        try:
            return stream_entries(self.client.parse_response(self._connection, "XREAD"))
        except redis.RedisError:
            self._connection.disconnect()
            return {}

    def close(self) -> None:
        """Release the connections (a read sent ahead is dropped: a resumed flow reads after the last id
        taken)."""
        if self._connection is not None:
            self._connection.disconnect()
            self.client.connection_pool.release(self._connection)
            self._connection = None
        self.client.close()


class _StreamPartition(StatefulSourcePartition[bytes | None, str]):
    """One shard: yields event payloads (None for an entry without an event field)."""

    def __init__(self, group: _StreamGroup, stream: str, last_id: str, exit_when_drained: bool) -> None:
        self._group = group
        self._reads = not group.partitions  # the group's first partition reads for the group
        group.partitions[stream] = self
        self.read_id = self._last_id = last_id
        self.pending: list[tuple[str, bytes | None]] = []
        self._end = stream_id(stream_last_id(group.client, stream)) if exit_when_drained else None

    def next_batch(self) -> list[bytes | None]:
        """The entries waiting after the last id taken, up to the batch size, at once; an idle worker's
        blocking read waits up to block_ms for one. StopIteration once drained (exit_when_drained)."""
        if self._end is not None and stream_id(self._last_id) >= self._end:
            raise StopIteration
        if self._reads:
            self._group.read()
        entries, self.pending = self.pending, []
        if entries:
            self._last_id = entries[-1][0]
        return [payload for _, payload in entries]

    def snapshot(self) -> str:
        """The id of the last entry taken: a resumed partition reads after it (entries read for it but not
        taken yet are read again)."""
        return self._last_id

    def close(self) -> None:
        """Release the group's connections."""
        self._group.close()


class RedisStreamSource(FixedPartitionedSource[bytes | None, str]):
    """Event payloads from Redis streams, one partition per stream (shard), from the start of each stream."""

    def __init__(
        self,
        url: str,
        streams: Sequence[str],
        *,
        batch_size: int = 1_000,
        block_ms: int = 1,
        exit_when_drained: bool = False,
        cluster: bool | None = None,
    ) -> None:
        self._url = url
        self._cluster = cluster
        self._streams = list(streams)
        self._batch_size = batch_size
        self._block_ms = block_ms
        self._exit_when_drained = exit_when_drained
        self._workers: dict[int, _WorkerReads] = {}

    def list_parts(self) -> list[str]:
        """Every stream: any worker can read any shard; Bytewax assigns each to one worker."""
        return self._streams

    def build_part(self, step_id: str, for_part: str, resume_state: str | None) -> _StreamPartition:
        """A reader of one stream, after `resume_state` (the last id read) or from the start, in its worker
        thread's group; only the worker's first group may block, and never when draining."""
        worker = self._workers.setdefault(threading.get_ident(), _WorkerReads())
        group = worker.shared
        if group is None:
            client = stream_client(self._url, self._cluster)
            blocks = not (self._exit_when_drained or worker.has_blocking_group)
            group = _StreamGroup(client, self._batch_size, self._block_ms if blocks else None, worker)
            worker.has_blocking_group |= blocks
            if not self._exit_when_drained and not isinstance(client, RedisCluster):
                worker.shared = group
        return _StreamPartition(group, for_part, resume_state or STREAM_START, self._exit_when_drained)


class _CardFeaturePartition(StatelessSinkPartition[FeatureRow]):
    def __init__(self, client: RedisClient, ttl_seconds: int) -> None:
        self._client = client
        self._ttl = ttl_seconds

    def write_batch(self, items: list[FeatureRow]) -> None:
        """Write each card's newest vector of the batch with the TTL, in one round trip."""
        newest = {row.card_id: row.values for row in items if row.latest}
        if newest:
            pack = REALTIME_LAYOUT.pack
            keys = [card_realtime_key(card_id) for card_id in newest]
            values = [pack(vector) for vector in newest.values()]
            write_with_ttl(self._client, keys, values, self._ttl, len(keys))

    def close(self) -> None:
        self._client.close()


class CardFeatureSink(DynamicSink[FeatureRow]):
    """Each card's newest real-time feature vector, packed, under card_realtime_key(card_id) with a TTL."""

    def __init__(self, url: str, ttl_seconds: int, cluster: bool | None = None) -> None:
        self._url = url
        self._ttl = ttl_seconds
        self._cluster = cluster

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _CardFeaturePartition:
        """A writer for one worker (rows of a card always reach the same worker)."""
        return _CardFeaturePartition(stream_client(self._url, self._cluster), self._ttl)


class _DeadLetterPartition(StatelessSinkPartition[DeadLetter]):
    def __init__(self, client: RedisClient) -> None:
        self._client = client

    def write_batch(self, items: list[DeadLetter]) -> None:
        """XADD the batch's dead letters in one pipeline."""
        write_dead_letters(self._client, items)

    def close(self) -> None:
        self._client.close()


class DeadLetterSink(DynamicSink[DeadLetter]):
    """Events the flow could not use, to the dead-letter stream with the reason and the raw payload."""

    def __init__(self, url: str, cluster: bool | None = None) -> None:
        self._url = url
        self._cluster = cluster

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _DeadLetterPartition:
        """A writer for one worker."""
        return _DeadLetterPartition(stream_client(self._url, self._cluster))
