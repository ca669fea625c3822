"""On-demand features: hand-computed values, missing snapshots and the UTC calendar flags."""

import math
from datetime import UTC, datetime

import pytest

from fraud_platform.features.on_demand import ON_DEMAND_FEATURE_NAMES, ON_DEMAND_FEATURES, on_demand_features
from fraud_platform.lib.schema import Transaction


def txn(amount: float, when: datetime) -> Transaction:
    return Transaction("t1", "c1", "m1", amount, "USD", int(when.timestamp() * 1000))


def features(amount: float, when: datetime, snapshot: dict[str, float | None] | None) -> dict[str, float]:
    return dict(zip(ON_DEMAND_FEATURE_NAMES, on_demand_features(txn(amount, when), snapshot), strict=True))


WEDNESDAY_NOON = datetime(2026, 1, 7, 12, 0, tzinfo=UTC)


def test_names_and_declarations_agree() -> None:
    assert ON_DEMAND_FEATURE_NAMES == ("amount_to_mean_30d", "amount_zscore_30d", "is_night", "is_weekend")
    assert tuple(feature.name for feature in ON_DEMAND_FEATURES) == ON_DEMAND_FEATURE_NAMES


def test_amount_ratio_and_zscore_against_the_snapshot() -> None:
    values = features(150.0, WEDNESDAY_NOON, {"amount_mean_30d": 50.0, "amount_std_30d": 25.0})
    assert values == {"amount_to_mean_30d": 3.0, "amount_zscore_30d": 4.0, "is_night": 0.0, "is_weekend": 0.0}
    assert features(20.0, WEDNESDAY_NOON, {"amount_mean_30d": 50.0, "amount_std_30d": 10.0})[
        "amount_zscore_30d"
    ] == pytest.approx(-3.0)


@pytest.mark.parametrize(
    ("snapshot", "ratio_is_nan", "zscore_is_nan"),
    [
        (None, True, True),  # no batch snapshot for the card
        ({}, True, True),
        ({"amount_mean_30d": None, "amount_std_30d": None}, True, True),
        ({"amount_mean_30d": float("nan"), "amount_std_30d": 3.0}, True, True),
        ({"amount_mean_30d": 40.0, "amount_std_30d": 0.0}, False, True),  # one purchase in 30 days
        ({"amount_mean_30d": 40.0}, False, True),
    ],
)
def test_missing_or_degenerate_snapshots_give_nan(
    snapshot: dict[str, float | None] | None, ratio_is_nan: bool, zscore_is_nan: bool
) -> None:
    values = features(80.0, WEDNESDAY_NOON, snapshot)
    assert math.isnan(values["amount_to_mean_30d"]) == ratio_is_nan
    assert math.isnan(values["amount_zscore_30d"]) == zscore_is_nan
    if not ratio_is_nan:
        assert values["amount_to_mean_30d"] == 2.0


@pytest.mark.parametrize(
    ("when", "night", "weekend"),
    [
        (datetime(2026, 1, 7, 0, 0, tzinfo=UTC), 1.0, 0.0),
        (datetime(2026, 1, 7, 5, 59, 59, tzinfo=UTC), 1.0, 0.0),
        (datetime(2026, 1, 7, 6, 0, tzinfo=UTC), 0.0, 0.0),
        (datetime(2026, 1, 7, 23, 59, tzinfo=UTC), 0.0, 0.0),
        (datetime(2026, 1, 10, 3, 0, tzinfo=UTC), 1.0, 1.0),  # Saturday
        (datetime(2026, 1, 11, 23, 59, 59, tzinfo=UTC), 0.0, 1.0),  # Sunday
        (datetime(2026, 1, 12, 0, 0, tzinfo=UTC), 1.0, 0.0),  # Monday
        (datetime(2026, 1, 9, 23, 59, 59, tzinfo=UTC), 0.0, 0.0),  # Friday
    ],
)
def test_night_and_weekend_are_utc_calendar_flags(when: datetime, night: float, weekend: float) -> None:
    values = features(10.0, when, None)
    assert (values["is_night"], values["is_weekend"]) == (night, weekend)
