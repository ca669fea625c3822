"""A monitored day in a few printable lines, read back from the monitoring tables."""

import duckdb

from fraud_platform.monitoring.drift import DAY_CONSTANT_FEATURES
from fraud_platform.monitoring.judge import Thresholds
from fraud_platform.monitoring.performance import MaturityPoint, RealisedPerformance
from fraud_platform.monitoring.skew import FEATURE_GROUPS
from fraud_platform.monitoring.store import SCHEMA, table_exists

SCORE = "score"
_TOP = 3


def _rows(connection: duckdb.DuckDBPyConnection, table: str, day: str, order: str) -> list[dict]:
    if not table_exists(connection, table):
        return []
    result = connection.execute(
        f"SELECT * EXCLUDE (day), CAST(day AS VARCHAR) AS day FROM {SCHEMA}.{table} WHERE day = ?::DATE ORDER BY {order}",
        [day],
    )
    names = [column[0] for column in result.description]
    return [dict(zip(names, row, strict=True)) for row in result.fetchall()]


def performance_records(connection: duckdb.DuckDBPyConnection, day: str) -> list[RealisedPerformance]:
    """The stored realised performance of `day`, one record per model version."""
    fields = RealisedPerformance.__dataclass_fields__
    return [
        RealisedPerformance(**{name: row[name] for name in fields})
        for row in _rows(connection, "realised_performance", day, "model_version")
    ]


def maturity_points(connection: duckdb.DuckDBPyConnection, day: str) -> list[MaturityPoint]:
    """The stored label maturity curve of `day`."""
    fields = MaturityPoint.__dataclass_fields__
    return [
        MaturityPoint(**{name: row[name] for name in fields})
        for row in _rows(connection, "label_maturity", day, "age_days")
    ]


def performance_history(
    connection: duckdb.DuckDBPyConnection, day: str, days: int
) -> tuple[list[str], dict[str, list[float]]]:
    """Decline precision, alert recall and labelled share of every model version together, for the
    monitored days up to `day` (at most `days` of them), oldest first."""
    if not table_exists(connection, "realised_performance"):
        return [], {}
    rows = connection.execute(
        f"""SELECT CAST(day AS VARCHAR), sum(declines_fraud) / nullif(sum(declines), 0),
                   (sum(declines_fraud) + sum(reviews_fraud)) / nullif(sum(frauds_known), 0),
                   sum(labelled) / sum(decisions)
            FROM {SCHEMA}.realised_performance WHERE day <= ?::DATE GROUP BY day ORDER BY day DESC LIMIT ?""",
        [day, days],
    ).fetchall()[::-1]
    series = {
        name: [float("nan") if row[index] is None else float(row[index]) for row in rows]
        for index, name in enumerate(("decline precision", "alert recall", "labelled share"), start=1)
    }
    return [row[0] for row in rows], series


def drift_rows(connection: duckdb.DuckDBPyConnection, day: str) -> list[dict]:
    """The stored drift rows of `day`, largest PSI first."""
    return _rows(connection, "drift", day, "psi DESC, feature")


def skew_row(connection: duckdb.DuckDBPyConnection, day: str) -> dict | None:
    """The stored skew summary of `day` (None when not measured)."""
    rows = _rows(connection, "skew", day, "day")
    return rows[0] if rows else None


def _pct(value: float) -> str:
    return "-" if value != value else f"{value:.1%}"


def summary_lines(connection: duckdb.DuckDBPyConnection, day: str, thresholds: Thresholds) -> list[str]:
    """Realised precision/recall with the labelled share, the top PSIs and the skew count of `day`."""
    lines = []
    records = performance_records(connection, day)
    for record in records:
        r = record.ratios()
        if not record.labelled:
            lines.append(
                f"realised, model {record.model_version}: {record.decisions:,} decisions, no labels yet (labels as "
                f"of {record.labels_as_of}); alert rate {_pct(r['alert_rate'])}"
            )
            continue
        lines.append(
            f"realised, model {record.model_version}: {record.decisions:,} decisions, {_pct(r['labelled_share'])} "
            f"labelled (labels as of {record.labels_as_of}); alert rate {_pct(r['alert_rate'])}; declines "
            f"{record.declines:,} precision {_pct(r['decline_precision'])}, reviews {record.reviews:,} precision "
            f"{_pct(r['review_precision'])}; recall {_pct(r['alert_recall'])} of {record.frauds_known:,} known "
            f"frauds; fraud amount caught {record.fraud_amount_caught:,.2f}, missed {record.fraud_amount_missed:,.2f}"
        )
    if not records:
        lines.append("realised: no decisions monitored for this day")
    drifts = drift_rows(connection, day)
    features = [
        row for row in drifts if row["feature"] != SCORE and row["feature"] not in DAY_CONSTANT_FEATURES
    ]
    if features:
        score = next((row for row in drifts if row["feature"] == SCORE), None)
        top = ", ".join(f"{row['feature']} {row['psi']:.3f}" for row in features[:_TOP])
        warned = sum(row["psi"] >= thresholds.psi_warn for row in features)
        errors = sum(row["psi"] >= thresholds.psi_error for row in features)
        score_text = f"score PSI {score['psi']:.3f}; " if score else ""
        lines.append(
            f"drift vs reference ({features[0]['served_rows']:,} served rows): {score_text}top PSI {top}; "
            f"{warned} feature(s) >= {thresholds.psi_warn}, {errors} >= {thresholds.psi_error}"
        )
    skew = skew_row(connection, day)
    if skew:
        groups = ", ".join(
            f"{group.replace('_', ' ')} {skew[f'mismatching_{group}']:,}"
            for group in FEATURE_GROUPS
            if skew.get(f"mismatching_{group}")
        )
        examples = f", e.g. {skew['examples']}" if skew["examples"] else ""
        lines.append(
            f"skew: {skew['mismatching_transactions']:,} of {skew['compared']:,} sampled transactions differ from "
            f"their offline recomputation ({_pct(skew['mismatch_rate'])})"
            + (f"; by feature group: {groups}{examples}" if groups else "")
        )
    return lines
