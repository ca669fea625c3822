"""The stream's report card: throughput, latency and decisions, and how good the decisions were.

Reads decision events (as written to the decisions stream) and compares them with the fraud truth the
simulator keeps in `raw.fraud_truth` (evaluation only: a bank never has it; for imported data the labels
stand in).
"""

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fraud_platform.lib.schema import DAY_MS
from fraud_platform.scoring.scorer import APPROVE, DECLINE


@dataclass(frozen=True)
class StreamReport:
    """What one replay through the scoring flow did."""

    decisions: int
    by_decision: dict[str, int]
    model_versions: dict[str, int]
    seconds: float
    latency_p50_ms: float
    latency_p99_ms: float
    latency_p999_ms: float
    frauds: int
    alert_precision: float
    alert_recall: float
    decline_precision: float
    decline_recall: float

    @property
    def throughput(self) -> float:
        """Decisions per second of deciding (see `busy_seconds`)."""
        return self.decisions / self.seconds if self.seconds else 0.0

    def lines(self) -> list[str]:
        """The report as printable lines."""
        decided = ", ".join(f"{name} {count:,}" for name, count in sorted(self.by_decision.items()))
        models = ", ".join(f"{name} ({count:,})" for name, count in sorted(self.model_versions.items()))
        return [
            f"decisions: {self.decisions:,} in {self.seconds:.1f} s ({self.throughput:,.0f} tx/s): {decided}",
            f"latency event received -> decided: p50 {self.latency_p50_ms:.1f} ms, p99 {self.latency_p99_ms:.1f} ms, "
            f"p99.9 {self.latency_p999_ms:.1f} ms",
            f"model versions: {models}",
            f"against the truth ({self.frauds:,} frauds): alerts (review + decline) precision "
            f"{self.alert_precision:.1%}, recall {self.alert_recall:.1%}; declines precision "
            f"{self.decline_precision:.1%}, recall {self.decline_recall:.1%}",
        ]


def busy_seconds(events: Sequence[Mapping[str, Any]]) -> float:
    """Seconds spent deciding: for each UTC day of the events, from its first event received to its last
    decision, summed. A replay decided day by day in separate runs (as the main job's) does not count the
    time between the runs. In one run over many days, spans of adjacent days overlap by as much as the
    flow's lag between shards, counted twice: a small overstatement (an understated throughput)."""
    spans: dict[int, tuple[int, int]] = {}
    for event in events:
        day = event["event_time"] // DAY_MS
        first, last = spans.get(day, (event["received_time"], event["decision_time"]))
        spans[day] = (min(first, event["received_time"]), max(last, event["decision_time"]))
    return sum(last - first for first, last in spans.values()) / 1000


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


def stream_report(events: Sequence[Mapping[str, Any]], truth: Mapping[str, bool]) -> StreamReport:
    """Summarise decision events against a transaction_id -> is_fraud mapping (absent ids: genuine)."""
    if not events:
        raise ValueError("no decisions to report on: is the scoring flow running, and was anything replayed?")
    latencies = np.array([event["decision_time"] - event["received_time"] for event in events], dtype=float)
    decisions = [event["decision"] for event in events]
    fraud = np.array([bool(truth.get(event["transaction_id"], False)) for event in events])
    alerted = np.array([decision != APPROVE for decision in decisions])
    declined = np.array([decision == DECLINE for decision in decisions])
    frauds = int(fraud.sum())
    return StreamReport(
        decisions=len(events),
        by_decision=dict(Counter(decisions)),
        model_versions=dict(Counter(str(event["model_version"]) for event in events)),
        seconds=busy_seconds(events),
        latency_p50_ms=float(np.percentile(latencies, 50)),
        latency_p99_ms=float(np.percentile(latencies, 99)),
        latency_p999_ms=float(np.percentile(latencies, 99.9)),
        frauds=frauds,
        alert_precision=_ratio(int((alerted & fraud).sum()), int(alerted.sum())),
        alert_recall=_ratio(int((alerted & fraud).sum()), frauds),
        decline_precision=_ratio(int((declined & fraud).sum()), int(declined.sum())),
        decline_recall=_ratio(int((declined & fraud).sum()), frauds),
    )
