"""Benchmark and quality report: the training dataset and the XGBoost fit on about a million transactions.

    python -m bench.bench_training [--cards 5000 --days 150 --maturity 30]

Simulates history into a temporary platform home, runs the batch side (load, dbt, real-time backfill) and then
times `build_training_data` (the point-in-time join, on-demand features, split) and `fit` separately. Reports
the test-window metrics of the model and of the rules baseline (`fraud_platform.training.baseline`), and how
often the reason codes the scorer serves (XGBoost's approximate contributions) name the same features as exact
TreeSHAP would, on the test window's flagged rows (`reason_agreement`).
"""

import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import xgboost as xgb
from sklearn.metrics import average_precision_score, roc_auc_score

from bench.common import parse_options, write_result
from bench.warehouse import land_simulation, prepared_home
from fraud_platform.config import Settings
from fraud_platform.scoring.models import feature_contributions, strongest_reasons
from fraud_platform.training.baseline import rules_score
from fraud_platform.training.dataset import build_training_data
from fraud_platform.training.model import evaluate, fit, score


def reason_agreement(booster: xgb.Booster, flagged: np.ndarray) -> dict[str, object]:
    """The served reason codes (approximate contributions, `ServingModel.explain`) against exact TreeSHAP's
    on the same rows: shares of rows whose first reason, set of reasons and ordered reasons agree, the mean
    number of reasons both name, and each method's time per row on one XGBoost thread."""
    if not len(flagged):
        return {"flagged_rows": 0}
    named: dict[str, list[tuple[str, ...]]] = {}
    us_per_row: dict[str, float] = {}
    for method, approximate in (("approximate", True), ("exact", False)):
        began = time.perf_counter()
        contributions = feature_contributions(booster, flagged, threads=1, approximate=approximate)
        us_per_row[method] = round((time.perf_counter() - began) / len(flagged) * 1e6, 1)
        named[method] = [tuple(name for name, _ in row) for row in strongest_reasons(contributions)]
    pairs = list(zip(named["approximate"], named["exact"], strict=True))
    return {
        "flagged_rows": len(flagged),
        "first_reason_agrees": round(np.mean([a[:1] == e[:1] for a, e in pairs]), 4),
        "same_reasons": round(np.mean([set(a) == set(e) for a, e in pairs]), 4),
        "same_reasons_in_order": round(np.mean([a == e for a, e in pairs]), 4),
        "reasons_in_common": round(np.mean([len(set(a) & set(e)) for a, e in pairs]), 3),
        "us_per_row": us_per_row,
    }


def run(cards: int, days: int, maturity: int) -> dict[str, object]:
    """Prepare the warehouse, then time the dataset build and the fit; evaluate model and baseline."""
    with (
        tempfile.TemporaryDirectory() as home,
        prepared_home(Path(home), maturity, land_simulation(cards, days)) as data,
    ):
        settings = Settings.from_env()
        with duckdb.connect(str(settings.warehouse_path)) as connection:
            began = time.perf_counter()
            dataset = build_training_data(connection, maturity)
            dataset_seconds = time.perf_counter() - began
        began = time.perf_counter()
        trained = fit(dataset)
        fit_seconds = time.perf_counter() - began
    test = dataset.part("test")
    baseline = evaluate(rules_score(test.features), test, trained.thresholds)
    # Simulation only: the ground truth, which includes frauds not (yet) reported as chargebacks.
    truth = dict(
        zip(
            data.fraud_truth.column("transaction_id").to_pylist(),
            data.fraud_truth.column("is_fraud").to_pylist(),
            strict=True,
        )
    )
    model_scores = score(trained.booster, test.features)
    true_labels = np.array([truth[transaction] for transaction in test.transaction_ids], dtype=np.int8)
    against_truth = {
        name: {
            "roc_auc": float(roc_auc_score(true_labels, scores)),
            "average_precision": float(average_precision_score(true_labels, scores)),
        }
        for name, scores in (
            ("model", model_scores),
            ("baseline", rules_score(test.features)),
        )
    }
    return {
        "simulated_transactions": data.transactions.num_rows,
        "dataset_rows": len(dataset.labels),
        "dataset_seconds": round(dataset_seconds, 2),
        "dataset_rows_per_second": round(len(dataset.labels) / dataset_seconds),
        "fit_seconds": round(fit_seconds, 2),
        "trees": trained.best_iteration,
        "search_trials": len(trained.selection.trials),
        "chosen_params": trained.selection.params,
        "train_rows": int((dataset.split == "train").sum()),
        "test_window": dataset.window("test"),
        "thresholds": {"decline": trained.thresholds.decline, "review": trained.thresholds.review},
        "model_test": trained.test_metrics,
        "baseline_test": baseline,
        "test_true_frauds": int(true_labels.sum()),
        "test_frauds_labelled_genuine": int(((true_labels == 1) & (test.labels == 0)).sum()),
        "test_claims_on_genuine": int(((true_labels == 0) & (test.labels == 1)).sum()),
        "against_truth": against_truth,
        "reason_codes": reason_agreement(
            trained.booster, test.features[model_scores >= trained.thresholds.review]
        ),
    }


def main() -> None:
    """Parse the arguments, run, print and save the result."""
    arguments = parse_options(__doc__, cards=5_000, days=150, maturity=30)
    result = run(arguments.cards, arguments.days, arguments.maturity)
    for key, value in result.items():
        print(f"{key:<26}{value}")
    write_result("training", result)


if __name__ == "__main__":
    main()
