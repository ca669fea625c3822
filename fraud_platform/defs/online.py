"""Online materialisation: the latest card and merchant snapshots loaded into Redis for the stream."""

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


def latest_snapshot_sql(table: str, key: str, features_sql: str) -> str:
    """SQL for the rows of a daily snapshot table on its latest day, with the given feature columns."""
    return (
        f"SELECT {key}, max(as_of_date) OVER () AS snapshot_date, {features_sql} FROM {table} AS snapshot "
        f"QUALIFY as_of_date = max(as_of_date) OVER () ORDER BY {key}"
    )


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
def online_batch_features(warehouse: DuckDBResource, redis: RedisResource) -> dg.MaterializeResult:
    """Load the latest daily snapshots into the online store in one generation."""
    with warehouse.get_connection() as connection:
        cards = connection.sql(
            latest_snapshot_sql("card_daily_features", "card_id", card_feature_sql("snapshot"))
        ).to_arrow_table()
        merchants = connection.sql(
            latest_snapshot_sql("merchant_daily_features", "merchant_id", merchant_feature_sql("snapshot"))
        ).to_arrow_table()
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
