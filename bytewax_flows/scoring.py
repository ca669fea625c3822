"""The scoring flow: the real-time feature flow, then a decision for every transaction from the champion model.

    python -m bytewax.run "bytewax_flows.scoring:build_flow()" -s 1                    # follow the streams
    python -m bytewax.run "bytewax_flows.scoring:build_flow(exit_when_drained=True)"   # stop at their end

`-s 1`: epochs of one second without recovery (bytewax.run's default is 10 s). At each epoch's end Bytewax
asks every card touched in the epoch for its state, so shorter epochs mean shorter pauses
(docs/operations.md). With recovery `-s` is the snapshot interval (`-r DIR -s 30 -b 60`).

Runs exactly the steps of `bytewax_flows.realtime_features` (`feature_steps`), then for each batch of served
rows (corrections are not re-decided: a decision is made once, at arrival) reads the batch features from
Redis in one round trip, assembles the training feature vector, scores the batch with one model call and
writes decisions to the decisions stream (idempotent by transaction_id; `DecisionSink` does not wait for
Redis's reply before the next batch, and confirms it before each epoch ends) and to the feature log in the
landing zone (one log per flow, durable with Bytewax recovery: `FeatureLogSink`). Both sinks have one
partition (`partitions.OnePartitionSink`): with several workers every decision is written by the worker
that holds it. A transaction_id reused with other content is a dead letter
(`realtime_features.TransactionIds`). The model is the registry's champion, checked every
FRAUD_PLATFORM_MODEL_REFRESH_SECONDS and swapped between batches; without a champion the flow refuses to
start unless FRAUD_PLATFORM_SCORING_MODE=rules. Every 10 s a log line and the hash `metrics:scoring` (`MetricsSink`) show throughput, latency, dead letters
and model version.

Tests build the same flow with a TestingSource and TestingSinks (see `build_flow`'s arguments).
"""

from __future__ import annotations

import gc
import logging

from bytewax import operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.outputs import DynamicSink, Sink, StatefulSinkPartition, StatelessSinkPartition

from bytewax_flows.kafka_io import KafkaDecisionSink, KafkaItem
from bytewax_flows.partitions import OnePartitionSink
from bytewax_flows.realtime_features import (
    Served,
    TransactionIds,
    feature_steps,
    stream_connectors,
    tune_collector,
)
from bytewax_flows.redis_io import CardFeatureSink, stream_client
from fraud_platform.config import Settings
from fraud_platform.features.realtime import FeatureRow
from fraud_platform.lib.bus import DeadLetter, EventWindow
from fraud_platform.lib.online_store import OnlineStore
from fraud_platform.lib.redis_server import RedisClient, redis_url
from fraud_platform.scoring.decisions import FeatureLog, LogEntry, PipelinedDecisionWriter
from fraud_platform.scoring.metrics import REPORT_SECONDS, ScoringMetrics
from fraud_platform.scoring.models import ModelWatcher
from fraud_platform.scoring.scorer import Decision, Scorer

FLOW_ID = "scoring"
FEATURE_LOG_PART = "feature-log"  # the feature log's one partition (one log per flow)
DECISIONS_KEY = "decision"  # the key of the items of the decisions sinks (each has one partition)


