"""Detection quality by a prequential protocol: the platform's fit against a textbook XGBoost, same features.

    python -m bench.bench_quality [--cards 5000 --days 150 --maturity 30 --folds 4 --trials 12 --seconds 600]
    python -m bench.bench_quality --handbook 1 [--cards 5000 --days 150 ...]
    python -m bench.bench_quality --windows 7   # the 7-day training windows only (0: all history)

Lands history into a temporary platform home and runs the batch side: the platform's simulator, or with
`--handbook 1` a foreign shape (`fraud_platform.lib.foreign_data`: the Fraud Detection Handbook's generator as
a CSV with integer ids, naive timestamps, no coordinates or channel, other fraud patterns) imported like a
user's file. Then it builds the point-in-time
dataset once and evaluates weekly test folds over the newest mature labelled weeks: each test week is
preceded by a 7-day gap (the label delay: at deployment the newest labels are not known yet) and a training
window of either the 7 days before the gap or all history before it. On every fold both fits see exactly the
same rows and features:

* platform: `fraud_platform.training.model.fit` as shipped (search over prequential folds, class weighting
  chosen on validation, trees counted on the pooled folds), with `--trials` / `--seconds` as its budget;
* textbook: XGBoost with depth 3, 100 trees, learning rate 0.1, no class reweighting, on the same days.

`--threads` is XGBoost's thread count for both fits (1 by default: on a shared, busy 2-core machine more
OpenMP threads made fits several times slower; the models are the same). It writes per fold and as mean ± std: ROC AUC, average precision and card precision@100 by the standard rule
(`fraud_platform.training.evaluation`), the platform's search time, and the mean daily difference in card
precision@100 between the fits with its 95 % bootstrap interval over the test days (how many cards a day the
difference is worth), to bench/results/quality.json.
"""

import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import duckdb
import numpy as np
import xgboost as xgb
from scipy.stats import bootstrap

from bench.common import parse_options, write_study
from bench.warehouse import land_handbook_file, land_simulation, prepared_home
from fraud_platform.config import Settings
from fraud_platform.training.dataset import SplitConfig, TrainingData, assign_splits, build_training_data
from fraud_platform.training.evaluation import daily_card_precision, ranking_metrics
from fraud_platform.training.model import TrainingConfig, fit, score, scored
from fraud_platform.training.search import matrix

TEXTBOOK = {"objective": "binary:logistic", "tree_method": "hist", "max_depth": 3, "eta": 0.1, "seed": 7}
TEXTBOOK_TREES = 100
HEADLINE = ("roc_auc", "average_precision", "card_precision_at_100")
WEEK = np.timedelta64(7, "D")
SHAPES = ("7d", "all")  # training windows: the 7 days before the gap, all history before it
DAY = np.timedelta64(1, "D")


def fold_windows(days: np.ndarray, folds: int, shape: str) -> list[SplitConfig]:
    """The weekly test folds over the newest labelled days, oldest first, with a 7-day gap before each and a
    7-day or all-history training window."""
    windows = []
    for back in range(folds - 1, -1, -1):
        test_to = days.max() - back * WEEK
        test_from = test_to - WEEK + DAY
        train_to = test_from - WEEK - DAY
        train_from = train_to - WEEK + DAY if shape == "7d" else None
        windows.append(
            SplitConfig(
                train_from=train_from.item() if train_from is not None else None,
                train_to=train_to.item(),
                test_from=test_from.item(),
                test_to=test_to.item(),
            )
        )
    return windows


def window(data: TrainingData, config: SplitConfig) -> TrainingData:
    """The dataset's rows inside one fold's windows, split by its dates (rows outside are left out)."""
    low = np.datetime64(config.train_from) if config.train_from else data.event_days.min()
    inside = (data.event_days >= low) & (data.event_days <= np.datetime64(config.test_to))
    rows = data.rows(inside)
    return replace(rows, split=assign_splits(rows.event_days, config))


def textbook_scores(data: TrainingData, threads: int) -> np.ndarray:
    """The textbook fit on the fold's training window (train + validation days), scores on its test days."""
    development, test = data.part("train", "validation"), data.part("test")
    booster = xgb.train(
        {**TEXTBOOK, "nthread": threads}, matrix(development.features, development.labels), TEXTBOOK_TREES
    )
    return score(booster, test.features)


