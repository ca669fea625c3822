"""Online materialisation: the latest card and merchant snapshots loaded into Redis for the stream.

The snapshot of day D serves the transactions of day D + 1. By default the latest day's snapshot is loaded;
`snapshot_date` loads an earlier one (to replay a past day with exactly what it would have been served).
"""

from datetime import datetime

import dagster as dg
import numpy as np
import pyarrow as pa
from dagster_duckdb import DuckDBResource

from fraud_platform.defs.resources import RedisResource
from fraud_platform.features.batch import (
    CARD_BATCH_FEATURES,
    MERCHANT_BATCH_FEATURES,
    card_feature_sql,
    merchant_feature_sql,
)
from fraud_platform.lib.online_store import load_batch_features


def snapshot_sql(table: str, key: str, features_sql: str, snapshot_date: str = "") -> str:
    """SQL for the rows of a daily snapshot table on one day (the latest when `snapshot_date` is empty)."""
    if snapshot_date:
        return (
            f"SELECT {key}, as_of_date AS snapshot_date, {features_sql} FROM {table} AS snapshot "
            f"WHERE as_of_date = DATE '{snapshot_date}' ORDER BY {key}"
        )
    return (
        f"SELECT {key}, max(as_of_date) OVER () AS snapshot_date, {features_sql} FROM {table} AS snapshot "
        f"QUALIFY as_of_date = max(as_of_date) OVER () ORDER BY {key}"
    )


class OnlineSnapshotConfig(dg.Config):
    """Which day's snapshot to load: YYYY-MM-DD, or empty for the latest."""

    snapshot_date: str = ""

    def checked_date(self) -> str:
        """The date, validated (a bad one is a clear error, not an SQL error)."""
        if not self.snapshot_date:
            return ""
        try:
            return datetime.strptime(self.snapshot_date, "%Y-%m-%d").date().isoformat()
        except ValueError:
            raise dg.Failure(f"snapshot_date={self.snapshot_date!r}: expected YYYY-MM-DD") from None


def feature_matrix(table: pa.Table, names: tuple[str, ...]) -> np.ndarray:
    """A float64 matrix of the named columns, NULL as NaN."""
    columns = [table.column(name).to_numpy(zero_copy_only=False).astype(np.float64) for name in names]
    return np.column_stack(columns) if columns and table.num_rows else np.empty((table.num_rows, len(names)))


@dg.asset(
    key=["online", "batch_features"],
    group_name="online",
    kinds={"redis", "duckdb"},
    deps=[dg.AssetKey(["card_daily_features"]), dg.AssetKey(["merchant_daily_features"])],
    description=(
        "The latest card and merchant feature snapshots in Redis, one packed value per entity with a TTL, "
        "switched atomically by generation."
    ),
)
def online_batch_features(
    config: OnlineSnapshotConfig, warehouse: DuckDBResource, redis: RedisResource
) -> dg.MaterializeResult:
    """Load one day's snapshots (the latest by default) into the online store in one generation."""
    day = config.checked_date()
    with warehouse.get_connection() as connection:
        cards = connection.sql(
            snapshot_sql("card_daily_features", "card_id", card_feature_sql("snapshot"), day)
        ).to_arrow_table()
        merchants = connection.sql(
            snapshot_sql("merchant_daily_features", "merchant_id", merchant_feature_sql("snapshot"), day)
        ).to_arrow_table()
    for table, rows in (("card_daily_features", cards), ("merchant_daily_features", merchants)):
        if day and not rows.num_rows:
            raise dg.Failure(f"{table} has no snapshot of {day}: choose a day the warehouse holds")
    report = load_batch_features(
        redis.client(),
        cards.column("card_id").to_pylist(),
        feature_matrix(cards, CARD_BATCH_FEATURES),
        merchants.column("merchant_id").to_pylist(),
        feature_matrix(merchants, MERCHANT_BATCH_FEATURES),
        ttl_seconds=redis.feature_ttl_seconds,
    )
    snapshot = cards.column("snapshot_date")[0].as_py() if cards.num_rows else None
    return dg.MaterializeResult(
        metadata={
            "snapshot_date": dg.MetadataValue.text(str(snapshot)),
            "generation": dg.MetadataValue.text(report.generation),
            "cards": dg.MetadataValue.int(report.cards),
            "merchants": dg.MetadataValue.int(report.merchants),
            "seconds": dg.MetadataValue.float(round(report.seconds, 3)),
            "rows_per_second": dg.MetadataValue.float(float(round(report.rows_per_second))),
        }
    )


online_load_job = dg.define_asset_job(
    "load_online",
    selection=dg.AssetSelection.assets(online_batch_features),
    description="Load one day's card and merchant snapshots (the latest by default) into the online store.",
)