def build_flow(
    source: Source[bytes | None] | Source[KafkaItem] | None = None,
    decision_sink: Sink[tuple[str, Decision]] | None = None,
    dead_letter_sink: Sink[DeadLetter] | None = None,
    card_sink: Sink[FeatureRow] | None = None,
    feature_log_sink: Sink[tuple[str, Decision]] | None = None,
    *,
    settings: Settings | None = None,
    exit_when_drained: bool = False,
    metrics_seconds: float = REPORT_SECONDS,
) -> Dataflow:
    """The dataflow; every connector not given defaults to the configured transport's (FRAUD_PLATFORM_TRANSPORT:
    transactions in, dead letters and decisions out), Redis (card features) or the landing zone (from settings).

    Loads the serving model first: raises `NoServableModel` (naming `fraud-platform train`) when the
    registry has no servable champion and the scoring mode is not "rules".
    """
    settings = settings or Settings.from_env()
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tune_collector(0)  # the source's batches set it from then on
    url = redis_url(settings)
    client = stream_client(url, settings.redis_cluster)
    models = ModelWatcher(settings)
    models.start()
    scorer = Scorer(OnlineStore(client), models)
    metrics = ScoringMetrics(client, models, metrics_seconds)
    transport_source, transport_dead_letters = stream_connectors(settings, url, exit_when_drained)
    source = source or transport_source
    dead_letter_sink = dead_letter_sink or transport_dead_letters
    # Redis: idempotency markers and the live decisions stream; Kafka: the topic first, then those.
    redis_decisions = DecisionSink(
        url,
        settings.marker_ttl_seconds,
        settings.stream_max_length,
        settings.stream_shards,
        settings.redis_cluster,
    )
    decision_sink = decision_sink or (
        KafkaDecisionSink(settings, url, redis_decisions)
        if settings.transport == "kafka"
        else redis_decisions
    )
    card_sink = card_sink or CardFeatureSink(url, settings.feature_ttl_seconds, settings.redis_cluster)
    feature_log_sink = feature_log_sink or FeatureLogSink(settings)

    flow = Dataflow(FLOW_ID)
    features = feature_steps(
        flow,
        source,
        dead_letter_sink,
        card_sink,
        settings.allowed_lateness_seconds * 1000,
        event_window=EventWindow.from_settings(settings),
        transaction_ids=TransactionIds(client, settings.marker_ttl_seconds),
    )
    # Served | FeatureRow: each transaction's served row with the transaction; corrections
    decisions = op.flat_map_batch("score", features, lambda items: _score_served(scorer, items))
    # Decision: one per served transaction, scored with the model of its batch
    keyed = op.flat_map_batch("keyed", decisions, _keyed)
    # (DECISIONS_KEY, Decision): for the sinks of one partition
    op.output("decisions", keyed, decision_sink)
    op.output("metrics", decisions, MetricsSink(metrics))
    op.output("feature_log", keyed, feature_log_sink)
    # The model, its thread pools and the libraries are long-lived: keep full collections from walking them
    # (p99.9 at 1,000 tx/s went from 37-110 to 6-14 ms). A model swapped in later is not frozen: a booster
    # is a handful of Python objects around native memory.
    gc.freeze()
    return flow


def _score_served(scorer: Scorer, items: list[Served | FeatureRow]) -> list[Decision]:
    served = [item for item in items if isinstance(item, Served)]
    return scorer.score(
        [item.txn for item in served],
        [item.row.values for item in served],
        [item.received_ms for item in served],
    )


def _keyed(decisions: list[Decision]) -> list[tuple[str, Decision]]:
    return [(DECISIONS_KEY, decision) for decision in decisions]


class _DecisionPartition(StatefulSinkPartition[Decision, None]):
    def __init__(self, client: RedisClient, writer: PipelinedDecisionWriter) -> None:
        self._client = client
        self._writer = writer

    def write_batch(self, items: list[Decision]) -> None:
        """Confirm the batch before, then send this batch's decisions (one script call per 1,000)."""
        self._writer.write(items)

    def snapshot(self) -> None:
        """Confirm the batch in flight (written again if it failed): the epoch ends with every decision in."""
        self._writer.confirm()

    def close(self) -> None:
        """Confirm the batch in flight and release the connection."""
        self._writer.close()
        self._client.close()