def run_folds(
    data: TrainingData,
    folds: int,
    trials: int,
    seconds: float,
    threads: int,
    shapes: tuple[str, ...] = SHAPES,
) -> dict[str, object]:
    """Both fits on every fold of each window shape; per-fold metrics and their mean ± std."""
    result: dict[str, object] = {}
    for shape in shapes:
        rows = []
        daily_differences = []  # per test day: platform's card precision@100 - textbook's
        for config in fold_windows(np.unique(data.event_days), folds, shape):
            fold = window(data, config)
            test = fold.part("test")
            began = time.perf_counter()
            trained = fit(fold, TrainingConfig(search_trials=trials, search_seconds=seconds, threads=threads))
            fit_seconds = time.perf_counter() - began
            platform_scored = scored(score(trained.booster, test.features), test)
            textbook_scored = scored(textbook_scores(fold, threads), test)
            platform, textbook = ranking_metrics(platform_scored), ranking_metrics(textbook_scored)
            daily_differences.append(
                daily_card_precision(platform_scored) - daily_card_precision(textbook_scored)
            )
            rows.append(
                {
                    "train": f"{config.train_from or fold.event_days.min()} .. {config.train_to}",
                    "test": f"{config.test_from} .. {config.test_to}",
                    "train_rows": int(np.isin(fold.split, ("train", "validation")).sum()),
                    "test_rows": len(test.labels),
                    "test_frauds": int(test.labels.sum()),
                    "platform": {key: platform[key] for key in HEADLINE},
                    "textbook": {key: textbook[key] for key in HEADLINE},
                    "platform_fit_seconds": round(fit_seconds, 1),
                    "platform_trials": len(trained.selection.trials),
                    "platform_choice": {**trained.selection.params, "trees": trained.selection.trees},
                }
            )
            print(shape, rows[-1])
        summary = {
            name: {
                key: {
                    "mean": float(np.nanmean([row[name][key] for row in rows])),
                    "std": float(np.nanstd([row[name][key] for row in rows])),
                }
                for key in HEADLINE
            }
            for name in ("platform", "textbook")
        }
        result[shape] = {
            "folds": rows,
            "summary": summary,
            "card_precision_difference": difference_interval(np.concatenate(daily_differences)),
        }
    return result


def difference_interval(daily: np.ndarray) -> dict[str, float]:
    """The mean daily difference in card precision@100 (platform - textbook) with its 95 % bootstrap
    interval over the test days (seeded), and the days each fit was ahead."""
    interval = bootstrap((daily,), np.mean, confidence_level=0.95, random_state=7, method="percentile")
    return {
        "mean": float(daily.mean()),
        "low": float(interval.confidence_interval.low),
        "high": float(interval.confidence_interval.high),
        "days": len(daily),
        "days_platform_ahead": int((daily > 0).sum()),
        "days_textbook_ahead": int((daily < 0).sum()),
    }


def main() -> None:
    """Prepare the warehouse, run the protocol, print and save the result."""
    arguments = parse_options(
        __doc__,
        cards=5_000,
        days=150,
        maturity=30,
        folds=4,
        trials=12,
        seconds=600,
        handbook=0,
        threads=1,
        windows=[7, 0],
    )
    shapes = tuple("7d" if days == 7 else "all" for days in arguments.windows)
    began_load = os.getloadavg()
    land = (land_handbook_file if arguments.handbook else land_simulation)(arguments.cards, arguments.days)
    with tempfile.TemporaryDirectory() as home, prepared_home(Path(home), arguments.maturity, land):
        with duckdb.connect(str(Settings.from_env().warehouse_path), read_only=True) as connection:
            data = build_training_data(connection, arguments.maturity)
        result = run_folds(
            data, arguments.folds, arguments.trials, arguments.seconds, arguments.threads, shapes
        )
    for shape in shapes:
        summary = result[shape]["summary"]  # type: ignore[index]
        for key in HEADLINE:
            print(
                f"{shape:<4}{key:<24}platform {summary['platform'][key]['mean']:.3f} ± "
                f"{summary['platform'][key]['std']:.3f}   textbook {summary['textbook'][key]['mean']:.3f} ± "
                f"{summary['textbook'][key]['std']:.3f}"
            )
        difference = result[shape]["card_precision_difference"]  # type: ignore[index]
        print(
            f"{shape:<4}card precision@100 platform - textbook {difference['mean']:+.4f} "
            f"(95% interval {difference['low']:+.4f} .. {difference['high']:+.4f} over {difference['days']} days; "
            f"ahead on {difference['days_platform_ahead']}, behind on {difference['days_textbook_ahead']})"
        )
    name = "quality_handbook" if arguments.handbook else "quality"
    write_study(
        name + ("" if shapes == SHAPES else "".join(f"_{shape}" for shape in shapes)),
        arguments,
        result,
        began_load,
    )


if __name__ == "__main__":
    main()
