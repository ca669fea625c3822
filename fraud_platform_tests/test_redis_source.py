"""The Redis stream source's adaptive micro-batches against a real server: what is waiting comes at once (a
few entries make a small batch), a backlog comes in full batches with each next read sent ahead, one XREAD
per round reads all of a worker's shards, and only an idle worker waits on XREAD BLOCK. Which reads the
server ran, and which blocked, is read from its slow log (every command logged with its arguments)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis
from bytewax.inputs import StatefulSourcePartition

from bytewax_flows.redis_io import RedisStreamSource
from fraud_platform.lib.bus import EVENT_FIELD
from fraud_platform.lib.keys import transactions_stream
from fraud_platform.lib.redis_server import LocalRedisServer

BATCH = 100
QUIET, BUSY = transactions_stream(0), transactions_stream(1)


def add(client: redis.Redis, stream: str, count: int, first: int = 0) -> None:
    pipeline = client.pipeline(transaction=False)
    for index in range(first, first + count):
        pipeline.xadd(stream, {EVENT_FIELD: f"event {index}"})
    pipeline.execute()


@pytest.fixture
def quiet_partition(redis_server: LocalRedisServer) -> Iterator[StatefulSourcePartition[bytes | None, str]]:
    """A partition of the QUIET shard, batches of BATCH, blocking 1 ms when idle; closed after the test."""
    partition = RedisStreamSource(redis_server.url, [QUIET], batch_size=BATCH, block_ms=1).build_part(
        "in", QUIET, None
    )
    yield partition
    partition.close()


@pytest.fixture
def command_log(clean_redis: redis.Redis) -> Iterator[redis.Redis]:
    """The server logs every command with its arguments while the test runs."""
    threshold = clean_redis.config_get("slowlog-log-slower-than")["slowlog-log-slower-than"]
    clean_redis.config_set("slowlog-log-slower-than", 0)
    clean_redis.slowlog_reset()
    yield clean_redis
    clean_redis.config_set("slowlog-log-slower-than", threshold)


def blocking_reads(client: redis.Redis, stream: str) -> list[bool]:
    """For each XREAD of `stream` since the log was reset, oldest first: whether it asked to block."""
    commands = [entry["command"].split() for entry in reversed(client.slowlog_get(1_000))]
    return [
        any(part.upper() == b"BLOCK" for part in command)
        for command in commands
        if command[0].upper() == b"XREAD" and stream.encode() in command
    ]


def reads_run(client: redis.Redis, count: int) -> int:
    """The XREADs the server has run since its statistics were reset, once it has run `count` of them (or
    after 10 s)."""
    deadline = time.monotonic() + 10
    while (run := client.info("commandstats").get("cmdstat_xread", {}).get("calls", 0)) < count:
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
    return run


def test_few_waiting_entries_come_at_once_and_a_backlog_in_full_batches(
    clean_redis: redis.Redis, quiet_partition: StatefulSourcePartition[bytes | None, str]
) -> None:
    add(clean_redis, QUIET, 3)
    assert quiet_partition.next_batch() == [b"event 0", b"event 1", b"event 2"]  # not held to fill a batch
    assert quiet_partition.next_batch() == []
    add(clean_redis, QUIET, 2 * BATCH + 30, first=3)
    sizes = [len(quiet_partition.next_batch()) for _ in range(4)]
    assert sizes == [BATCH, BATCH, 30, 0]
    assert quiet_partition.snapshot() == clean_redis.xrevrange(QUIET, count=1)[0][0].decode()


def test_a_resumed_partition_reads_right_after_its_snapshot(
    clean_redis: redis.Redis, redis_server: LocalRedisServer
) -> None:
    add(clean_redis, QUIET, 5)
    source = RedisStreamSource(redis_server.url, [QUIET], batch_size=2)
    first = source.build_part("in", QUIET, None)
    assert first.next_batch() == [b"event 0", b"event 1"]
    snapshot = first.snapshot()
    first.close()
    resumed = RedisStreamSource(redis_server.url, [QUIET], batch_size=BATCH).build_part("in", QUIET, snapshot)
    try:
        assert resumed.next_batch() == [b"event 2", b"event 3", b"event 4"]
    finally:
        resumed.close()


def test_one_read_per_round_serves_every_shard_and_only_an_idle_worker_waits(
    command_log: redis.Redis, redis_server: LocalRedisServer
) -> None:
    source = RedisStreamSource(redis_server.url, [QUIET, BUSY], batch_size=BATCH, block_ms=1)
    reading = source.build_part("in", QUIET, None)  # the worker's first partition: it reads for both
    taking = source.build_part("in", BUSY, None)
    try:
        assert reading.next_batch() == []  # nothing read yet anywhere: an idle worker waits
        add(command_log, BUSY, 5)
        assert taking.next_batch() == []  # nothing read for it since
        assert reading.next_batch() == []  # idle before, so it may wait; BUSY's entries were waiting: at once
        assert taking.next_batch() == [f"event {index}".encode() for index in range(5)]
        assert reading.next_batch() == []  # the worker read entries last round: no wait
        assert reading.next_batch() == []  # a whole read without entries: idle again, waits
        add(command_log, QUIET, BATCH + 1)
        assert len(reading.next_batch()) == BATCH  # idle before, and entries were waiting: at once
        assert len(reading.next_batch()) == 1  # it read entries: no wait
        assert taking.snapshot() == command_log.xrevrange(BUSY, count=1)[0][0].decode()
        expected = [True, True, False, True, True, False]
        assert blocking_reads(command_log, QUIET) == expected
        assert blocking_reads(command_log, BUSY) == expected  # the same reads: one XREAD for both shards
    finally:
        reading.close()
        taking.close()


def test_partitions_that_stop_when_drained_never_wait(
    command_log: redis.Redis, redis_server: LocalRedisServer
) -> None:
    add(command_log, QUIET, 3)
    source = RedisStreamSource(redis_server.url, [QUIET], batch_size=2, block_ms=1, exit_when_drained=True)
    partition = source.build_part("in", QUIET, None)
    try:
        assert [len(partition.next_batch()), len(partition.next_batch())] == [2, 1]
        with pytest.raises(StopIteration):
            partition.next_batch()
        assert blocking_reads(command_log, QUIET) == [False, False]
    finally:
        partition.close()


def test_a_backlog_s_next_read_is_sent_ahead_and_taken_at_the_next_round(
    command_log: redis.Redis, quiet_partition: StatefulSourcePartition[bytes | None, str]
) -> None:
    add(command_log, QUIET, 2 * BATCH + 1)
    command_log.config_resetstat()
    assert quiet_partition.next_batch() == [f"event {index}".encode() for index in range(BATCH)]
    # the batch was full: the next read runs on the server before the worker asks for it
    assert reads_run(command_log, 2) == 2
    assert quiet_partition.next_batch() == [f"event {index}".encode() for index in range(BATCH, 2 * BATCH)]
    assert reads_run(command_log, 3) == 3
    assert quiet_partition.next_batch() == [f"event {2 * BATCH}".encode()]  # the third read, sent ahead
    assert quiet_partition.next_batch() == []  # not a full batch: nothing was sent ahead, read when asked
    assert blocking_reads(command_log, QUIET) == [True, False, False, False]
    assert quiet_partition.snapshot() == command_log.xrevrange(QUIET, count=1)[0][0].decode()


def test_a_read_sent_ahead_on_a_lost_connection_loses_no_entry(
    clean_redis: redis.Redis, quiet_partition: StatefulSourcePartition[bytes | None, str]
) -> None:
    add(clean_redis, QUIET, 2 * BATCH + 1)
    taken = quiet_partition.next_batch()
    # the source's connections, the one its next read was sent ahead on too
    clean_redis.client_kill_filter(_type="normal", skipme=True)
    add(clean_redis, QUIET, 5, first=2 * BATCH + 1)
    while batch := quiet_partition.next_batch():
        taken += batch
    assert taken == [f"event {index}".encode() for index in range(2 * BATCH + 6)]  # each once, in order
