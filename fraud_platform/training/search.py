"""The fit's model selection: a bounded, seeded hyperparameter search over time-ordered (prequential) folds.

The validation days (the newest development days) are cut into `folds` consecutive blocks; fold i fits on every
development day before block i and scores block i, so each candidate is judged on several stretches of
future days rather than one. A candidate's value is the average precision of its out-of-fold scores pooled over
the folds (every validation fraud counts once; a per-fold mean would judge blocks of a dozen frauds each, which
is mostly noise on short windows). The number of trees is judged the same way: each fit is scored at half,
three quarters and all of its trees, and the count with the best pooled AP over all folds wins (early stopping
on one day's noise cannot happen).
Class weighting (none, the square root of the class ratio, the full ratio) is one of the searched choices.
To keep a search affordable on a few million rows, each fold fits on every fraud and a seeded sample of at
most `search_rows` genuine rows, the sampled rows weighted up by the inverse of their sampling rate (the same
objective in expectation, several times faster); the final fit (`model.fit`) uses every row.

The first candidates are the starting points: the textbook fit (depth 3, 100 trees, learning rate 0.1, no
weighting) and a regularised stochastic boosting (depth 4, 300 trees at 0.05, row and column subsampling); the
better of the two by pooled validation AP is the incumbent. A searched candidate replaces it only when its gain
is real: higher by more than `margin` (5 %) and higher in at least `confidence` (95 %) of `BOOTSTRAP_DRAWS`
paired bootstrap resamples of the pooled validation rows, resampled by card (a card's transactions, and a
fraud episode's, move together). On a short window a search of a handful of candidates otherwise picks noise:
measured on the simulator's 7-day windows, searched candidates cleared the 5 % margin on three of four weeks
and lost two of those test weeks by 35-80 % of their AP.
Optuna's TPE sampler is seeded: with the trial budget reached before the time budget, the same data gives the
same model.
"""

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import optuna
import xgboost as xgb
from sklearn.metrics import average_precision_score

from fraud_platform.features.vector import MODEL_FEATURES

CLASS_WEIGHTS = ("none", "sqrt", "full")
TREE_CHECKPOINTS = (0.5, 0.75, 1.0)
BOOTSTRAP_DRAWS = 200
# The first trials: the textbook XGBoost and a regularised stochastic boosting. The platform's earlier defaults
# (depth 6, lr 0.08, 300 trees, square-root class weight) were dropped: on the foreign shape's 7-day windows
# they won validation on all four weeks and lost the test week's AP on three (docs/benchmarks.md).
STARTING_POINTS: tuple[dict[str, float | int | str], ...] = (
    {
        "max_depth": 3,
        "learning_rate": 0.1,
        "trees": 100,
        "min_child_weight": 1.0,
        "subsample": 1.0,
        "colsample_bytree": 1.0,
        "class_weight": "none",
    },
    {
        "max_depth": 4,
        "learning_rate": 0.05,
        "trees": 300,
        "min_child_weight": 5.0,
        "subsample": 0.8,
        "colsample_bytree": 0.8,
        "class_weight": "none",
    },
)


class SelectionError(ValueError):
    """The development window cannot be cut into folds that both fit and validate; the message says why."""


@dataclass(frozen=True)
class Fold:
    """Row masks over the development rows: what one fold fits on and what it validates on."""

    fit: np.ndarray
    validate: np.ndarray


@dataclass(frozen=True)
class Trial:
    """One searched candidate: its parameters, its best tree count, its pooled validation AP (and each fold's
    at that count), and its cost."""

    number: int
    params: dict[str, float | int | str]
    trees: int
    average_precision: float
    fold_average_precision: tuple[float, ...]
    seconds: float
    scores: np.ndarray = field(repr=False, compare=False)  # pooled out-of-fold scores at `trees`


@dataclass(frozen=True)
class Selection:
    """The search's outcome: the chosen parameters (tree count included) and every trial."""

    params: dict[str, float | int | str]
    trees: int
    average_precision: float
    trials: tuple[Trial, ...]
    seconds: float


