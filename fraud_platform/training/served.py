"""Training on what was served: for the transactions the stream decided, the vector the model saw.

A decision is made at a transaction's arrival; a late event or several events of a card with one timestamp
make the backfill's point-in-time vector differ from the served one (corrections reach Redis, never the
decision made). For every row of the training set that the stream decided live under this code's feature
definition, `use_served` puts the logged served vector (raw.decisions, the feature log) in place of the backfill's; history the
stream never served keeps the backfill's. FRAUD_PLATFORM_TRAIN_ON_SERVED=0 keeps the backfill's for all.

Live means: in `monitoring.live`'s view (replays left out when the monitoring defined it with the online
loads) and received on the UTC day of the event, so served with the previous day's snapshot as the backfill
joins it. A replay of history, received days later and served a newer snapshot (its vector knows the
future), keeps the backfill's.
"""

import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from fraud_platform.features.vector import FEATURE_DEFINITION_VERSION

if TYPE_CHECKING:  # the dataset module is imported where DuckDB is not needed
    import duckdb

    from fraud_platform.training.dataset import TrainingData

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedRows:
    """Which rows of a training set carry the served vector: their positions."""

    rows: np.ndarray  # int64 positions into the dataset
    total: int  # rows in the dataset

    @property
    def backfilled(self) -> int:
        """Rows that keep the backfill's vector (never served live)."""
        return self.total - len(self.rows)


def served_rows(
    connection: "duckdb.DuckDBPyConnection", transaction_ids: np.ndarray
) -> tuple[ServedRows, np.ndarray]:
    """The positions of `transaction_ids` decided live by the stream under this feature definition, and their
    served vectors (float32, one row per position)."""
    from fraud_platform.monitoring.live import live_decisions  # DuckDB-side code, imported when used
    from fraud_platform.monitoring.served import feature_matrix
    from fraud_platform.monitoring.store import table_exists

    if not table_exists(connection, "decisions", "raw"):
        return ServedRows(np.zeros(0, np.int64), len(transaction_ids)), np.zeros((0, 0), np.float32)
    wanted = pa.table(  # noqa: F841 - read by DuckDB's replacement scan
        {
            "transaction_id": pa.array(transaction_ids.tolist(), pa.string()),
            "position": pa.array(np.arange(len(transaction_ids), dtype=np.int64)),
        }
    )
    view = live_decisions(connection)
    served = connection.sql(
        f"SELECT w.position, d.features FROM wanted AS w JOIN {view} AS d USING (transaction_id) "
        "WHERE d.feature_definition_version = $version "
        f"  AND {_utc_day('d.received_time')} = {_utc_day('d.event_time')} ORDER BY w.position",
        params={"version": FEATURE_DEFINITION_VERSION},
    ).to_arrow_table()
    positions = served.column("position").to_numpy().astype(np.int64)
    return ServedRows(positions, len(transaction_ids)), feature_matrix(served.column("features"))


def _utc_day(column: str) -> str:
    return f"CAST(timezone('UTC', {column}) AS DATE)"


def use_served(connection: "duckdb.DuckDBPyConnection", data: "TrainingData") -> "TrainingData":
    """The dataset with the served vector in every row the stream decided live (see the module)."""
    rows, vectors = served_rows(connection, data.transaction_ids)
    logger.info(
        "training on %d served vectors (feature log) and %d backfilled rows", len(rows.rows), rows.backfilled
    )
    if not len(rows.rows):
        return data
    features = data.features.copy()
    features[rows.rows] = vectors
    return replace(data, features=features)
