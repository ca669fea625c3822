"""A rules baseline for contrast with the model: what a fraud team writes before it has one.

Points for an amount far above the card's usual, for velocity (many transactions or merchants in minutes),
and for impossible travel. Scored on the same feature matrix, evaluated with the same metrics.
"""

import numpy as np

from fraud_platform.features.vector import MODEL_FEATURES

_COLUMN = {name: index for index, name in enumerate(MODEL_FEATURES)}


def rules_score(features: np.ndarray) -> np.ndarray:
    """A score in [0, 1] from simple rules over the model's own features (NaN counts as no evidence)."""

    def column(name: str) -> np.ndarray:
        return np.nan_to_num(features[:, _COLUMN[name]].astype(np.float64), nan=0.0)

    points = (
        np.clip(column("amount_to_mean_30d") / 5.0, 0, 1)  # five times the usual amount
        + np.clip((column("txn_count_10m") - 1) / 4.0, 0, 1)  # a burst within ten minutes
        + np.clip((column("distinct_merchants_1h") - 2) / 4.0, 0, 1)  # many merchants within an hour
        + (column("speed_kmh_from_prev_txn") > 900).astype(np.float64)  # faster than an airliner
    )
    return points / 4.0
