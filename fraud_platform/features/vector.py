"""The model's feature vector: which features, in which order, under which definition version.

Training and scoring both build their matrices with `assemble`, so column i means the same thing on both
sides; the registered model carries MODEL_FEATURES and FEATURE_DEFINITION_VERSION as its contract.
"""

import numpy as np

from fraud_platform.features.batch import CARD_BATCH_FEATURES, MERCHANT_BATCH_FEATURES
from fraud_platform.features.on_demand import ON_DEMAND_FEATURE_NAMES
from fraud_platform.features.realtime import FEATURE_DEFINITION_VERSION as REALTIME_VERSION
from fraud_platform.features.realtime import FEATURE_NAMES as REALTIME_FEATURES

CARD_PREFIX = "card_"
MERCHANT_PREFIX = "merchant_"
MODEL_FEATURES: tuple[str, ...] = (
    *REALTIME_FEATURES,
    *ON_DEMAND_FEATURE_NAMES,
    *(CARD_PREFIX + name for name in CARD_BATCH_FEATURES),
    *(MERCHANT_PREFIX + name for name in MERCHANT_BATCH_FEATURES),
)
# Bump the suffixes when an on-demand or batch feature changes meaning; the real-time part has its own.
FEATURE_DEFINITION_VERSION = f"{REALTIME_VERSION}+od-v1+batch-v2"


def assemble(
    realtime: np.ndarray, on_demand: np.ndarray, cards: np.ndarray, merchants: np.ndarray
) -> np.ndarray:
    """One float32 row per transaction in MODEL_FEATURES order (NaN = missing, as XGBoost expects)."""
    matrix = np.hstack([realtime, on_demand, cards, merchants]).astype(np.float32, copy=False)
    if matrix.shape[1] != len(MODEL_FEATURES):
        raise ValueError(
            f"feature matrix has {matrix.shape[1]} columns, the model needs {len(MODEL_FEATURES)}"
        )
    return matrix
