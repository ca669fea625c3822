"""Where decisions go: the decisions stream (once per transaction_id, trimmed to the configured length; the
flow's writes pipelined, a failed batch written again, every batch confirmed at the epoch's end) and
the feature log (landed in batches, also when the stream goes quiet; spooled to disk once snapshots are
taken, so a snapshot names files instead of holding the decisions)."""

import pickle
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import redis

from bytewax_flows.scoring import DecisionSink
from fraud_platform.features.vector import MODEL_FEATURES
from fraud_platform.lib.keys import DECISIONS_STREAM
from fraud_platform.lib.landing import LandingZone
from fraud_platform.lib.redis_server import LocalRedisServer
from fraud_platform.lib.schema import Transaction
from fraud_platform.scoring.decisions import (
    CONVERT_ROWS,
    PUBLISHER_NICENESS,
    SPOOL_RETAIN_SNAPSHOTS,
    SPOOL_SECONDS,
    FeatureLog,
    FeatureLogError,
    LogEntry,
    PipelinedDecisionWriter,
    SpooledPart,
    read_decisions,
    write_decisions,
)
from fraud_platform.scoring.scorer import APPROVE, Decision


def _decisions(count: int, start: int = 0) -> list[Decision]:
    features = np.zeros(len(MODEL_FEATURES), np.float32)
    return [
        Decision(
            transaction_id=f"t{index}",
            card_id="c1",
            score=0.01,
            decision=APPROVE,
            reasons=(),
            model_version="1",
            event_ms=1_700_000_000_000 + index,
            received_ms=1_700_000_000_000 + index,
            decision_ms=1_700_000_000_001 + index,
            txn=Transaction(f"t{index}", "c1", "m1", 10.0, "EUR", 1_700_000_000_000 + index),
            features=features,
        )
        for index in range(start, start + count)
    ]


def test_a_decision_is_written_once_per_transaction(clean_redis: redis.Redis) -> None:
    assert write_decisions(clean_redis, _decisions(1_500), marker_ttl_seconds=60) == 1_500
    assert write_decisions(clean_redis, _decisions(1_000, start=1_000), marker_ttl_seconds=60) == 500
    ids = [decision["transaction_id"] for decision in read_decisions(clean_redis)]
    assert ids == [f"t{index}" for index in range(2_000)]


def _ids(client: redis.Redis) -> list[str]:
    return [decision["transaction_id"] for decision in read_decisions(client)]


def test_pipelined_writes_store_what_write_decisions_stores(clean_redis: redis.Redis) -> None:
    writer = PipelinedDecisionWriter(clean_redis, marker_ttl_seconds=60)
    writer.write(_decisions(1_500))  # two script calls, their replies read with the next batch
    writer.write(_decisions(1_000, start=1_000))  # half of it decided before: not appended again
    writer.close()
    assert _ids(clean_redis) == [f"t{index}" for index in range(2_000)]
    assert clean_redis.get("decided:t1999") is not None


def _kill_the_writers_connection(client: redis.Redis) -> None:
    """Kill every connection that last ran a script: the writer's (and any an earlier test's flow left)."""
    writers = [entry for entry in client.client_list() if entry["cmd"] == "evalsha"]
    assert writers
    for writer in writers:
        client.client_kill_filter(_id=writer["id"])


@pytest.mark.parametrize(
    "outage",
    [
        pytest.param(redis.Redis.script_flush, id="script-flushed"),
        pytest.param(_kill_the_writers_connection, id="connection-killed"),
    ],
)
def test_a_pipelined_batch_that_fails_is_written_again(
    clean_redis: redis.Redis, outage: Callable[[redis.Redis], object], caplog: pytest.LogCaptureFixture
) -> None:
    writer = PipelinedDecisionWriter(clean_redis, marker_ttl_seconds=60)
    writer.write(_decisions(10))
    writer.confirm()
    outage(clean_redis)  # as a restarted server: no script (NOSCRIPT), or no connection
    writer.write(_decisions(10, start=10))
    writer.write(_decisions(10, start=20))  # confirms the batch before: it failed, so it is written again
    writer.close()
    assert _ids(clean_redis) == [f"t{index}" for index in range(30)]
    assert "writing 10 decisions failed" in caplog.text