def prequential_folds(event_days: np.ndarray, is_validation: np.ndarray, folds: int) -> list[Fold]:
    """Cut the validation days into up to `folds` consecutive blocks; each fold fits on every day before its
    block. Raises SelectionError when a fold would have nothing to fit on."""
    validation_days = np.unique(event_days[is_validation])
    if not len(validation_days):
        raise SelectionError("the development window has no validation days")
    blocks = np.array_split(validation_days, min(folds, len(validation_days)))
    result = []
    for block in blocks:
        fit = event_days < block[0]
        if not fit.any():
            raise SelectionError(
                f"no development day before the validation block starting {block[0]}: widen the training window"
            )
        result.append(Fold(fit=fit, validate=np.isin(event_days, block)))
    return result


def booster_params(
    params: dict[str, float | int | str],
    labels: np.ndarray,
    seed: int,
    threads: int,
    weights: np.ndarray | None = None,
) -> dict:
    """XGBoost's parameters for a candidate, the class weight resolved against these (weighted) labels."""
    weights = np.ones(len(labels)) if weights is None else weights
    positives = float(weights[labels == 1].sum())
    ratio = float(weights[labels == 0].sum()) / positives if positives else 1.0
    weight = {"none": 1.0, "sqrt": math.sqrt(ratio), "full": ratio}[str(params["class_weight"])]
    return {
        "objective": "binary:logistic",
        "eval_metric": "aucpr",
        "tree_method": "hist",
        "max_depth": int(params["max_depth"]),
        "eta": float(params["learning_rate"]),
        "min_child_weight": float(params["min_child_weight"]),
        "subsample": float(params["subsample"]),
        "colsample_bytree": float(params["colsample_bytree"]),
        "scale_pos_weight": weight,
        "seed": seed,
        "nthread": threads,
    }


