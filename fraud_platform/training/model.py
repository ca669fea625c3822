"""Fit, score and evaluate the fraud model: XGBoost with early stopping on validation average precision.

Thresholds are chosen on the validation window: decline where precision reaches a target, review for the
top share of transactions by score (the alert volume a review team can handle). Metrics are reported on the
test window, which neither the fit nor the thresholds have seen.
"""

from dataclasses import asdict, dataclass

import numpy as np
import xgboost as xgb
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from fraud_platform.features.vector import MODEL_FEATURES
from fraud_platform.training.dataset import TrainingData


@dataclass(frozen=True)
class TrainingConfig:
    """Hyper-parameters and decision policy."""

    max_rounds: int = 400
    early_stopping_rounds: int = 30
    max_depth: int = 6
    learning_rate: float = 0.08
    subsample: float = 0.8
    colsample_bytree: float = 0.8
    min_child_weight: float = 1.0
    decline_precision: float = 0.9  # decline only where validation precision reaches this
    review_alert_rate: float = 0.01  # review the top 1 % of transactions by score
    seed: int = 7


@dataclass(frozen=True)
class Thresholds:
    """Score thresholds: decline at or above `decline`, review at or above `review`, approve below."""

    decline: float
    review: float


@dataclass
class TrainedModel:
    """A fitted booster with its thresholds and metrics."""

    booster: xgb.Booster
    thresholds: Thresholds
    best_iteration: int
    validation_metrics: dict[str, float]
    test_metrics: dict[str, float]
    params: dict[str, float | int | str]


def score(booster: xgb.Booster, features: np.ndarray) -> np.ndarray:
    """Fraud scores of a float32 feature matrix (vectorised; the stream calls this per batch)."""
    if len(features) == 0:
        return np.empty(0, dtype=np.float32)
    return np.asarray(booster.inplace_predict(features, validate_features=False), dtype=np.float32)


def choose_thresholds(
    scores: np.ndarray, labels: np.ndarray, decline_precision: float, review_alert_rate: float
) -> Thresholds:
    """Decline at the lowest score whose precision reaches the target (1.0, i.e. never, when none does);
    review from the (1 - alert rate) quantile, never above decline."""
    precision, _, cuts = precision_recall_curve(labels, scores)
    reaching = np.flatnonzero(precision[:-1] >= decline_precision)
    decline = float(cuts[reaching[0]]) if len(reaching) else 1.0
    review = min(float(np.quantile(scores, 1.0 - review_alert_rate)), decline)
    return Thresholds(decline=decline, review=review)


def card_precision_at_k(
    scores: np.ndarray, labels: np.ndarray, cards: np.ndarray, days: np.ndarray, k: int = 100
) -> float:
    """Mean over days of the share of frauded cards among the k cards with the highest score that day."""
    daily = []
    for day in np.unique(days):
        on_day = days == day
        best: dict[str, tuple[float, int]] = {}
        for card, value, label in zip(cards[on_day], scores[on_day], labels[on_day], strict=True):
            top, fraud = best.get(card, (-1.0, 0))
            best[card] = (max(top, float(value)), max(fraud, int(label)))
        ranked = sorted(best.values(), key=lambda item: item[0], reverse=True)[:k]
        daily.append(sum(fraud for _, fraud in ranked) / k)
    return float(np.mean(daily))


def evaluate(scores: np.ndarray, data: TrainingData, thresholds: Thresholds) -> dict[str, float]:
    """ROC AUC, average precision, card precision@100 per day, recall at 1 % FPR, fraud amount caught, and
    the decline/review operating points."""
    labels = data.labels
    false_positive_rate, true_positive_rate, _ = roc_curve(labels, scores)
    fraud_amount = float(data.amounts[labels == 1].sum())
    alerted = scores >= thresholds.review
    declined = scores >= thresholds.decline
    return {
        "roc_auc": float(roc_auc_score(labels, scores)),
        "average_precision": float(average_precision_score(labels, scores)),
        "card_precision_at_100": card_precision_at_k(scores, labels, data.card_ids, data.event_days),
        "recall_at_1pct_fpr": float(true_positive_rate[false_positive_rate <= 0.01].max()),
        "fraud_amount_caught": float(data.amounts[alerted & (labels == 1)].sum() / fraud_amount)
        if fraud_amount
        else 0.0,
        "alert_rate": float(alerted.mean()),
        "alert_precision": float(labels[alerted].mean()) if alerted.any() else 0.0,
        "alert_recall": float(alerted[labels == 1].mean()),
        "decline_precision": float(labels[declined].mean()) if declined.any() else 0.0,
        "decline_recall": float(declined[labels == 1].mean()),
        "transactions": float(len(labels)),
        "frauds": float(labels.sum()),
    }


def _matrix(data: TrainingData) -> xgb.DMatrix:
    return xgb.DMatrix(data.features, label=data.labels, feature_names=list(MODEL_FEATURES), missing=np.nan)


def fit(data: TrainingData, config: TrainingConfig = TrainingConfig()) -> TrainedModel:
    """Fit on train, stop early on validation average precision, choose thresholds on validation,
    evaluate on test."""
    train, validation, test = data.part("train"), data.part("validation"), data.part("test")
    for name, part in (("train", train), ("validation", validation), ("test", test)):
        if part.labels.sum() == 0 or part.labels.sum() == len(part.labels):
            raise ValueError(
                f"the {name} window has only one class ({len(part.labels)} rows): more history is needed"
            )
    positives = float(train.labels.sum())
    params: dict[str, float | int | str] = {
        "objective": "binary:logistic",
        "eval_metric": "aucpr",
        "tree_method": "hist",
        "max_depth": config.max_depth,
        "eta": config.learning_rate,
        "subsample": config.subsample,
        "colsample_bytree": config.colsample_bytree,
        "min_child_weight": config.min_child_weight,
        # Class imbalance: weigh the rare frauds up to the genuine mass.
        "scale_pos_weight": (len(train.labels) - positives) / positives,
        "seed": config.seed,
    }
    booster = xgb.train(
        params,
        _matrix(train),
        num_boost_round=config.max_rounds,
        evals=[(_matrix(validation), "validation")],
        early_stopping_rounds=config.early_stopping_rounds,
        verbose_eval=False,
    )
    booster = booster[: booster.best_iteration + 1]
    validation_scores = score(booster, validation.features)
    thresholds = choose_thresholds(
        validation_scores, validation.labels, config.decline_precision, config.review_alert_rate
    )
    return TrainedModel(
        booster=booster,
        thresholds=thresholds,
        best_iteration=int(booster.num_boosted_rounds()),
        validation_metrics=evaluate(validation_scores, validation, thresholds),
        test_metrics=evaluate(score(booster, test.features), test, thresholds),
        params={**params, **{f"policy_{key}": value for key, value in asdict(config).items()}},
    )