def test_the_decision_sink_confirms_its_batch_at_the_epochs_end(
    redis_server: LocalRedisServer, clean_redis: redis.Redis
) -> None:
    sink = DecisionSink(redis_server.url, 60)
    partition = sink.build_part("decisions", sink.PART, None)
    partition.write_batch(_decisions(10))
    partition.snapshot()
    clean_redis.script_flush()
    partition.write_batch(_decisions(10, start=10))  # NOSCRIPT: not in the stream until confirmed
    assert len(_ids(clean_redis)) == 10
    partition.snapshot()  # the epoch's end: the batch is confirmed, failed, written again
    assert _ids(clean_redis) == [f"t{index}" for index in range(20)]
    partition.close()


def test_the_stream_is_trimmed_to_about_its_maximum_length(clean_redis: redis.Redis) -> None:
    written = write_decisions(clean_redis, _decisions(5_000), marker_ttl_seconds=60, max_length=1_000)
    assert written == 5_000
    length = clean_redis.xlen(DECISIONS_STREAM)
    assert 1_000 <= length < 5_000  # MAXLEN ~ trims whole macro nodes: about, never below, the maximum
    newest = read_decisions(clean_redis, 1, newest=True)[0]
    assert newest["transaction_id"] == "t4999"


def test_a_quiet_feature_log_lands_its_decisions_without_new_traffic(tmp_path: Path) -> None:
    log = FeatureLog(tmp_path / "landing", "quiet", flush_events=1_000, flush_seconds=0.2)
    zone = LandingZone(tmp_path / "landing")
    log.add(_decisions(3))
    # no other add() comes: only the timer can publish
    _eventually(lambda: bool(zone.batches()), "the buffered decisions never landed")
    (batch,) = zone.batches()
    assert batch.parameters["decisions"] == 3
    log.add(_decisions(2, start=3))
    log.close()  # what is left is published by the timer or, at the latest, at shutdown
    assert sorted(batch.parameters["decisions"] for batch in zone.batches()) == [2, 3]


@pytest.mark.skipif(sys.platform != "linux", reason="a thread's own niceness is Linux's")
def test_the_feature_log_lands_at_the_lowest_cpu_priority(tmp_path: Path) -> None:
    caller = _niceness(threading.get_native_id())  # the flow's worker, in the flow
    log = FeatureLog(tmp_path / "landing", "background", flush_events=1_000, flush_seconds=3_600)
    try:
        (publisher,) = [thread for thread in threading.enumerate() if thread.name == "feature-log-background"]
        _eventually(lambda: _niceness(publisher.native_id) == 19, "the publisher kept its caller's niceness")
        assert PUBLISHER_NICENESS == 19
        assert _niceness(threading.get_native_id()) == caller  # only the publisher's own thread yields
    finally:
        log.close()


