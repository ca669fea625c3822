"""The stream report against a hand computation."""

import pytest

from fraud_platform.lib.schema import DAY_MS
from fraud_platform.report import authorization_summary, busy_seconds, stream_report


def _event(
    transaction: str, decision: str, received: int, decided: int, model: str = "3", day: int = 0
) -> dict:
    return {
        "transaction_id": transaction,
        "event_time": day * DAY_MS + 500,
        "decision": decision,
        "received_time": received,
        "decision_time": decided,
        "model_version": model,
    }


def test_report_matches_a_hand_computation() -> None:
    events = [
        _event("t1", "decline", 1_000, 1_002),  # fraud, declined
        _event("t2", "review", 1_000, 1_004),  # fraud, reviewed
        _event("t3", "review", 1_500, 1_501),  # genuine, reviewed
        _event("t4", "approve", 2_000, 2_003, model="4"),  # fraud, missed
        _event("t5", "approve", 2_500, 3_000, model="4"),  # genuine
    ]
    truth = {"t1": True, "t2": True, "t4": True}  # t3 and t5 are genuine
    report = stream_report(events, truth)
    assert report.decisions == 5 and report.frauds == 3
    assert report.by_decision == {"decline": 1, "review": 2, "approve": 2}
    assert report.model_versions == {"3": 3, "4": 2}
    assert report.seconds == 2.0 and report.throughput == 2.5
    assert report.latency_p50_ms == 3.0
    assert (report.alert_precision, report.alert_recall) == (2 / 3, 2 / 3)
    assert (report.decline_precision, report.decline_recall) == (1.0, 1 / 3)
    assert any("alerts (review + decline) precision 66.7%" in line for line in report.lines())


def test_throughput_counts_the_time_spent_deciding_each_day() -> None:
    # Day 0 decided in one run (2 s), day 1 in a later one (1 s): the minute between the runs is not counted.
    events = [
        _event("t1", "approve", 1_000, 1_010),
        _event("t2", "approve", 2_000, 3_000),
        _event("t3", "approve", 60_000, 60_500, day=1),
        _event("t4", "approve", 60_200, 61_000, day=1),
    ]
    assert busy_seconds(events) == 3.0
    assert stream_report(events, {}).throughput == 4 / 3


def test_no_decisions_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no decisions to report on"):
        stream_report([], {})


def test_the_authorization_summary_counts_in_words() -> None:
    answers = [
        {"decision": "approve", "stand_in": False, "round_trip_ms": 2.0},
        {"decision": "approve", "stand_in": True, "round_trip_ms": 40.0},
    ]
    assert authorization_summary(answers).startswith(
        "2 requests (approve 2; 1 stand-in): round trip p50 21.0 ms"
    )
    assert authorization_summary(answers[:1]).startswith("1 request (approve 1; 0 stand-ins)")
