"""The point-in-time training dataset: labelled transactions with exactly the features serving would have had.

For a transaction at time t on day D:
- real-time features: the offline backfill of the stream's own update code (window (t - w, t]);
- batch features: the card and merchant snapshots of day D - 1 (what the online store holds on day D);
- on-demand features: the same function the stream calls, over the transaction and that card snapshot;
- label: from `transaction_labels`, used only when the transaction is older than the maturity window at the
  labels' as-of time (a younger one could still receive a chargeback, so its 0 is not final).

Rows are split by event day into development days (train, then validation: the last development days, where
the fit's time-ordered selection folds validate), a gap as long as the label delay, and test. The windows are
shares of the labelled days by default, or the user's own dates (`SplitConfig.train_from` ... `test_to`); rows
outside the chosen windows are left out of the dataset.
"""

from dataclasses import dataclass, replace
from datetime import date
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from fraud_platform.config import LABEL_MATURITY_VAR, train_on_served_enabled
from fraud_platform.features.batch import (
    CARD_BATCH_FEATURES,
    MERCHANT_BATCH_FEATURES,
    card_feature_sql,
    merchant_feature_sql,
)
from fraud_platform.features.on_demand import on_demand_matrix
from fraud_platform.features.realtime import FEATURE_NAMES as REALTIME_FEATURES
from fraud_platform.features.vector import CARD_PREFIX, MERCHANT_PREFIX, MODEL_FEATURES, assemble
from fraud_platform.training.served import use_served

if TYPE_CHECKING:  # the stream imports this module's neighbours; it never needs DuckDB
    import duckdb

REALTIME_TABLE = "features.card_realtime"


class DatasetError(ValueError):
    """The warehouse has too little labelled history for the requested dataset; the message says what."""


@dataclass(frozen=True)
class SplitConfig:
    """How the labelled days are cut: train | validation | gap | test.

    By default by shares of the distinct labelled days (test the newest `test_fraction`, or `test_days`; a
    `gap_days` gap before it; validation the newest `validation_fraction` of the days, or `validation_days`,
    of what is left). Dates (inclusive) choose the
    windows instead: `test_from`..`test_to` and `train_from` (None: the oldest labelled day)..`train_to`; the
    validation days are then the newest `validation_days` of the training window (None: 30 % of it, at least
    `MIN_VALIDATION_DAYS`) and the gap is whatever lies between `train_to` and `test_from`.
    """

    validation_fraction: float = 0.2
    test_fraction: float = 0.2
    gap_days: int = 7
    window_days: int | None = None  # only the newest N days of mature history; None = all of it
    train_from: date | None = None
    train_to: date | None = None
    test_from: date | None = None
    test_to: date | None = None
    validation_days: int | None = None
    test_days: int | None = None

    @property
    def by_date(self) -> bool:
        """True when the windows are the user's dates rather than shares of the days."""
        return any(day is not None for day in (self.train_from, self.train_to, self.test_from, self.test_to))

    def check(self) -> None:
        """Raise DatasetError naming the option when the dates do not make train | gap | test windows."""
        if not self.by_date:
            return
        missing = [name for name in ("train_to", "test_from", "test_to") if getattr(self, name) is None]
        if missing:
            raise DatasetError(
                f"date windows need {', '.join('--' + name.replace('_', '-') for name in missing)} "
                "(and optionally --train-from)"
            )
        assert self.train_to and self.test_from and self.test_to  # narrowed by the check above
        if self.train_from is not None and self.train_from > self.train_to:
            raise DatasetError(f"--train-from {self.train_from} is after --train-to {self.train_to}")
        if self.test_from <= self.train_to:
            raise DatasetError(
                f"--test-from {self.test_from} must come after --train-to {self.train_to} (a test window the "
                "model trained on measures nothing)"
            )
        if self.test_from > self.test_to:
            raise DatasetError(f"--test-from {self.test_from} is after --test-to {self.test_to}")
        if self.validation_days is not None and self.validation_days < 1:
            raise DatasetError(f"--validation-days {self.validation_days}: must be at least 1")


MIN_VALIDATION_DAYS = 3
SPLITS = ("train", "validation", "gap", "test")


