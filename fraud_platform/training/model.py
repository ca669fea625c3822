"""Fit, score and evaluate the fraud model: XGBoost chosen by a time-ordered search, thresholds on validation.

`fit` selects the hyperparameters, the class weighting and the number of trees on prequential folds over the
validation days (`fraud_platform.training.search`), then fits the chosen candidate on every development day
(train and validation). Thresholds are chosen on the out-of-fold validation scores (each validation block
scored by the fold model that never saw it): decline where precision reaches a target, review for the top
share of transactions by score (the alert volume a review team can handle). Metrics are reported on the test
window, which neither the fit, the search nor the thresholds have seen.
"""

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import xgboost as xgb
from sklearn.metrics import precision_recall_curve

from fraud_platform.training.dataset import TrainingData
from fraud_platform.training.evaluation import Scored, ranking_metrics
from fraud_platform.training.search import (
    Selection,
    SelectionError,
    Trial,
    booster_params,
    matrix,
    prequential_folds,
    search,
)


@dataclass(frozen=True)
class TrainingConfig:
    """The search's budget and the decision policy."""

    search_trials: int = 24  # candidates tried at most (the two starting points first)
    search_seconds: float = 300.0  # the search stops starting new candidates after this
    folds: int = 3  # prequential selection folds over the validation days
    decline_precision: float = 0.9  # decline only where validation precision reaches this
    review_alert_rate: float = 0.01  # review the top 1 % of transactions by score
    seed: int = 7
    threads: int = 1  # XGBoost threads while training (0: every core; FRAUD_PLATFORM_TRAIN_THREADS)


@dataclass(frozen=True)
class Thresholds:
    """Score thresholds: decline at or above `decline`, review at or above `review`, approve below."""

    decline: float
    review: float


@dataclass
class TrainedModel:
    """A fitted booster with its thresholds, metrics and the search that chose it."""

    booster: xgb.Booster
    thresholds: Thresholds
    best_iteration: int
    validation_metrics: dict[str, float]
    test_metrics: dict[str, float]
    params: dict[str, float | int | str]
    selection: Selection


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


def scored(scores: np.ndarray, data: TrainingData) -> Scored:
    """A window's scores with what the metrics need to know of its rows."""
    return Scored(
        scores, data.labels, data.amounts, data.card_ids, data.event_days, data.card_fraud_known_days
    )


def evaluate(scores: np.ndarray, data: TrainingData, thresholds: Thresholds) -> dict[str, float]:
    """The standard ranking metrics (`evaluation.ranking_metrics`) and the review/decline operating points."""
    labels = data.labels
    fraud_amount = float(data.amounts[labels == 1].sum())
    alerted = scores >= thresholds.review
    declined = scores >= thresholds.decline
    frauds = labels == 1
    return {
        **ranking_metrics(scored(scores, data)),
        "fraud_amount_caught": float(data.amounts[alerted & frauds].sum() / fraud_amount)
        if fraud_amount
        else 0.0,
        "alert_rate": float(alerted.mean()) if len(labels) else 0.0,
        "alert_precision": float(labels[alerted].mean()) if alerted.any() else 0.0,
        "alert_recall": float(alerted[frauds].mean()) if frauds.any() else 0.0,
        "decline_precision": float(labels[declined].mean()) if declined.any() else 0.0,
        "decline_recall": float(declined[frauds].mean()) if frauds.any() else 0.0,
    }


def _check_classes(name: str, part: TrainingData) -> None:
    if part.labels.sum() == 0 or part.labels.sum() == len(part.labels):
        raise SelectionError(
            f"the {name} window has only one class ({len(part.labels)} rows, {int(part.labels.sum())} frauds): "
            "widen it, or lower FRAUD_PLATFORM_LABEL_MATURITY_DAYS when chargebacks arrive sooner"
        )


def fit(
    data: TrainingData,
    config: TrainingConfig = TrainingConfig(),
    progress: Callable[[Trial], None] | None = None,
) -> TrainedModel:
    """Search on prequential folds of the validation days, fit the winner on train + validation, choose the
    thresholds on the out-of-fold validation scores, evaluate on test."""
    development, test = data.part("train", "validation"), data.part("test")
    for name, part in (("training (train + validation)", development), ("test", test)):
        _check_classes(name, part)
    folds = prequential_folds(development.event_days, development.split == "validation", config.folds)
    selection = search(
        development.features,
        development.labels,
        folds,
        trials=config.search_trials,
        seconds=config.search_seconds,
        seed=config.seed,
        threads=config.threads,
        groups=development.card_ids,
        progress=progress,
    )
    chosen = selection.params

    def train(rows: np.ndarray) -> xgb.Booster:
        labels = development.labels[rows]
        return xgb.train(
            booster_params(chosen, labels, config.seed, config.threads),
            matrix(development.features[rows], labels),
            num_boost_round=selection.trees,
        )

    # Out-of-fold scores: each validation block scored by a model fitted on the days before it only.
    out_of_fold = np.full(len(development.labels), np.nan, dtype=np.float32)
    for fold in folds:
        out_of_fold[fold.validate] = score(train(fold.fit), development.features[fold.validate])
    validated = ~np.isnan(out_of_fold)
    validation = development.rows(validated)
    thresholds = choose_thresholds(
        out_of_fold[validated], validation.labels, config.decline_precision, config.review_alert_rate
    )
    booster = train(np.ones(len(development.labels), dtype=bool))
    return TrainedModel(
        booster=booster,
        thresholds=thresholds,
        best_iteration=int(booster.num_boosted_rounds()),
        validation_metrics=evaluate(out_of_fold[validated], validation, thresholds),
        test_metrics=evaluate(score(booster, test.features), test, thresholds),
        params={
            **booster_params(chosen, development.labels, config.seed, config.threads),
            "trees": selection.trees,
            "class_weight": str(chosen["class_weight"]),
            "selection_folds": len(folds),
            "selection_average_precision": round(selection.average_precision, 6),
            "search_trials_run": len(selection.trials),
            "search_seconds_used": round(selection.seconds, 1),
            **{f"policy_{key}": value for key, value in asdict(config).items()},
        },
        selection=selection,
    )
