"""Where decisions go: the decisions stream (idempotent by transaction_id) and the feature log (landing zone).

* `write_decisions`: one Lua script call per chunk of 1,000 decisions. For each decision it sets a marker
  `decided:<transaction_id>` (SET NX EX ttl) and appends the decision to `DECISIONS_STREAM` only when the
  marker is new, so replaying events (a restart without recovery, a replay of a day) adds no duplicate.
  With `max_length` > 0 the stream is trimmed to about that many entries (MAXLEN ~): consumers that need
  every decision read the feature log in the warehouse; the stream is the live view.
  The script runs atomically: there is no window in which a marker exists without its decision. It touches
  keys of many slots, so on Redis Cluster it needs the stream and markers routed to one node (or a
  per-slot split); the single server and Valkey/Redis with replicas are fine as they are.
* `FeatureLog`: decisions with the transaction and the served feature vector, buffered and published to the
  landing zone as one batch (transactions + context table `decisions`, source "stream") when
  `flush_events` decisions are buffered, when the oldest has waited `flush_seconds` (a timer thread sees
  to it on a quiet stream too), and at shutdown. The landing sensor loads the batches into the warehouse
  like any other.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import redis

from fraud_platform.features.vector import FEATURE_DEFINITION_VERSION, MODEL_FEATURES
from fraud_platform.lib.bus import STREAM_SOURCE
from fraud_platform.lib.keys import DECISIONS_STREAM
from fraud_platform.lib.landing import LandingZone
from fraud_platform.lib.schema import DECISIONS, TIMESTAMP, TRANSACTIONS
from fraud_platform.scoring.scorer import Decision

logger = logging.getLogger(__name__)

DECISION_FIELD = "decision"
MARKER_PREFIX = "decided:"
CHUNK = 1_000
# KEYS[1] the stream, KEYS[i > 1] markers; ARGV[1] the marker TTL, ARGV[2] the stream's maximum length
# (0: untrimmed), ARGV[i + 1] the decision of KEYS[i].
_WRITE_SCRIPT = """
local added = 0
local max_length = tonumber(ARGV[2])
for i = 2, #KEYS do
  if redis.call('SET', KEYS[i], '1', 'NX', 'EX', ARGV[1]) then
    if max_length > 0 then
      redis.call('XADD', KEYS[1], 'MAXLEN', '~', max_length, '*', 'decision', ARGV[i + 1])
    else
      redis.call('XADD', KEYS[1], '*', 'decision', ARGV[i + 1])
    end
    added = added + 1
  end