@dataclass(frozen=True)
class TrainingData:
    """The dataset as arrays, rows sorted by event time; `split` holds 'train', 'validation', 'gap' or 'test'.

    `card_fraud_known_days` is, per row, the day the first fraud label of its card became known (NaT: none
    known), which the card precision@k rule needs to leave out cards already known to be compromised.
    """

    transaction_ids: np.ndarray
    card_ids: np.ndarray
    event_days: np.ndarray
    amounts: np.ndarray
    labels: np.ndarray
    features: np.ndarray
    split: np.ndarray
    labels_as_of: str
    maturity_cutoff: str
    card_fraud_known_days: np.ndarray

    def part(self, *names: str) -> "TrainingData":
        """The rows of one split (or of several)."""
        return self.rows(np.isin(self.split, names))

    def rows(self, mask: np.ndarray) -> "TrainingData":
        """The rows selected by a boolean mask."""
        return replace(
            self,
            transaction_ids=self.transaction_ids[mask],
            card_ids=self.card_ids[mask],
            event_days=self.event_days[mask],
            amounts=self.amounts[mask],
            labels=self.labels[mask],
            features=self.features[mask],
            split=self.split[mask],
            card_fraud_known_days=self.card_fraud_known_days[mask],
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
            "card_fraud_known_date": pa.array(self.card_fraud_known_days),
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
            event_days=_days(table, "event_date"),
            amounts=table.column("amount").to_numpy().astype(np.float64),
            labels=table.column("label").to_numpy().astype(np.int8),
            features=np.column_stack(
                [table.column(name).to_numpy(zero_copy_only=False) for name in MODEL_FEATURES]
            ).astype(np.float32),
            split=np.asarray(table.column("split").to_pylist(), dtype=object),
            labels_as_of=labels_as_of,
            maturity_cutoff=maturity_cutoff,
            card_fraud_known_days=_days(table, "card_fraud_known_date"),
        )

    def window(self, name: str) -> tuple[str, str]:
        """First and last event day of a split ('-' for a split without rows)."""
        days = self.event_days[self.split == name]
        return (str(days.min()), str(days.max())) if len(days) else ("-", "-")


def _days(table: pa.Table, column: str) -> np.ndarray:
    return table.column(column).to_numpy(zero_copy_only=False).astype("datetime64[D]")


def _query(maturity_days: int, window_days: int | None, first: date | None, last: date | None) -> str:
    window = (
        f"AND l.event_time > l.labels_as_of - to_days({maturity_days + window_days})" if window_days else ""
    )
    if first is not None:
        window += f" AND l.event_date >= DATE '{first}'"
    if last is not None:
        window += f" AND l.event_date <= DATE '{last}'"
    realtime = ", ".join(f"rt.{name}" for name in REALTIME_FEATURES)
    return f"""
        SELECT l.transaction_id, l.card_id, l.event_date, l.amount, l.label,
               epoch_ms(l.event_time) AS timestamp_ms,
               l.labels_as_of, l.labels_as_of - to_days({maturity_days}) AS maturity_cutoff,
               CAST(known.first_fraud_known_at AS DATE) AS card_fraud_known_date,
               {realtime},
               {card_feature_sql("c", CARD_PREFIX)},
               {merchant_feature_sql("m", MERCHANT_PREFIX)}
        FROM transaction_labels AS l
        JOIN {REALTIME_TABLE} AS rt USING (transaction_id)
        LEFT JOIN card_daily_features AS c
            ON c.card_id = l.card_id AND c.as_of_date = l.event_date - 1
        LEFT JOIN merchant_daily_features AS m
            ON m.merchant_id = l.merchant_id AND m.as_of_date = l.event_date - 1
        LEFT JOIN (
            SELECT card_id, min(label_known_at) AS first_fraud_known_at
            FROM transaction_labels WHERE label = 1 GROUP BY card_id
        ) AS known ON known.card_id = l.card_id
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
    """Each row's split by its event day: train | validation | gap | test (see SplitConfig)."""
    config.check()
    days = np.unique(event_days)
    bounds = _date_bounds(days, config) if config.by_date else _share_bounds(days, config)
    names = np.array(SPLITS)
    return names[np.searchsorted(bounds, event_days, side="left")]  # a bound day is the last of its split


