"""On-demand features: computed from the transaction itself and the card's batch snapshot at request time.

One function, `on_demand_features`, serves training (over each historical transaction with the snapshot
the point-in-time join found) and scoring (with the snapshot read from Redis), so both see the same values.
Times are UTC: a transaction at 23:30 in New York is "night" only if 04:30 UTC is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from fraud_platform.features.realtime import Feature, TransactionLike
from fraud_platform.lib.schema import DAY_MS

ENTITY = "transaction"
NIGHT_END_HOUR_UTC = 6
_HOUR_MS = 3_600_000
_NAN = math.nan

ON_DEMAND_FEATURES: tuple[Feature, ...] = (
    Feature(
        "amount_to_mean_30d",
        ENTITY,
        "float64",
        None,
        "Amount over the card's 30-day mean amount (batch snapshot); NaN without a snapshot.",
    ),
    Feature(
        "amount_zscore_30d",
        ENTITY,
        "float64",
        None,
        "(amount - 30-day mean) / 30-day standard deviation; NaN without a snapshot or when the deviation is 0.",
    ),
    Feature(
        "is_night", ENTITY, "float64", None, f"1 when the UTC hour is in [0, {NIGHT_END_HOUR_UTC}), else 0."
    ),
    Feature("is_weekend", ENTITY, "float64", None, "1 on Saturday or Sunday (UTC), else 0."),
)
ON_DEMAND_FEATURE_NAMES: tuple[str, ...] = tuple(feature.name for feature in ON_DEMAND_FEATURES)


def on_demand_matrix(
    amounts: np.ndarray, timestamps_ms: np.ndarray, means: np.ndarray, stds: np.ndarray
) -> np.ndarray:
    """The on-demand features of many transactions at once (the definition; training and the stream both
    call it): one float64 row per transaction in ON_DEMAND_FEATURE_NAMES order.

    `means` and `stds` are the cards' 30-day amount mean and standard deviation from the batch snapshot; NaN
    (no snapshot) or 0 makes the dependent features NaN.
    """
    amounts = np.asarray(amounts, dtype=np.float64)
    means = np.asarray(means, dtype=np.float64)
    stds = np.asarray(stds, dtype=np.float64)
    millis = np.asarray(timestamps_ms, dtype=np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        to_mean = np.where(means != 0, amounts / means, np.nan)
        zscore = np.where(stds != 0, (amounts - means) / stds, np.nan)
    hour = millis // _HOUR_MS % 24
    weekday = (millis // DAY_MS + 3) % 7  # 1970-01-01 was a Thursday; Monday is 0
    return np.column_stack(
        [to_mean, zscore, (hour < NIGHT_END_HOUR_UTC).astype(np.float64), (weekday >= 5).astype(np.float64)]
    )


def on_demand_features(
    txn: TransactionLike, snapshot: Mapping[str, float | None] | None
) -> tuple[float, ...]:
    """The on-demand features of one transaction, in ON_DEMAND_FEATURE_NAMES order (`on_demand_matrix`).

    `snapshot` is the card's batch features (keys "amount_mean_30d", "amount_std_30d"); None, a missing key
    or a None/NaN value makes the dependent features NaN.
    """
    row = on_demand_matrix(
        np.array([txn.amount]),
        np.array([txn.timestamp_ms]),
        np.array([_number(snapshot, "amount_mean_30d")]),
        np.array([_number(snapshot, "amount_std_30d")]),
    )[0]
    return tuple(row.tolist())


def _number(snapshot: Mapping[str, float | None] | None, key: str) -> float:
    value = None if snapshot is None else snapshot.get(key)
    return _NAN if value is None else float(value)
