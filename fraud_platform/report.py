"""The stream's report card: throughput, latency and decisions, and how good the decisions were.

Reads decision events (as written to the decisions stream) and compares them with the fraud truth the
simulator keeps in `raw.fraud_truth` (evaluation only: a bank never has it; for imported data the labels
stand in). Requests sent through the authorization API by `fraud-platform replay --authorize-every` are
recorded under the home's `authorizations/` (one JSON line per request) and reported beside the stream.
"""

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

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


AUTHORIZATION_FIELDS = ("transaction_id", "event_time", "decision", "stand_in", "round_trip_ms")


def authorizations_dir(home: Path) -> Path:
    """Where `replay --authorize-every` records its requests."""
    return home / "authorizations"


def write_authorizations(home: Path, name: str, answers: Iterable[Mapping[str, Any]]) -> Path:
    """Record each answered request (AUTHORIZATION_FIELDS) as one JSON line in `name`.jsonl; return the path."""
    directory = authorizations_dir(home)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.jsonl"
    path.write_bytes(
        b"".join(
            orjson.dumps({key: answer[key] for key in AUTHORIZATION_FIELDS}) + b"\n" for answer in answers
        )
    )
    return path


def read_authorizations(home: Path) -> list[dict[str, Any]]:
    """Every recorded request (none when nothing was sent through the API)."""
    directory = authorizations_dir(home)
    paths = sorted(directory.glob("*.jsonl")) if directory.is_dir() else []
    return [orjson.loads(line) for path in paths for line in path.read_bytes().splitlines() if line]


def authorization_summary(answers: Sequence[Mapping[str, Any]]) -> str:
    """Requests, decisions, stand-ins and the round trip's percentiles, in one line."""
    if not answers:
        return "no requests"
    round_trips = np.array([answer["round_trip_ms"] for answer in answers], dtype=float)
    decided = ", ".join(
        f"{name} {count:,}" for name, count in sorted(Counter(a["decision"] for a in answers).items())
    )
    stand_ins = sum(1 for answer in answers if answer["stand_in"])
    p50, p99, p999 = np.percentile(round_trips, [50, 99, 99.9])
    return (
        f"{_counted(len(answers), 'request')} ({decided}; {_counted(stand_ins, 'stand-in')}): round trip "
        f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, p99.9 {p999:.1f} ms, max {round_trips.max():.1f} ms"
    )


def _counted(count: int, noun: str) -> str:
    return f"{count:,} {noun}" if count == 1 else f"{count:,} {noun}s"


def authorization_lines(
    answers: Sequence[Mapping[str, Any]], events: Sequence[Mapping[str, Any]]
) -> list[str]:
    """The API's requests next to the stream: their round trip, and the flow's own time for them."""
    sent = {answer["transaction_id"] for answer in answers}
    in_flow = np.array(
        [
            event["decision_time"] - event["received_time"]
            for event in events
            if event["transaction_id"] in sent
        ],
        dtype=float,
    )
    lines = [f"authorization API: {authorization_summary(answers)}"]
    if len(in_flow):
        p50, p99 = np.percentile(in_flow, [50, 99])
        lines.append(
            f"  of which in the flow (received -> decided, as for the stream above): p50 {p50:.1f} ms, "
            f"p99 {p99:.1f} ms over {len(in_flow):,} decisions"
        )
    return lines