def _share_bounds(days: np.ndarray, config: SplitConfig) -> np.ndarray:
    test_days = config.test_days or max(1, round(len(days) * config.test_fraction))
    validation_days = config.validation_days or max(1, round(len(days) * config.validation_fraction))
    train_days = len(days) - test_days - validation_days - config.gap_days
    if train_days < 1:
        raise DatasetError(
            f"{len(days)} day(s) of mature labelled history cannot hold train, {validation_days} validation, "
            f"a {config.gap_days}-day gap and {test_days} test day(s): simulate or import more history, or "
            f"lower {LABEL_MATURITY_VAR} (labels count as final once that many days old) when chargebacks "
            "arrive sooner"
        )
    # The last day of each of train, validation and gap.
    return days[np.cumsum([train_days, validation_days, config.gap_days]) - 1]


def _date_bounds(days: np.ndarray, config: SplitConfig) -> np.ndarray:
    assert config.train_to and config.test_from  # checked by SplitConfig.check
    train_to = np.datetime64(config.train_to, "D")
    development = days[days <= train_to]
    if not len(development):
        raise DatasetError(
            f"no mature labelled day up to --train-to {config.train_to} (labelled days run "
            f"{days.min() if len(days) else '-'} .. {days.max() if len(days) else '-'}): move the window, or lower "
            f"{LABEL_MATURITY_VAR} when chargebacks arrive sooner"
        )
    if not (days >= np.datetime64(config.test_from, "D")).any():
        raise DatasetError(
            f"no mature labelled day from --test-from {config.test_from} on (the newest is {days.max()}): "
            f"test an older window, or lower {LABEL_MATURITY_VAR} when chargebacks arrive sooner"
        )
    validation_days = config.validation_days or max(MIN_VALIDATION_DAYS, round(len(development) * 0.3))
    validation_days = min(validation_days, len(development) - 1)
    if validation_days < 1:
        raise DatasetError(
            f"the training window up to {config.train_to} holds {len(development)} labelled day(s): at least 2 "
            "are needed (days to fit on and a day to validate on)"
        )
    last_train = development[-validation_days - 1]
    return np.array([last_train, train_to, np.datetime64(config.test_from, "D") - 1])


def build_training_data(
    connection: "duckdb.DuckDBPyConnection",
    maturity_days: int,
    config: SplitConfig = SplitConfig(),
    *,
    served: bool | None = None,
) -> TrainingData:
    """Read the point-in-time join from the warehouse and split it by time; with `served` (None:
    FRAUD_PLATFORM_TRAIN_ON_SERVED, on by default) the rows the stream decided carry the served vector
    (`training.served`)."""
    config.check()
    data = _read(connection, maturity_days, config.window_days, config.train_from, config.test_to)
    if served if served is not None else train_on_served_enabled():
        data = use_served(connection, data)
    return replace(data, split=assign_splits(data.event_days, config))


def build_window_data(
    connection: "duckdb.DuckDBPyConnection", maturity_days: int, first: date, last: date
) -> TrainingData:
    """The labelled rows of the days `first` .. `last` (inclusive), point in time as for training, all in
    the 'test' split: what `fraud-platform evaluate` scores a registered model on."""
    if first > last:
        raise DatasetError(f"--from {first} is after --to {last}")
    data = _read(connection, maturity_days, None, first, last)
    return replace(data, split=np.full(len(data.labels), "test", dtype=object))


def _read(
    connection: "duckdb.DuckDBPyConnection",
    maturity_days: int,
    window_days: int | None,
    first: date | None,
    last: date | None,
) -> TrainingData:
    table = connection.sql(_query(maturity_days, window_days, first, last)).to_arrow_table()
    if table.num_rows == 0:
        within = f" in {first or 'the start'} .. {last or 'the end'}" if first or last else ""
        raise DatasetError(
            f"no labelled transaction{within} is older than the {maturity_days}-day maturity window: simulate "
            f"or import more history, or lower {LABEL_MATURITY_VAR} when chargebacks arrive sooner"
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
    return TrainingData(
        transaction_ids=np.asarray(table.column("transaction_id").to_pylist(), dtype=object),
        card_ids=np.asarray(table.column("card_id").to_pylist(), dtype=object),
        event_days=_days(table, "event_date"),
        amounts=amounts,
        labels=table.column("label").to_numpy().astype(np.int8),
        features=features,
        split=np.full(table.num_rows, "", dtype=object),
        labels_as_of=str(table.column("labels_as_of")[0].as_py()),
        maturity_cutoff=str(table.column("maturity_cutoff")[0].as_py()),
        card_fraud_known_days=_days(table, "card_fraud_known_date"),
    )
