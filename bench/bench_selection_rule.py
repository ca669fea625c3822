"""Design study for the search's selection rule: would judging the starting points by card-days win card
precision@100?

    python -m bench.bench_selection_rule [--handbook 1 --cards 2500 --days 150 --folds 4 --threads 1]

The search picks between its two starting points (the textbook fit and the regularised stochastic one) by the
average precision of their out-of-fold validation scores, pooled over transactions. Card precision@100 ranks
cards per day instead, so on bench_quality's folds this runs the search with those two trials only and
reports, per fold and starting point: the validation AP the search uses, the validation AP over card-days
(each card's maximum score per day, cards already known to be compromised left out, a card-day fraudulent when
one of its transactions is: the unit card precision counts) and the validation card precision@100; then each
starting point fitted on the fold's whole training window, scored on the test week by AP, AP over card-days
and card precision@100. The rule each validation metric implies is read off the table; the results go to
bench/results/selection_rule[_handbook].json.
"""

import os
import tempfile
from pathlib import Path

import duckdb
import numpy as np
import xgboost as xgb
from sklearn.metrics import average_precision_score

from bench.bench_quality import SHAPES, fold_windows, window
from bench.common import parse_options, write_study
from bench.warehouse import land_handbook_file, land_simulation, prepared_home
from fraud_platform.config import Settings
from fraud_platform.training.dataset import TrainingData, build_training_data
from fraud_platform.training.evaluation import card_days, card_precision_at_k
from fraud_platform.training.model import TrainingConfig, score, scored
from fraud_platform.training.search import STARTING_POINTS, booster_params, matrix, prequential_folds, search

STARTING_NAMES = ("textbook", "stochastic")
METRICS = ("average_precision", "card_day_average_precision", "card_precision_at_100")


def card_day_average_precision(scores: np.ndarray, data: TrainingData) -> float:
    """Average precision over card-days (`evaluation.card_days`: each card's maximum score per day, cards
    known to be compromised before the day left out): card precision's rule without the cut at k."""
    daily = card_days(scored(scores, data))
    return float(average_precision_score(daily["fraud"], daily["score"]))


def ranking(scores: np.ndarray, data: TrainingData) -> dict[str, float]:
    """AP, AP over card-days and card precision@100 of one window's scores."""
    values = (
        float(average_precision_score(data.labels, scores)),
        card_day_average_precision(scores, data),
        card_precision_at_k(scored(scores, data)),
    )
    return dict(zip(METRICS, values, strict=True))


def starting_points(fold: TrainingData, threads: int) -> dict[str, dict[str, dict[str, float]]]:
    """Each starting point's validation metrics (its out-of-fold scores, as the search pools them) and test
    metrics (fitted on the whole training window with the tree count the search chose for it)."""
    development, test = fold.part("train", "validation"), fold.part("test")
    config = TrainingConfig(threads=threads)
    folds = prequential_folds(development.event_days, development.split == "validation", config.folds)
    selection = search(
        development.features,
        development.labels,
        folds,
        trials=len(STARTING_POINTS),
        seconds=float("inf"),
        seed=config.seed,
        threads=threads,
        groups=development.card_ids,
    )
    judged = np.concatenate(
        [
            np.flatnonzero(part.validate)
            for part in folds
            if development.labels[part.fit].any() and development.labels[part.validate].any()
        ]
    )
    order = np.argsort(judged, kind="stable")  # the pooled scores follow the folds; rows() keeps row order
    validation = development.rows(np.isin(np.arange(len(development.labels)), judged))
    result = {}
    for name, trial in zip(STARTING_NAMES, selection.trials, strict=True):
        booster = xgb.train(
            booster_params(trial.params, development.labels, config.seed, threads),
            matrix(development.features, development.labels),
            num_boost_round=trial.trees,
        )
        result[name] = {
            "trees": trial.trees,
            "validation": ranking(trial.scores[order].astype(np.float64), validation),
            "test": ranking(score(booster, test.features).astype(np.float64), test),
        }
    return result


def main() -> None:
    """Prepare the warehouse, run the two starting points on every fold, print and save the table."""
    arguments = parse_options(__doc__, cards=5_000, days=150, maturity=30, folds=4, handbook=0, threads=1)
    began_load = os.getloadavg()
    land = (land_handbook_file if arguments.handbook else land_simulation)(arguments.cards, arguments.days)
    result: dict[str, list[dict[str, object]]] = {}
    print("shape test week  fit         validation: AP, card-day AP, CP@100   test: the same")
    with tempfile.TemporaryDirectory() as home, prepared_home(Path(home), arguments.maturity, land):
        with duckdb.connect(str(Settings.from_env().warehouse_path), read_only=True) as connection:
            data = build_training_data(connection, arguments.maturity)
        for shape in SHAPES:
            for config in fold_windows(np.unique(data.event_days), arguments.folds, shape):
                points = starting_points(window(data, config), arguments.threads)
                result.setdefault(shape, []).append({"test_from": str(config.test_from), **points})
                for name, measured in points.items():
                    values = [measured[part][key] for part in ("validation", "test") for key in METRICS]
                    print(f"{shape:<4}{config.test_from} {name:<11}" + " ".join(f"{v:.4f}" for v in values))
    write_study(
        "selection_rule_handbook" if arguments.handbook else "selection_rule", arguments, result, began_load
    )


if __name__ == "__main__":
    main()
