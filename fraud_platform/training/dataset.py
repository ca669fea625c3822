"""The point-in-time training dataset: labelled transactions with exactly the features serving would have had.

For a transaction at time t on day D:
- real-time features: the offline backfill of the stream's own update code (window (t - w, t]);
- batch features: the card and merchant snapshots of day D - 1 (what the online store holds on day D);
- on-demand features: the same function the stream calls, over the transaction and that card snapshot;
- label: from `transaction_labels`, used only when the transaction is older than the maturity window at the
  labels' as-of time (a younger one could still receive a chargeback, so its 0 is not final).

Rows are split by time: train, a gap as long as the label delay, validation, test.
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from fraud_platform.features.batch import (
    CARD_BATCH_FEATURES,
    MERCHANT_BATCH_FEATURES,
    card_feature_sql,
    merchant_feature_sql,
)
from fraud_platform.features.on_demand import on_demand_matrix
from fraud_platform.features.realtime import FEATURE_NAMES as REALTIME_FEATURES
from fraud_platform.features.vector import CARD_PREFIX, MERCHANT_PREFIX, MODEL_FEATURES, assemble

if TYPE_CHECKING:  # the stream imports this module's neighbours; it never needs DuckDB
    import duckdb

REALTIME_TABLE = "features.card_realtime"


class DatasetError(ValueError):
    """The warehouse has too little labelled history for the requested dataset; the message says what."""


@dataclass(frozen=True)
class SplitConfig:
    """How the labelled window is cut by event day: train | gap | validation | test."""

    validation_fraction: float = 0.2
    test_fraction: float = 0.2
    gap_days: int = 7
    window_days: int | None = None  # only the newest N days of mature history; None = all of it


@dataclass(frozen=True)
class TrainingData:
    """The dataset as arrays, rows sorted by event time; `split` holds 'train', 'gap', 'validation' or 'test'."""

    transaction_ids: np.ndarray
    card_ids: np.ndarray
    event_days: np.ndarray
    amounts: np.ndarray
    labels: np.ndarray
    features: np.ndarray
    split: np.ndarray
    labels_as_of: str
    maturity_cutoff: str

    def part(self, name: str) -> "TrainingData":
        """The rows of one split."""
        mask = self.split == name
        return TrainingData(
            self.transaction_ids[mask],
            self.card_ids[mask],
            self.event_days[mask],
            self.amounts[mask],
            self.labels[mask],
            self.features[mask],
            self.split[mask],
            self.labels_as_of,
            self.maturity_cutoff,
        )

    def to_arrow(self) -> pa.Table:
        """The dataset as a table (one float32 column per model feature), for the warehouse."""
        columns = {
            "transaction_id": pa.array(self.transaction_ids.tolist(), pa.string()),
            "card_id": pa.array(self.card_ids.tolist(), pa.string()),
            "event_date": pa.array(self.event_days),
            "amount": pa.array(self.amounts),
            "label": pa.array(self.labels),
            "split": pa.array(self.split.tolist(), pa.string()),
            **{
                name: pa.array(self.features[:, index], from_pandas=True)
                for index, name in enumerate(MODEL_FEATURES)
            },
        }
        return pa.table(columns)

    @classmethod
    def from_arrow(cls, table: pa.Table, labels_as_of: str, maturity_cutoff: str) -> "TrainingData":
        """The dataset back from its table."""
        return cls(
            transaction_ids=np.asarray(table.column("transaction_id").to_pylist(), dtype=object),
            card_ids=np.asarray(table.column("card_id").to_pylist(), dtype=object),
            event_days=table.column("event_date").to_numpy(zero_copy_only=False).astype("datetime64[D]"),
            amounts=table.column("amount").to_numpy().astype(np.float64),
            labels=table.column("label").to_numpy().astype(np.int8),
            features=np.column_stack(
                [table.column(name).to_numpy(zero_copy_only=False) for name in MODEL_FEATURES]
            ).astype(np.float32),
            split=np.asarray(table.column("split").to_pylist(), dtype=object),
            labels_as_of=labels_as_of,
            maturity_cutoff=maturity_cutoff,
        )

    def window(self, name: str) -> tuple[str, str]:
        """First and last event day of a split."""
        days = self.event_days[self.split == name]
        return str(days.min()), str(days.max())


def _query(maturity_days: int, window_days: int | None) -> str:
    window = (
        f"AND l.event_time > l.labels_as_of - to_days({maturity_days + window_days})" if window_days else ""
    )
    realtime = ", ".join(f"rt.{name}" for name in REALTIME_FEATURES)
    return f"""
        SELECT l.transaction_id, l.card_id, l.event_date, l.amount, l.label,
               epoch_ms(l.event_time) AS timestamp_ms,
               l.labels_as_of, l.labels_as_of - to_days({maturity_days}) AS maturity_cutoff,
               {realtime},
               {card_feature_sql("c", CARD_PREFIX)},
               {merchant_feature_sql("m", MERCHANT_PREFIX)}
        FROM transaction_labels AS l
        JOIN {REALTIME_TABLE} AS rt USING (transaction_id)
        LEFT JOIN card_daily_features AS c
            ON c.card_id = l.card_id AND c.as_of_date = l.event_date - 1
        LEFT JOIN merchant_daily_features AS m
            ON m.merchant_id = l.merchant_id AND m.as_of_date = l.event_date - 1
        WHERE l.label IS NOT NULL
          AND l.event_time <= l.labels_as_of - to_days({maturity_days})
          {window}
        ORDER BY l.event_time, l.transaction_id
    """


def _columns(table: pa.Table, names: tuple[str, ...] | list[str]) -> np.ndarray:
    return np.column_stack(
        [table.column(name).to_numpy(zero_copy_only=False).astype(np.float64) for name in names]
    )


def assign_splits(event_days: np.ndarray, config: SplitConfig) -> np.ndarray:
    """Cut the distinct event days in time order: train | gap (gap_days) | validation | test."""
    days = np.unique(event_days)
    test_days = max(1, round(len(days) * config.test_fraction))
    validation_days = max(1, round(len(days) * config.validation_fraction))
    train_days = len(days) - test_days - validation_days - config.gap_days
    if train_days < 1:
        raise DatasetError(
            f"{len(days)} day(s) of mature labelled history cannot hold train, a {config.gap_days}-day gap, "
            f"{validation_days} validation and {test_days} test day(s): simulate or import more history"
        )
    bounds = np.cumsum([train_days, config.gap_days, validation_days])
    names = np.array(["train", "gap", "validation", "test"])
    return names[np.searchsorted(bounds, np.searchsorted(days, event_days), side="right")]


def build_training_data(
    connection: "duckdb.DuckDBPyConnection", maturity_days: int, config: SplitConfig = SplitConfig()
) -> TrainingData:
    """Read the point-in-time join from the warehouse and split it by time."""
    table = connection.sql(_query(maturity_days, config.window_days)).to_arrow_table()
    if table.num_rows == 0:
        raise DatasetError(
            f"no labelled transaction is older than the {maturity_days}-day maturity window: "
            "simulate more history or lower FRAUD_PLATFORM_LABEL_MATURITY_DAYS"
        )
    amounts = table.column("amount").to_numpy().astype(np.float64)
    card_columns = [CARD_PREFIX + name for name in ("amount_mean_30d", "amount_std_30d")]
    means, stds = _columns(table, card_columns).T
    features = assemble(
        _columns(table, REALTIME_FEATURES),
        on_demand_matrix(amounts, table.column("timestamp_ms").to_numpy(), means, stds),
        _columns(table, [CARD_PREFIX + name for name in CARD_BATCH_FEATURES]),
        _columns(table, [MERCHANT_PREFIX + name for name in MERCHANT_BATCH_FEATURES]),
    )
    event_days = table.column("event_date").to_numpy(zero_copy_only=False).astype("datetime64[D]")
    return TrainingData(
        transaction_ids=np.asarray(table.column("transaction_id").to_pylist(), dtype=object),
        card_ids=np.asarray(table.column("card_id").to_pylist(), dtype=object),
        event_days=event_days,
        amounts=amounts,
        labels=table.column("label").to_numpy().astype(np.int8),
        features=features,
        split=assign_splits(event_days, config),
        labels_as_of=str(table.column("labels_as_of")[0].as_py()),
        maturity_cutoff=str(table.column("maturity_cutoff")[0].as_py()),
    )
