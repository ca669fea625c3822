"""Realised performance of the stream's decisions and the label maturity curve of a day of decisions.

A decision's outcome is the label of its transaction in `transaction_labels` as known at the evaluation
time `as_of` (default: the labels' own as-of time): fraud (1) once a chargeback was reported, genuine (0)
once the transaction is older than the maturity window, unknown otherwise. Precision counts confirmed frauds
among *all* of a class's decisions, so before a day is mature it is a lower bound that rises to the exact
value as chargebacks arrive (every transaction still unlabelled at maturity becomes genuine). Recall is over
the frauds known so far. `labelled_share` says how far to trust a day.
"""

from dataclasses import asdict, dataclass
from datetime import date, datetime

import duckdb
import numpy as np

from fraud_platform.lib.schema import DAY_MS
from fraud_platform.monitoring.live import live_decisions
from fraud_platform.monitoring.store import DAY_SQL, require_tables


@dataclass(frozen=True)
class RealisedPerformance:
    """The decisions of one day by one model version, judged against the labels known at `labels_as_of`."""

    day: str
    model_version: str
    labels_as_of: str
    decisions: int
    labelled: int
    frauds_known: int
    declines: int
    reviews: int
    declines_fraud: int
    reviews_fraud: int
    fraud_amount_caught: float
    fraud_amount_missed: float

    @property
    def alerts(self) -> int:
        """Reviews and declines."""
        return self.declines + self.reviews

    def ratios(self) -> dict[str, float]:
        """Shares and rates (NaN where the denominator is 0)."""
        caught = self.declines_fraud + self.reviews_fraud
        amount = self.fraud_amount_caught + self.fraud_amount_missed
        return {
            "labelled_share": _ratio(self.labelled, self.decisions),
            "alert_rate": _ratio(self.alerts, self.decisions),
            "decline_precision": _ratio(self.declines_fraud, self.declines),
            "review_precision": _ratio(self.reviews_fraud, self.reviews),
            "alert_precision": _ratio(caught, self.alerts),
            "alert_recall": _ratio(caught, self.frauds_known),
            "decline_recall": _ratio(self.declines_fraud, self.frauds_known),
            "fraud_amount_caught_share": _ratio(self.fraud_amount_caught, amount),
        }

    def row(self) -> dict[str, object]:
        """Counts and ratios as one flat record (a warehouse row, MLflow metrics)."""
        return {**asdict(self), "alerts": self.alerts, **self.ratios()}


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else float("nan")


def labels_as_of(connection: duckdb.DuckDBPyConnection) -> datetime | None:
    """The moment `transaction_labels` describes (None when the table is empty)."""
    require_tables(connection, "main.transaction_labels")
    (value,) = connection.execute("SELECT max(labels_as_of) FROM transaction_labels").fetchall()[0]
    return value


def realised_performance(
    connection: duckdb.DuckDBPyConnection, day: str, as_of: datetime | None = None
) -> list[RealisedPerformance]:
    """One record per model version that decided transactions of `day` (UTC day of the event), replays left
    out (`monitoring.live`)."""
    view = live_decisions(connection)
    as_of = as_of or labels_as_of(connection)
    if as_of is None:
        raise ValueError("transaction_labels is empty: run 'fraud-platform refresh' before monitoring")
    rows = connection.execute(
        f"""
        WITH decided AS (
            SELECT transaction_id, model_version, decision FROM {view}
            WHERE {DAY_SQL.format(column="event_time")} = ?::DATE
        ), known AS (
            SELECT transaction_id, amount, label FROM transaction_labels
            WHERE label IS NOT NULL AND label_known_at <= ?::TIMESTAMPTZ
        )
        SELECT model_version, count(*), count(label), count(*) FILTER (label = 1),
               count(*) FILTER (decision = 'decline'), count(*) FILTER (decision = 'review'),
               count(*) FILTER (decision = 'decline' AND label = 1),
               count(*) FILTER (decision = 'review' AND label = 1),
               coalesce(sum(amount) FILTER (label = 1 AND decision <> 'approve'), 0),
               coalesce(sum(amount) FILTER (label = 1 AND decision = 'approve'), 0)
        FROM decided LEFT JOIN known USING (transaction_id)
        GROUP BY model_version ORDER BY model_version
        """,
        [day, as_of],
    ).fetchall()
    stamp = as_of.isoformat(sep=" ", timespec="seconds")
    return [
        RealisedPerformance(day, str(version), stamp, *map(int, counts), float(caught), float(missed))
        for version, *counts, caught, missed in rows
    ]


@dataclass(frozen=True)
class MaturityPoint:
    """How much of a day's transactions was labelled `age_days` days after the day ended."""

    day: str
    age_days: int
    transactions: int
    labelled: int
    frauds_known: int

    @property
    def labelled_share(self) -> float:
        """Labelled transactions / the day's transactions."""
        return _ratio(self.labelled, self.transactions)


def label_maturity(
    connection: duckdb.DuckDBPyConnection, day: str, horizon_days: int, as_of: datetime | None = None
) -> list[MaturityPoint]:
    """The label maturity curve of `day`: for each age k (0 = the end of the day itself, up to
    `horizon_days` or as far as `as_of` reaches), the day's transactions whose label was known by the end
    of day + k."""
    as_of = as_of or labels_as_of(connection)
    if as_of is None:
        raise ValueError("transaction_labels is empty: run 'fraud-platform refresh' before monitoring")
    known_ms, is_fraud = connection.execute(
        "SELECT coalesce(list(epoch_ms(label_known_at) ORDER BY transaction_id), []), "
        "coalesce(list(label = 1 ORDER BY transaction_id), []) "
        "FROM transaction_labels WHERE event_date = ?::DATE",
        [day],
    ).fetchall()[0]
    known = np.array([np.nan if value is None else value for value in known_ms], dtype=np.float64)
    fraud = np.array([bool(value) for value in is_fraud], dtype=bool)
    day_end_ms = (date.fromisoformat(day) - date(1970, 1, 1)).days * DAY_MS + DAY_MS
    as_of_ms = as_of.timestamp() * 1000
    ages = range(0, horizon_days + 1)
    return [
        MaturityPoint(
            day,
            age,
            len(known),
            int((known <= day_end_ms + age * DAY_MS).sum()),
            int((fraud & (known <= day_end_ms + age * DAY_MS)).sum()),
        )
        for age in ages
        if day_end_ms + age * DAY_MS <= as_of_ms or age == 0
    ]


def combined(records: list[RealisedPerformance], day: str) -> RealisedPerformance:
    """Every model version's decisions of the day together (model_version "all")."""
    counts = [sum(getattr(record, name) for record in records) for name in _COUNTS]
    as_of = records[0].labels_as_of if records else ""
    return RealisedPerformance(day, "all", as_of, *counts)


_COUNTS = tuple(
    name
    for name in RealisedPerformance.__dataclass_fields__
    if name not in ("day", "model_version", "labels_as_of")
)
