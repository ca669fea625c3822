"""Standard fraud-detection metrics: transaction-level ranking quality and card precision@k by the usual rule.

Card precision@k ranks cards, not transactions, as an investigation team does: per day, each card's maximum
score; cards already known to be compromised (a fraud label known before that day) and cards detected on an
earlier day of the window (one of an earlier day's top k that was fraudulent) are left out; the share of
fraudulent cards among the top k; the mean over the window's days.
"""

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

CARD_PRECISION_K = 100


@dataclass(frozen=True)
class Scored:
    """One window's transactions with their scores: what every metric here reads."""

    scores: np.ndarray
    labels: np.ndarray
    amounts: np.ndarray
    card_ids: np.ndarray
    event_days: np.ndarray  # datetime64[D]
    card_fraud_known_days: np.ndarray  # datetime64[D]: the day the card's first fraud label was known, or NaT


def card_precision_at_k(scored: Scored, k: int = CARD_PRECISION_K) -> float:
    """Mean over days of the share of fraudulent cards among the day's top k cards, known-compromised cards
    and cards detected on earlier days of the window removed (0.0 for an empty window)."""
    daily = daily_card_precision(scored, k)
    return float(daily.mean()) if len(daily) else 0.0


def card_days(scored: Scored) -> pd.DataFrame:
    """One row per (day, card) in that order: the card's maximum score that day and whether any of its
    transactions that day was fraudulent; cards known to be compromised before the day left out."""
    frame = pd.DataFrame(
        {
            "card": scored.card_ids,
            "day": scored.event_days,
            "score": scored.scores,
            "fraud": scored.labels,
            "known": scored.card_fraud_known_days,
        }
    )
    # Known before the day: a label that became known during the day does not yet remove the card.
    frame = frame[~(frame["known"] < frame["day"])]
    return (
        frame.groupby(["day", "card"], sort=True)
        .agg(score=("score", "max"), fraud=("fraud", "max"))
        .reset_index()
    )


def daily_card_precision(scored: Scored, k: int = CARD_PRECISION_K) -> np.ndarray:
    """Each day's share of fraudulent cards among its top k cards (the days of the window in order), by the
    standard rule of `card_precision_at_k`."""
    daily = card_days(scored)
    detected: set[object] = set()
    precisions = []
    for day in np.unique(scored.event_days):
        candidates = daily[(daily["day"] == day) & ~daily["card"].isin(detected)]
        top = candidates.sort_values(["score", "card"], ascending=[False, True], kind="stable").head(k)
        frauds = top.loc[top["fraud"] == 1, "card"]
        detected.update(frauds)
        precisions.append(len(frauds) / k)
    return np.array(precisions, dtype=np.float64)


def recall_at_fpr(scores: np.ndarray, labels: np.ndarray, false_positive_rate: float = 0.01) -> float:
    """The share of frauds scored above the cut that flags `false_positive_rate` of genuine transactions."""
    rates, recalls, _ = roc_curve(labels, scores)
    return float(recalls[rates <= false_positive_rate].max())


def ranking_metrics(scored: Scored, k: int = CARD_PRECISION_K) -> dict[str, float]:
    """ROC AUC, average precision, recall at 1 % FPR, card precision@k (standard rule), the fraud amount
    caught at 1 % FPR, and the window's size; NaN for the ranking metrics of a window with one class only."""
    labels = scored.labels
    counts = {"transactions": float(len(labels)), "frauds": float(labels.sum())}
    if labels.min(initial=0) == labels.max(initial=0):
        nan = float("nan")
        return {
            "roc_auc": nan,
            "average_precision": nan,
            "recall_at_1pct_fpr": nan,
            f"card_precision_at_{k}": nan,
            "fraud_amount_caught_at_1pct_fpr": nan,
            **counts,
        }
    genuine_cut = np.quantile(scored.scores[labels == 0], 0.99)
    fraud_amount = float(scored.amounts[labels == 1].sum())
    caught = float(scored.amounts[(labels == 1) & (scored.scores > genuine_cut)].sum())
    return {
        "roc_auc": float(roc_auc_score(labels, scored.scores)),
        "average_precision": float(average_precision_score(labels, scored.scores)),
        "recall_at_1pct_fpr": recall_at_fpr(scored.scores, labels),
        f"card_precision_at_{k}": card_precision_at_k(scored, k),
        "fraud_amount_caught_at_1pct_fpr": caught / fraud_amount if fraud_amount else 0.0,
        **counts,
    }


def format_metrics(metrics: Mapping[str, float]) -> str:
    """The headline metrics on one line, for the command line."""
    names = (
        ("roc_auc", "ROC AUC"),
        ("average_precision", "average precision"),
        ("recall_at_1pct_fpr", "recall at 1% FPR"),
        (f"card_precision_at_{CARD_PRECISION_K}", f"card precision@{CARD_PRECISION_K}"),
        ("fraud_amount_caught_at_1pct_fpr", "fraud amount caught at 1% FPR"),
    )
    return ", ".join(f"{label} {metrics[key]:.3f}" for key, label in names if key in metrics)