def _niceness(thread_id: int | None) -> int:
    """A thread of this process's nice value, from /proc (field 19 of its stat line)."""
    stat = Path(f"/proc/self/task/{thread_id}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[16])


def test_small_micro_batches_are_converted_to_arrow_together(tmp_path: Path) -> None:
    log = FeatureLog(tmp_path / "landing", "small", flush_events=10_000, flush_seconds=3_600)
    for start in range(0, 300, 3):  # 100 micro-batches of 3 decisions
        log.add(_decisions(3, start=start))
    parts = (
        log.checkpoint()
    )  # one part of the first 258 (converted together), one of the rest for the snapshot
    assert [decisions.num_rows for _, decisions in parts] == [258, 42]
    assert CONVERT_ROWS == 256
    assert [id_ for _, decisions in parts for id_ in decisions.column("transaction_id").to_pylist()] == [
        f"t{index}" for index in range(300)
    ]
    log.close()
    (batch,) = LandingZone(tmp_path / "landing").batches()
    assert batch.parameters["decisions"] == 300


def test_a_failed_publication_keeps_the_decisions_and_is_raised(tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    landing.mkdir()
    (landing / "batches").write_text("not a directory")  # every publication fails
    log = FeatureLog(landing, "broken", flush_events=1_000, flush_seconds=0.2)
    log.add(_decisions(3))
    deadline = time.monotonic() + 30
    with pytest.raises(FeatureLogError, match="publishing failed"):
        while time.monotonic() < deadline:  # the background publisher fails; the next add says so
            log.add([])
            time.sleep(0.05)
    assert sum(decisions.num_rows for _, decisions in log.checkpoint()) == 3  # kept for the snapshot
    (landing / "batches").unlink()
    log.close()  # the disk is back: the decisions land
    (batch,) = LandingZone(landing).batches()
    assert batch.parameters["decisions"] == 3


def _eventually(condition: Callable[[], bool], what: str) -> None:
    """Wait up to 30 s for the background publisher to make `condition` true; fail saying `what` did not
    happen."""
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def _spooled_snapshot(log: FeatureLog) -> list[LogEntry]:
    """The log's next snapshot once the publisher has spooled every buffered decision."""
    snapshots: list[list[LogEntry]] = []

    def spooled() -> bool:
        snapshots.append(log.checkpoint())
        return all(isinstance(entry, SpooledPart) for entry in snapshots[-1])

    _eventually(spooled, "the buffered decisions were never spooled")
    return snapshots[-1]


def test_once_snapshots_are_taken_they_name_spooled_files_and_a_resumed_log_lands_them(
    tmp_path: Path,
) -> None:
    landing = tmp_path / "landing"
    log = FeatureLog(landing, "spooled", flush_events=100_000, flush_seconds=3_600)
    decisions = _decisions(3_000)
    log.add(decisions[:1_000])
    assert all(isinstance(entry, tuple) for entry in log.checkpoint())  # the first snapshot holds tables
    log.add(decisions[1_000:])
    snapshot = _spooled_snapshot(log)
    assert sum(entry.rows for entry in snapshot) == 3_000
    as_tables = pickle.dumps([entry.read() for entry in snapshot])
    assert len(pickle.dumps(snapshot)) * 100 < len(as_tables)  # names, not 3,000 decisions

    resumed = FeatureLog(landing, "spooled", flush_events=100_000, flush_seconds=3_600, buffered=snapshot)
    resumed.close()  # as after a kill -9: the resumed flow lands what the snapshot names
    (batch,) = LandingZone(landing).batches()
    assert batch.parameters["decisions"] == 3_000
    log.close()
    assert all(entry.directory.is_dir() for entry in snapshot)  # named by its last snapshot: kept


def test_a_landed_spooled_part_is_deleted_only_once_later_snapshots_no_longer_name_it(tmp_path: Path) -> None:
    log = FeatureLog(tmp_path / "landing", "retained", flush_events=100_000, flush_seconds=3_600)
    log.checkpoint()
    log.add(_decisions(300))
    (part,) = _spooled_snapshot(log)
    log.flush()  # landed after the snapshot that names it
    for _ in range(SPOOL_RETAIN_SNAPSHOTS - 1):
        log.checkpoint()
    time.sleep(3 * SPOOL_SECONDS)  # the publisher's passes in between delete nothing
    assert part.directory.is_dir()  # a snapshot still in flight may name it
    log.checkpoint()
    _eventually(lambda: not part.directory.exists(), "the landed spooled part was never deleted")
    log.close()
    (batch,) = LandingZone(tmp_path / "landing").batches()
    assert batch.parameters["decisions"] == 300


def test_a_snapshot_naming_a_missing_spooled_part_fails_with_its_name(tmp_path: Path) -> None:
    missing = SpooledPart(tmp_path / "landing" / ".spool" / "gone", rows=12)
    with pytest.raises(FeatureLogError, match=r"spooled part .*gone \(12 decisions\) is unreadable"):
        FeatureLog(tmp_path / "landing", "resumed", buffered=[missing])


def test_a_spooled_part_gone_before_landing_fails_the_publication_and_stays_named(tmp_path: Path) -> None:
    log = FeatureLog(tmp_path / "landing", "lost", flush_events=100_000, flush_seconds=3_600)
    log.checkpoint()
    log.add(_decisions(300))
    (part,) = _spooled_snapshot(log)
    shutil.rmtree(part.directory)
    with pytest.raises(FeatureLogError, match=r"spooled part .* is unreadable"):
        log.flush()
    assert log.checkpoint() == [part]  # still named by every snapshot: never dropped silently
    with pytest.raises(FeatureLogError):
        log.close()
    assert not LandingZone(tmp_path / "landing").batches()


def test_close_deletes_the_landed_spooled_parts_no_newest_snapshot_names(tmp_path: Path) -> None:
    spool = LandingZone(tmp_path / "landing").spool_dir
    log = FeatureLog(tmp_path / "landing", "closing", flush_events=100_000, flush_seconds=3_600)
    log.checkpoint()
    log.add(_decisions(300))
    (landed_earlier,) = _spooled_snapshot(log)
    log.flush()
    assert log.checkpoint() == log.checkpoint() == []  # the newest snapshots name nothing
    log.add(_decisions(300, start=300))
    # spooled after the last snapshot: no snapshot names it
    _eventually(
        lambda: not set(spool.iterdir()) <= {landed_earlier.directory}, "the decisions were never spooled"
    )
    log.close()  # lands the second part; neither is named by the newest snapshots
    assert not landed_earlier.directory.exists() and not list(spool.iterdir())
