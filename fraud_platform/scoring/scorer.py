"""Score a batch of served transactions: the same feature vector as training, one model call per batch.

For each batch: the card and merchant batch features from Redis in one round trip (`OnlineStore`), the
on-demand features through the function training uses, `assemble` (the training matrix builder), one
vectorised score, approve / review / decline from the model's thresholds, and reason codes only for the
reviewed and declined rows (approximate contributions still cost tens of us per row, exact TreeSHAP about
1 ms: `bench.bench_scoring`; approvals are most of the traffic). XGBoost's threads are the ServingModel's.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from fraud_platform.features.batch import CARD_BATCH_FEATURES
from fraud_platform.features.on_demand import on_demand_matrix
from fraud_platform.features.realtime import FEATURE_NAMES as REALTIME_FEATURES
from fraud_platform.features.vector import assemble
from fraud_platform.lib.online_store import OnlineStore
from fraud_platform.lib.schema import Transaction
from fraud_platform.scoring.models import ModelWatcher
from fraud_platform.training.model import Thresholds

APPROVE, REVIEW, DECLINE = "approve", "review", "decline"
_MEAN = CARD_BATCH_FEATURES.index("amount_mean_30d")
_STD = CARD_BATCH_FEATURES.index("amount_std_30d")


class Decision(NamedTuple):
    """The stream's answer for one transaction, with what it was computed from (for the feature log).

    Times are epoch milliseconds: the event's own time, when the flow took it in, when it was decided."""

    transaction_id: str
    card_id: str
    score: float
    decision: str
    reasons: tuple[str, ...]
    model_version: str
    event_ms: int
    received_ms: int
    decision_ms: int
    txn: Transaction
    features: np.ndarray  # float32, MODEL_FEATURES order: the vector the model was served
    contributions: tuple[float, ...] = ()  # each reason's contribution to the score (log-odds)


def decide(scores: np.ndarray, thresholds: Thresholds) -> np.ndarray:
    """approve / review / decline per score: decline at or above `decline`, review at or above `review`."""
    return np.where(
        scores >= thresholds.decline, DECLINE, np.where(scores >= thresholds.review, REVIEW, APPROVE)
    )


class Scorer:
    """Turns batches of (transaction, served real-time row) into decisions with the watcher's model."""

    def __init__(self, store: OnlineStore, models: ModelWatcher) -> None:
        self.store = store
        self.models = models

    def score(
        self, txns: Sequence[Transaction], realtime: Sequence[Sequence[float]], received_ms: Sequence[int]
    ) -> list[Decision]:
        """Decisions for a batch; `realtime` holds each transaction's served row in FEATURE_NAMES order."""
        if not txns:
            return []
        model = self.models.current()
        cards, merchants = self.store.batch_features(
            [txn.card_id for txn in txns], [txn.merchant_id for txn in txns]
        )
        on_demand = on_demand_matrix(
            np.fromiter((txn.amount for txn in txns), np.float64, len(txns)),
            np.fromiter((txn.timestamp_ms for txn in txns), np.int64, len(txns)),
            cards[:, _MEAN],
            cards[:, _STD],
        )
        features = assemble(
            np.asarray(realtime, dtype=np.float64).reshape(len(txns), len(REALTIME_FEATURES)),
            on_demand,
            cards,
            merchants,
        )
        scores = model.scores(features)
        decisions = decide(scores, model.thresholds)
        flagged = np.flatnonzero(decisions != APPROVE)
        reasons: list[tuple[str, ...]] = [()] * len(txns)  # only flagged rows have reasons
        contributions: list[tuple[float, ...]] = [()] * len(txns)
        for row, row_reasons in zip(flagged.tolist(), model.explain(features[flagged]), strict=True):
            reasons[row] = tuple(name for name, _ in row_reasons)
            contributions[row] = tuple(share for _, share in row_reasons)
        decided_ms = time.time_ns() // 1_000_000
        return [
            Decision(
                txn.transaction_id,
                txn.card_id,
                row_score,
                decision,
                reasons[row],
                model.version,
                txn.timestamp_ms,
                received_ms[row],
                decided_ms,
                txn,
                features[row],
                contributions[row],
            )
            for row, (txn, row_score, decision) in enumerate(
                zip(txns, scores.tolist(), decisions.tolist(), strict=True)
            )
        ]