end
return added
"""


def marker_key(transaction_id: str) -> str:
    """The key that records that a transaction was decided."""
    return MARKER_PREFIX + transaction_id


def decision_event(decision: Decision) -> bytes:
    """The decision as the JSON of its stream entry (times in epoch ms)."""
    return orjson.dumps(
        {
            "transaction_id": decision.transaction_id,
            "card_id": decision.card_id,
            "score": decision.score,
            "decision": decision.decision,
            "reasons": decision.reasons,
            "model_version": decision.model_version,
            "event_time": decision.event_ms,
            "received_time": decision.received_ms,
            "decision_time": decision.decision_ms,
        }
    )


def write_decisions(
    client: redis.Redis, decisions: Sequence[Decision], marker_ttl_seconds: int, max_length: int = 0
) -> int:
    """Append the decisions not written before to the decisions stream; return how many were new."""
    script = client.register_script(_WRITE_SCRIPT)
    added = 0
    for start in range(0, len(decisions), CHUNK):
        chunk = decisions[start : start + CHUNK]
        added += int(
            script(
                keys=[DECISIONS_STREAM, *(marker_key(decision.transaction_id) for decision in chunk)],
                args=[marker_ttl_seconds, max_length, *(decision_event(decision) for decision in chunk)],
            )
        )
    return added


def read_decisions(
    client: redis.Redis, count: int | None = None, *, newest: bool = False
) -> list[dict[str, Any]]:
    """Decisions from the stream, oldest first (or the newest `count`, newest first)."""
    entries = (
        client.xrevrange(DECISIONS_STREAM, count=count)
        if newest
        else client.xrange(DECISIONS_STREAM, count=count)
    )
    return [orjson.loads(fields[DECISION_FIELD.encode()]) for _, fields in entries]


def _timestamps(millis: list[int]) -> pa.Array:
    return pa.array(millis, pa.int64()).cast(pa.timestamp("ms", tz="UTC")).cast(TIMESTAMP)


def decision_tables(decisions: Sequence[Decision]) -> tuple[pa.Table, pa.Table]:
    """The transactions and the `decisions` context table of a feature-log batch."""
    txns = [decision.txn for decision in decisions]
    transactions = pa.table(
        {
            **{
                field.name: pa.array([getattr(txn, field.name) for txn in txns], field.type)
                for field in TRANSACTIONS
                if field.name != "timestamp"
            },
            "timestamp": _timestamps([txn.timestamp_ms for txn in txns]),
        }
    ).select(TRANSACTIONS.names)
    features = np.stack([decision.features for decision in decisions]).astype(np.float32)
    offsets = pa.array(np.arange(0, features.size + 1, len(MODEL_FEATURES), dtype=np.int32))
    table = pa.table(
        {
            "transaction_id": [decision.transaction_id for decision in decisions],
            "card_id": [decision.card_id for decision in decisions],
            "score": pa.array([decision.score for decision in decisions], pa.float64()),
            "decision": [decision.decision for decision in decisions],
            "reasons": pa.array([list(decision.reasons) for decision in decisions], pa.list_(pa.string())),
            "model_version": [decision.model_version for decision in decisions],
            "event_time": _timestamps([decision.event_ms for decision in decisions]),
            "received_time": _timestamps([decision.received_ms for decision in decisions]),
            "decision_time": _timestamps([decision.decision_ms for decision in decisions]),
            "feature_definition_version": [FEATURE_DEFINITION_VERSION] * len(decisions),
            "features": pa.ListArray.from_arrays(offsets, pa.array(features.ravel())),
        },
        schema=DECISIONS,
    )
    return transactions, table


class FeatureLog:
    """Buffers decisions and publishes them to the landing zone in batches; `close` publishes the rest."""

    def __init__(
        self, landing_dir: Path, name: str, flush_events: int = 50_000, flush_seconds: float = 60.0
    ) -> None:
        self.zone = LandingZone(landing_dir)
        self.name = name
        self.flush_events = flush_events
        self.flush_seconds = flush_seconds
        self._buffer: list[Decision] = []
        self._oldest = 0.0  # monotonic time the oldest buffered decision arrived
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._timer = threading.Thread(target=self._flush_when_due, name=f"feature-log-{name}", daemon=True)
        self._timer.start()

    def add(self, decisions: Sequence[Decision]) -> None:
        """Buffer decisions; publish a batch when the buffer is full or its oldest decision is due."""
        with self._lock:
            if not self._buffer:
                self._oldest = time.monotonic()
            self._buffer.extend(decisions)
            if len(self._buffer) >= self.flush_events or self._due():
                self._publish()

    def flush(self) -> str | None:
        """Publish the buffered decisions as one landing batch; return its id (None when empty)."""
        with self._lock:
            return self._publish()

    def close(self) -> str | None:
        """Stop the timer and publish what is buffered."""
        self._closed.set()
        self._timer.join()
        return self.flush()

    def _due(self) -> bool:
        return bool(self._buffer) and time.monotonic() - self._oldest >= self.flush_seconds

    def _flush_when_due(self) -> None:
        while not self._closed.wait(min(1.0, self.flush_seconds / 4)):
            with self._lock:
                if self._due():
                    try:
                        self._publish()
                    except Exception:  # e.g. a full disk: the decisions stay buffered; the next add() or
                        # close() publishes them or raises in the flow, so a failure is never silent
                        logger.exception("feature log: publishing %d decisions failed", len(self._buffer))

    def _publish(self) -> str | None:
        if not self._buffer:
            return None
        transactions, decisions = decision_tables(self._buffer)
        batch_id = f"stream-{self.name}-{time.time_ns():x}-{os.getpid()}"
        self.zone.write_batch(
            batch_id,
            transactions,
            {"decisions": decisions},
            source=STREAM_SOURCE,
            parameters={
                "decisions": len(self._buffer),
                "feature_definition_version": FEATURE_DEFINITION_VERSION,
            },
        )
        logger.info("feature log: %d decisions landed as batch %s", len(self._buffer), batch_id)
        self._buffer = []
        return batch_id
