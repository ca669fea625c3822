"""What the running scoring flow shows: a log line every `interval` seconds and the same numbers in a hash.

    redis-cli HGETALL metrics:scoring

Fields: `decisions_per_second` and `decisions` (over the last interval), `decisions_total`,
`latency_p50_ms` / `latency_p99_ms` (from the moment the flow took the event in to its decision, over the
last interval), `dead_letters` (length of the dead-letter stream), `model_version`, `models_refused`,
`registry_errors`, `updated_at` (epoch ms). A quiet flow reports every interval too (a heartbeat thread), so
`updated_at` shows that the flow is alive: the authorization API's readiness check reads it. A flow that ends
(drained, or stopped cleanly) writes `stopped_at` (epoch ms) after its last report, so readiness fails at
once instead of trusting that report until it is stale.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import redis

from fraud_platform.lib.keys import DEAD_LETTER_STREAM

if TYPE_CHECKING:  # both import XGBoost and MLflow: readers of the metrics hash need neither
    from fraud_platform.scoring.models import ModelWatcher
    from fraud_platform.scoring.scorer import Decision

logger = logging.getLogger(__name__)

METRICS_KEY = "metrics:scoring"
REPORT_SECONDS = 10.0


class ScoringMetrics:
    """Counts decisions and their latencies; reports when an interval has passed."""

    def __init__(
        self,
        client: redis.Redis,
        models: ModelWatcher,
        interval_seconds: float = REPORT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.models = models
        self.interval = interval_seconds
        self.clock = clock
        self.total = 0
        self._latencies: list[int] = []
        self._since = clock()
        self._lock = threading.RLock()  # the worker's batches and the heartbeat thread
        self._stopped = threading.Event()
        self._heartbeat_thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the heartbeat, once (the flow's decision writer calls it when the flow runs: a flow that is
        built but never run starts no thread)."""
        with self._lock:
            if self._heartbeat_thread is None:
                self._heartbeat_thread = threading.Thread(
                    target=self._heartbeat, name="scoring-metrics", daemon=True
                )
                self._heartbeat_thread.start()

    def record(self, decisions: Sequence[Decision]) -> None:
        """Count a batch of decisions and report if an interval has passed."""
        with self._lock:
            self.total += len(decisions)
            self._latencies.extend(decision.decision_ms - decision.received_ms for decision in decisions)
            if self.clock() - self._since >= self.interval:
                self.report()

    def stop(self) -> None:
        """Stop the heartbeat and mark the flow stopped (`stopped_at`): the flow has ended."""
        with self._lock:  # no heartbeat report can follow the mark
            self._stopped.set()
            try:
                self.client.hset(METRICS_KEY, "stopped_at", str(time.time_ns() // 1_000_000))
            except redis.RedisError:  # readiness then fails once the last report is stale
                logger.exception("scoring metrics: could not mark the flow stopped")

    def _heartbeat(self) -> None:
        """Report at start and whenever an interval passed without a batch to report it, until stopped."""
        due = True
        while True:
            with self._lock:
                if self._stopped.is_set():
                    return
                if due or self.clock() - self._since >= self.interval:
                    try:
                        self._report()
                    except Exception:  # e.g. Redis restarting: the next beat or batch reports again
                        logger.exception("scoring metrics: the heartbeat report failed")
            due = False
            self._stopped.wait(self.interval)

    def report(self) -> dict[str, str]:
        """Log the numbers of the interval just ended, store them in METRICS_KEY and start a new interval."""
        with self._lock:
            return self._report()

    def _report(self) -> dict[str, str]:
        now = self.clock()
        elapsed = max(now - self._since, 1e-9)
        latencies = np.asarray(self._latencies, dtype=np.float64)
        p50, p99 = np.percentile(latencies, [50, 99]) if len(latencies) else (np.nan, np.nan)
        model = self.models.current_version()
        numbers = {
            "decisions": str(len(latencies)),
            "decisions_total": str(self.total),
            "decisions_per_second": f"{len(latencies) / elapsed:.0f}",
            "latency_p50_ms": f"{p50:.1f}",
            "latency_p99_ms": f"{p99:.1f}",
            "dead_letters": str(self.client.xlen(DEAD_LETTER_STREAM)),
            "model_version": model,
            "models_refused": str(self.models.models_refused),
            "registry_errors": str(self.models.registry_errors),
            "updated_at": str(time.time_ns() // 1_000_000),
        }
        self.client.hset(METRICS_KEY, mapping=numbers)
        logger.info(
            "scoring: %s decisions/s, p50 %s ms, p99 %s ms, %s dead letters, model %s (%s refused)",
            numbers["decisions_per_second"],
            numbers["latency_p50_ms"],
            numbers["latency_p99_ms"],
            numbers["dead_letters"],
            model,
            numbers["models_refused"],
        )
        self._latencies = []
        self._since = now
        return numbers
