"""Online/offline skew: served vectors recomputed offline with the same feature code, compared value by value.

For a deterministic sample of a day's decisions, the offline vector is built exactly as the training set
builds one: the real-time features by `backfill` (the stream's own `update`) over each sampled card's
history in `raw.transactions` sorted by event time, the card and merchant snapshots of the previous day
(`card_daily_features`, `merchant_daily_features`), `on_demand_matrix` and `assemble`. A value mismatches
when it differs from the served one by more than float32 rounding (`RTOL`, `ATOL`); NaN equals NaN. On an
in-order stream served with the previous day's snapshots the count is zero.
"""

from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa

from fraud_platform.features.backfill import backfill
from fraud_platform.features.batch import (
    CARD_BATCH_FEATURES,
    MERCHANT_BATCH_FEATURES,
    card_feature_sql,
    merchant_feature_sql,
)
from fraud_platform.features.on_demand import ON_DEMAND_FEATURE_NAMES, on_demand_matrix
from fraud_platform.features.realtime import FEATURE_NAMES as REALTIME_FEATURES
from fraud_platform.features.vector import CARD_PREFIX, MERCHANT_PREFIX, MODEL_FEATURES, assemble
from fraud_platform.lib.schema import TRANSACTIONS
from fraud_platform.monitoring.performance import DAY_SQL
from fraud_platform.monitoring.served import ServedDay
from fraud_platform.monitoring.store import require_tables

RTOL = 1e-6  # a few float32 ulps (float32 epsilon is 1.2e-7)
ATOL = 1e-6
EXAMPLES = 5
# Where a mismatch comes from: the stream's window state, the on-demand function, or a snapshot served online.
FEATURE_GROUPS = {
    "real_time": REALTIME_FEATURES,
    "on_demand": ON_DEMAND_FEATURE_NAMES,
    "card_snapshot": tuple(CARD_PREFIX + name for name in CARD_BATCH_FEATURES),
    "merchant_snapshot": tuple(MERCHANT_PREFIX + name for name in MERCHANT_BATCH_FEATURES),
}


@dataclass(frozen=True)
class SkewResult:
    """Served vs recomputed vectors of a sample of one day's decisions."""

    day: str
    sampled: int
    not_in_warehouse: int  # sampled decisions whose transaction raw.transactions lacks (not compared)
    mismatching_transactions: int
    mismatches: dict[str, int]  # per model feature, in MODEL_FEATURES order
    by_group: dict[str, int]  # per FEATURE_GROUPS entry: transactions with a mismatch in that group
    examples: tuple[str, ...]  # up to EXAMPLES mismatching transaction ids

    @property
    def compared(self) -> int:
        """Sampled decisions that could be recomputed."""
        return self.sampled - self.not_in_warehouse

    @property
    def mismatch_rate(self) -> float:
        """Mismatching transactions / compared ones (0 when none was compared)."""
        return self.mismatching_transactions / self.compared if self.compared else 0.0


def offline_vectors(
    connection: duckdb.DuckDBPyConnection, transaction_ids: list[str]
) -> dict[str, np.ndarray]:
    """transaction_id -> its model vector recomputed from the warehouse (ids not in raw.transactions are absent)."""
    require_tables(connection, "raw.transactions", "main.card_daily_features", "main.merchant_daily_features")
    sampled_ids = pa.table({"transaction_id": pa.array(transaction_ids, pa.string())})  # noqa: F841 - scanned
    rows = connection.sql(
        f"""
        SELECT DISTINCT ON (t.transaction_id) t.transaction_id, t.amount, epoch_ms(t.timestamp) AS timestamp_ms,
               {card_feature_sql("c", CARD_PREFIX)}, {merchant_feature_sql("m", MERCHANT_PREFIX)}
        FROM sampled_ids JOIN raw.transactions AS t USING (transaction_id)
        LEFT JOIN card_daily_features AS c
            ON c.card_id = t.card_id AND c.as_of_date = {DAY_SQL.format(column="t.timestamp")} - 1
        LEFT JOIN merchant_daily_features AS m
            ON m.merchant_id = t.merchant_id AND m.as_of_date = {DAY_SQL.format(column="t.timestamp")} - 1
        ORDER BY t.transaction_id
        """
    ).to_arrow_table()
    if rows.num_rows == 0:
        return {}
    columns = ", ".join(f"t.{field.name}" for field in TRANSACTIONS)
    history = connection.sql(
        f"""
        SELECT DISTINCT ON (t.transaction_id) {columns} FROM raw.transactions AS t
        WHERE t.card_id IN (SELECT card_id FROM raw.transactions JOIN sampled_ids USING (transaction_id))
          AND t.timestamp <= (SELECT max(timestamp) FROM raw.transactions JOIN sampled_ids USING (transaction_id))
        """
    ).to_arrow_table()
    realtime = backfill(history, processes=1)
    position = {tid: index for index, tid in enumerate(realtime.column("transaction_id").to_pylist())}
    ids = rows.column("transaction_id").to_pylist()
    take = np.array([position[tid] for tid in ids])
    cards = _columns(rows, [CARD_PREFIX + name for name in CARD_BATCH_FEATURES])
    matrix = assemble(
        _columns(realtime, REALTIME_FEATURES)[take],
        on_demand_matrix(
            rows.column("amount").to_numpy(),
            rows.column("timestamp_ms").to_numpy(),
            cards[:, CARD_BATCH_FEATURES.index("amount_mean_30d")],
            cards[:, CARD_BATCH_FEATURES.index("amount_std_30d")],
        ),
        cards,
        _columns(rows, [MERCHANT_PREFIX + name for name in MERCHANT_BATCH_FEATURES]),
    )
    return dict(zip(ids, matrix, strict=True))


def _columns(table: pa.Table, names: tuple[str, ...] | list[str]) -> np.ndarray:
    return np.column_stack(
        [table.column(name).to_numpy(zero_copy_only=False).astype(np.float64) for name in names]
    )


def mismatched(served: np.ndarray, offline: np.ndarray) -> np.ndarray:
    """Boolean matrix: where a served value differs from the offline one beyond float32 rounding."""
    return ~np.isclose(served, offline, rtol=RTOL, atol=ATOL, equal_nan=True)


def measure_skew(connection: duckdb.DuckDBPyConnection, sample: ServedDay) -> SkewResult:
    """Recompute the sample's vectors offline and count the mismatches per feature and per transaction."""
    offline = offline_vectors(connection, sample.transaction_ids.tolist())
    found = np.array([tid in offline for tid in sample.transaction_ids], dtype=bool)
    ids = sample.transaction_ids[found]
    wrong = (
        mismatched(sample.features[found], np.stack([offline[tid] for tid in ids]))
        if found.any()
        else np.zeros((0, len(MODEL_FEATURES)), dtype=bool)
    )
    bad_rows = wrong.any(axis=1)
    return SkewResult(
        day=sample.day,
        sampled=len(sample),
        not_in_warehouse=int((~found).sum()),
        mismatching_transactions=int(bad_rows.sum()),
        mismatches=dict(zip(MODEL_FEATURES, wrong.sum(axis=0).astype(int).tolist(), strict=True)),
        by_group={
            group: int(wrong[:, [MODEL_FEATURES.index(name) for name in names]].any(axis=1).sum())
            for group, names in FEATURE_GROUPS.items()
        },
        examples=tuple(ids[bad_rows][:EXAMPLES].tolist()),
    )