class DecisionSink(OnePartitionSink[Decision, None]):
    """Decisions to the decisions stream, once per transaction_id (markers live `ttl_seconds`), each batch
    sent without waiting for Redis (`PipelinedDecisionWriter`) and confirmed with the next or at the epoch's
    end. Items (key, Decision), any key: one partition.

    The stream is trimmed to about `max_length` entries (0: never trimmed). `shards`, the transactions shard
    count, is required on Redis Cluster (the decisions are written per shard, each batch at once);
    `cluster` as `stream_client`.
    """

    PART = "decisions"

    def __init__(
        self,
        url: str,
        ttl_seconds: int,
        max_length: int = 0,
        shards: int | None = None,
        cluster: bool | None = None,
    ) -> None:
        self._url = url
        self._cluster = cluster
        self._ttl = ttl_seconds
        self._max_length = max_length
        self._shards = shards

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _DecisionPartition:
        """The writer (nothing to resume: the markers make a replayed decision change nothing); Bytewax
        builds it with the first decision."""
        client = stream_client(self._url, self._cluster)
        writer = PipelinedDecisionWriter(client, self._ttl, self._max_length, self._shards)
        return _DecisionPartition(client, writer)


class _MetricsPartition(StatelessSinkPartition[Decision]):
    def __init__(self, metrics: ScoringMetrics) -> None:
        self._metrics = metrics

    def write_batch(self, items: list[Decision]) -> None:
        """Count the batch's decisions and their latencies."""
        self._metrics.record(items)

    def close(self) -> None:
        """Report the last interval's numbers, stop the heartbeat and following the registry."""
        self._metrics.report()
        self._metrics.stop()
        self._metrics.models.stop()


class MetricsSink(DynamicSink[Decision]):
    """The decisions counted in `metrics` (`metrics:scoring` and the log line); the heartbeat starts when
    the flow runs (the first worker's `build`), so a flow that is built but never run starts no thread."""

    def __init__(self, metrics: ScoringMetrics) -> None:
        self._metrics = metrics

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _MetricsPartition:
        """A counter for one worker."""
        self._metrics.start()
        return _MetricsPartition(self._metrics)


class _FeatureLogPartition(StatefulSinkPartition[Decision, list[LogEntry]]):
    def __init__(self, log: FeatureLog) -> None:
        self._log = log

    def write_batch(self, values: list[Decision]) -> None:
        """Buffer the batch; the log's publisher lands a batch when the buffer is full or old enough."""
        self._log.add(values)

    def snapshot(self) -> list[LogEntry]:
        """The decisions not yet landed, spooled ones by name (no pause to land or pickle them): recovery
        restores them."""
        return self._log.checkpoint()

    def close(self) -> None:
        """Publish what is buffered."""
        self._log.close()


class FeatureLogSink(OnePartitionSink[Decision, list[LogEntry]]):
    """Scored transactions with their served features, to the landing zone in batches (one log per flow,
    items (key, Decision), any key): every `flush_events` decisions, or once the oldest buffered one has waited
    FRAUD_PLATFORM_FEATURE_LOG_FLUSH_SECONDS, even when no new transaction arrives.

    Durable with Bytewax recovery (any snapshot interval): each snapshot (epoch end) holds the decisions not
    yet landed (those older than half a second as the names of their files in the landing zone's `.spool`
    directory), and a resumed flow starts with them. Without recovery a kill -9 loses the buffer (at most
    `flush_events` decisions or `flush_seconds` of them). With several workers or processes the decisions
    travel to the worker that holds the partition (Bytewax's exchange; across processes, pickled)."""

    PART = FEATURE_LOG_PART

    def __init__(self, settings: Settings, flush_events: int = 50_000) -> None:
        self._settings = settings
        self._flush_events = flush_events

    def build_part(
        self, step_id: str, for_part: str, resume_state: list[LogEntry] | None
    ) -> _FeatureLogPartition:
        """The log, its buffer restored from the last snapshot when the flow resumes."""
        log = FeatureLog(
            self._settings.landing_dir,
            for_part,
            self._flush_events,
            self._settings.feature_log_flush_seconds,
            buffered=resume_state or (),
        )
        return _FeatureLogPartition(log)
