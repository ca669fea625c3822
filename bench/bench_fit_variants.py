"""Design study for the fit: fixed XGBoost variants on bench_quality's folds, each scored on the test week.

    python -m bench.bench_fit_variants [--handbook 1 --cards 2500 --days 150 --folds 4 --threads 1]

Where bench_quality compares the platform's search with the textbook fit, this fits a handful of fixed
candidates on every fold's whole training window (no search, no validation) and scores each on the test
week: the textbook fit, the search's regularised stochastic starting point, variants of it (min child weight
1, depth 3 and 5), the textbook and stochastic fits with every fraudulent card-day weighted the same (card
precision counts cards, not transactions), the same two fitted without the rows of cards already known to be
compromised on their day (frauds card precision does not count: such a card is blocked), rank averages of
the textbook with two of them (an ensemble the serving path would have to run as two models), and the
perfect ranking (the test labels as scores: the ceiling of each metric on that week). Same data, folds and
metrics as bench_quality (AP, card precision@100 by the standard rule, ROC AUC); the means per window shape go
to bench/results/fit_variants[_handbook].json. It answers whether any simple change of the fit would beat the
textbook on card precision@100, not which to ship: choosing a shipped default by its test weeks would tune
the fit to this benchmark.
"""

import os
import tempfile
from pathlib import Path

import duckdb
import numpy as np
import xgboost as xgb
from scipy.stats import rankdata

from bench.bench_quality import HEADLINE, SHAPES, fold_windows, window
from bench.common import parse_options, write_study
from bench.warehouse import land_handbook_file, land_simulation, prepared_home
from fraud_platform.config import Settings
from fraud_platform.training.dataset import TrainingData, build_training_data
from fraud_platform.training.evaluation import ranking_metrics
from fraud_platform.training.model import score, scored
from fraud_platform.training.search import STARTING_POINTS, booster_params, matrix

TEXTBOOK, STOCHASTIC = STARTING_POINTS
VARIANTS: dict[str, dict[str, float | int | str]] = {
    "textbook": TEXTBOOK,
    "stochastic": STOCHASTIC,
    "stochastic_min_child_1": {**STOCHASTIC, "min_child_weight": 1.0},
    "stochastic_depth_3_min_child_1": {**STOCHASTIC, "max_depth": 3, "min_child_weight": 1.0},
    "stochastic_depth_5_min_child_1": {**STOCHASTIC, "max_depth": 5, "min_child_weight": 1.0},
}
# Fits whose frauds are weighted so that each fraudulent card-day weighs the same (the unit card precision
# counts), and fits without the rows of cards known to be compromised before their day.
CARD_LEVEL = ("textbook", "stochastic")
RANK_AVERAGES = {
    "rank_average_textbook_stochastic": ("textbook", "stochastic"),
    "rank_average_textbook_stochastic_min_child_1": ("textbook", "stochastic_min_child_1"),
}


def card_day_weights(data: TrainingData) -> np.ndarray:
    """Row weights under which every fraudulent card-day weighs the same in total (its frauds share it) and
    the frauds' total weight is unchanged; genuine rows weigh 1."""
    weights = np.ones(len(data.labels))
    frauds = data.labels == 1
    _, card_day, counts = np.unique(
        np.stack([data.card_ids[frauds].astype(str), data.event_days[frauds].astype(str)]),
        axis=1,
        return_inverse=True,
        return_counts=True,
    )
    weights[frauds] = counts.mean() / counts[card_day.ravel()]
    return weights


def variant_scores(fold: TrainingData, threads: int) -> dict[str, np.ndarray]:
    """Every variant fitted on the fold's training window (train + validation days), scores on its test week;
    the test labels themselves as the ceiling a perfect ranking reaches."""
    development, test = fold.part("train", "validation"), fold.part("test")
    weights = card_day_weights(development)
    unknown = development.rows(~(development.card_fraud_known_days < development.event_days))
    plain = matrix(development.features, development.labels)  # each matrix sketched once, shared by its fits
    weighted = matrix(development.features, development.labels, weights)
    without_known = matrix(unknown.features, unknown.labels)
    fits = [(name, params, development.labels, plain, None) for name, params in VARIANTS.items()]
    fits += [
        (f"{name}_card_day_weighted", VARIANTS[name], development.labels, weighted, weights)
        for name in CARD_LEVEL
    ]
    fits += [
        (f"{name}_without_known_compromised", VARIANTS[name], unknown.labels, without_known, None)
        for name in CARD_LEVEL
    ]
    scores = {
        name: score(
            xgb.train(
                booster_params(params, labels, 7, threads, fit_weights), fit_matrix, int(params["trees"])
            ),
            test.features,
        ).astype(np.float64)
        for name, params, labels, fit_matrix, fit_weights in fits
    }
    scores["perfect_ranking"] = test.labels.astype(np.float64)
    for name, (first, second) in RANK_AVERAGES.items():
        scores[name] = (rankdata(scores[first]) + rankdata(scores[second])) / (2 * len(scores[first]))
    return scores


def main() -> None:
    """Prepare the warehouse, fit every variant on every fold, print and save the means."""
    arguments = parse_options(__doc__, cards=5_000, days=150, maturity=30, folds=4, handbook=0, threads=1)
    began_load = os.getloadavg()
    land = (land_handbook_file if arguments.handbook else land_simulation)(arguments.cards, arguments.days)
    result: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as home, prepared_home(Path(home), arguments.maturity, land):
        with duckdb.connect(str(Settings.from_env().warehouse_path), read_only=True) as connection:
            data = build_training_data(connection, arguments.maturity)
        for shape in SHAPES:
            metrics: dict[str, list[dict[str, float]]] = {}
            for config in fold_windows(np.unique(data.event_days), arguments.folds, shape):
                fold = window(data, config)
                for name, scores in variant_scores(fold, arguments.threads).items():
                    measured = ranking_metrics(scored(scores, fold.part("test")))
                    metrics.setdefault(name, []).append({key: measured[key] for key in HEADLINE})
            result[shape] = {
                name: {key: float(np.mean([fold[key] for fold in folds])) for key in HEADLINE}
                for name, folds in metrics.items()
            }
            for name, means in result[shape].items():  # type: ignore[union-attr]
                print(
                    f"{shape:<4}{name:<46}" + "  ".join(f"{key} {value:.4f}" for key, value in means.items())
                )
    write_study(
        "fit_variants_handbook" if arguments.handbook else "fit_variants", arguments, result, began_load
    )


if __name__ == "__main__":
    main()