def matrix(features: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> xgb.DMatrix:
    """A training matrix with the model's feature names (NaN = missing), its histogram bins computed once
    (QuantileDMatrix), so repeated fits on it do not sketch the data again."""
    return xgb.QuantileDMatrix(
        features, label=labels, weight=weights, feature_names=list(MODEL_FEATURES), missing=np.nan
    )


def sample_genuine(labels: np.ndarray, limit: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices keeping every fraud and at most `limit` genuine rows (seeded), and each kept row's weight
    (1 for frauds, the inverse sampling rate for genuine rows)."""
    genuine = np.flatnonzero(labels == 0)
    if len(genuine) <= limit:
        return np.arange(len(labels)), np.ones(len(labels), dtype=np.float32)
    kept = np.sort(np.random.default_rng(seed).choice(genuine, size=limit, replace=False))
    rows = np.union1d(np.flatnonzero(labels == 1), kept)
    weights = np.where(labels[rows] == 0, len(genuine) / limit, 1.0).astype(np.float32)
    return rows, weights


def _checkpoints(trees: int) -> list[int]:
    return sorted({max(1, round(trees * share)) for share in TREE_CHECKPOINTS})


def _suggest(trial: optuna.Trial) -> dict[str, float | int | str]:
    return {
        "max_depth": trial.suggest_int("max_depth", 2, 8),
        "learning_rate": trial.suggest_float("learning_rate", 0.02, 0.3, log=True),
        "trees": trial.suggest_int("trees", 100, 400, step=50),
        "min_child_weight": trial.suggest_float("min_child_weight", 1.0, 30.0, log=True),
        "subsample": trial.suggest_float("subsample", 0.5, 1.0),
        "colsample_bytree": trial.suggest_float("colsample_bytree", 0.5, 1.0),
        "class_weight": trial.suggest_categorical("class_weight", CLASS_WEIGHTS),
    }


def search(
    features: np.ndarray,
    labels: np.ndarray,
    folds: list[Fold],
    *,
    trials: int,
    seconds: float,
    seed: int,
    threads: int = 0,
    search_rows: int = 100_000,
    margin: float = 0.05,
    confidence: float = 0.95,
    groups: np.ndarray | None = None,
    progress: Callable[[Trial], None] | None = None,
) -> Selection:
    """Run the search: at most `trials` candidates (the starting points first), stopping early after
    `seconds`; return the best starting point by the average precision of the out-of-fold scores pooled over
    the folds, or a searched candidate whose gain over it holds (see the module docstring). `groups` (one per
    row, e.g. card ids) are what the bootstrap resamples; rows when None."""
    fold_data = []
    judged = []  # the validation rows of the folds that judge
    for fold in folds:
        fit_labels, validate_labels = labels[fold.fit], labels[fold.validate]
        if not fit_labels.any() or not validate_labels.any():
            continue  # a fold without frauds to learn from or to find judges nothing
        judged.append(np.flatnonzero(fold.validate))
        rows, weights = sample_genuine(fit_labels, search_rows, seed)
        fold_data.append(
            (
                matrix(features[fold.fit][rows], fit_labels[rows], weights),
                fit_labels[rows],
                weights,
                features[fold.validate],
                validate_labels,
            )
        )
    if not fold_data:
        raise SelectionError(
            "no selection fold has frauds both to fit on and to validate on: widen the training window or "
            "the validation days"
        )
    pooled_labels = np.concatenate([labels for *_, labels in fold_data])
    pooled_rows = np.concatenate(judged)
    pooled_groups = pooled_rows if groups is None else groups[pooled_rows]
    done: list[Trial] = []

    def objective(trial: optuna.Trial) -> float:
        began = time.perf_counter()
        params = _suggest(trial)
        checkpoints = _checkpoints(int(params["trees"]))
        scores = []  # per fold: the validation scores at each checkpoint
        for fit_matrix, fit_labels, weights, validate_features, _ in fold_data:
            booster = xgb.train(
                booster_params(params, fit_labels, seed, threads, weights),
                fit_matrix,
                num_boost_round=checkpoints[-1],
            )
            scores.append(
                [
                    booster.inplace_predict(validate_features, iteration_range=(0, trees))
                    for trees in checkpoints
                ]
            )
        pooled = [
            average_precision_score(pooled_labels, np.concatenate([fold[index] for fold in scores]))
            for index in range(len(checkpoints))
        ]
        best = int(np.argmax(pooled))
        per_fold = tuple(
            float(average_precision_score(labels, fold[best]))
            for (*_, labels), fold in zip(fold_data, scores, strict=True)
        )
        result = Trial(
            number=trial.number,
            params=params,
            trees=checkpoints[best],
            average_precision=float(pooled[best]),
            fold_average_precision=per_fold,
            seconds=time.perf_counter() - began,
            scores=np.concatenate([fold[best] for fold in scores]),
        )
        done.append(result)
        if progress:
            progress(result)
        return result.average_precision

    optuna.logging.set_verbosity(logging.WARNING)
    began = time.perf_counter()
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    for point in STARTING_POINTS[: max(trials, 1)]:
        study.enqueue_trial(point)
    study.optimize(objective, n_trials=max(trials, 1), timeout=seconds)
    ranked = sorted(done, key=lambda trial: (-trial.average_precision, trial.number))
    starting = [trial for trial in ranked if trial.number < len(STARTING_POINTS)]
    best = starting[0] if starting else ranked[0]
    for candidate in ranked:
        if candidate.average_precision <= (1 + margin) * best.average_precision:
            break
        if (
            bootstrap_win_share(pooled_labels, candidate.scores, best.scores, pooled_groups, seed)
            >= confidence
        ):
            best = candidate
            break
    return Selection(
        params=best.params,
        trees=best.trees,
        average_precision=best.average_precision,
        trials=tuple(done),
        seconds=time.perf_counter() - began,
    )


def bootstrap_win_share(
    labels: np.ndarray, candidate: np.ndarray, incumbent: np.ndarray, groups: np.ndarray, seed: int
) -> float:
    """Share of BOOTSTRAP_DRAWS paired resamples (whole groups drawn with replacement, seeded) in which the
    candidate's average precision is higher than the incumbent's."""
    codes, group_of_row = np.unique(groups, return_inverse=True)
    rng = np.random.default_rng(seed)
    wins = 0
    for _ in range(BOOTSTRAP_DRAWS):
        weights = np.bincount(rng.integers(0, len(codes), len(codes)), minlength=len(codes))[group_of_row]
        if not labels[weights > 0].any():
            continue  # a resample without frauds judges nothing
        wins += average_precision_score(labels, candidate, sample_weight=weights) > average_precision_score(
            labels, incumbent, sample_weight=weights
        )
    return wins / BOOTSTRAP_DRAWS
