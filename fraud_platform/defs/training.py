"""Training: the point-in-time dataset, the XGBoost model in MLflow, champion/challenger, retraining.

dagster-mlflow offers only the legacy op-style `mlflow_tracking` resource (configured with a config schema,
one MLflow run per Dagster run) and the `end_mlflow_on_run_finished` hook. The assets here need a registry
client and runs of their own, so `MlflowResource` is a small ConfigurableResource over MLflow's client; each
MLflow run is tagged with the Dagster run id so the two UIs point at each other.
"""

from datetime import date
from pathlib import Path

import dagster as dg
from dagster_duckdb import DuckDBResource
from mlflow import MlflowClient
from sklearn.metrics import average_precision_score

from fraud_platform.config import Settings
from fraud_platform.defs.batch import LABELS_ASSET
from fraud_platform.features.vector import FEATURE_DEFINITION_VERSION, MODEL_FEATURES
from fraud_platform.training import registry
from fraud_platform.training.baseline import rules_score
from fraud_platform.training.dataset import SPLITS, SplitConfig, TrainingData, build_training_data
from fraud_platform.training.model import TrainingConfig, fit, score

GROUP = "training"
DATASET_TABLE = "training.dataset"
DATASET_ASSET = dg.AssetKey(["training", "dataset"])
MODEL_ASSET = dg.AssetKey(["training", "model"])
QUALITY_CHECK = "beats_rules_baseline"
CHALLENGE_CHECK = "challenger_vs_champion"
# Where `fraud-platform ui dagster` serves the instance: MLflow runs link back to their Dagster run.
DAGSTER_UI = "http://127.0.0.1:3000"


class MlflowResource(dg.ConfigurableResource):
    """The MLflow tracking store and model registry."""

    tracking_uri: str
    artifact_root: str

    def client(self) -> MlflowClient:
        """A registry client, with the experiment created on first use."""
        return registry.configure(self.tracking_uri, Path(self.artifact_root))


class TrainingSettings(dg.ConfigurableResource):
    """Label maturity (which labels are final), the retraining threshold, and the windows and search budget
    of runs started without run config (schedules and sensors): FRAUD_PLATFORM_TRAIN_WINDOW_DAYS and friends."""

    label_maturity_days: int
    retrain_min_new_labels: int
    train_window_days: int = 0
    test_days: int = 0
    validation_days: int = 0
    gap_days: int = 7
    search_trials: int = 24
    search_seconds: int = 300
    train_threads: int = 1
    min_test_average_precision: float = 0.0


class TrainingWindows(dg.Config):
    """The user's own windows (ISO dates, inclusive), overriding the configured shares when given: train on
    `train_from` (empty: the oldest labelled day) .. `train_to`, test on `test_from` .. `test_to`; the
    newest `validation_days` of the training window validate the search (0: the configured default)."""

    train_from: str = ""
    train_to: str = ""
    test_from: str = ""
    test_to: str = ""
    validation_days: int = 0

    def split(self, settings: TrainingSettings) -> SplitConfig:
        """The split: these dates, or the configured windows where none is given."""
        validation_days = self.validation_days or settings.validation_days or None
        return SplitConfig(
            gap_days=settings.gap_days,
            window_days=settings.train_window_days or None,
            test_days=settings.test_days or None,
            validation_days=validation_days,
            **{
                name: _day(name, getattr(self, name))
                for name in ("train_from", "train_to", "test_from", "test_to")
            },
        )


def _day(name: str, text: str) -> date | None:
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise dg.Failure(f"{name}={text!r}: not a date (YYYY-MM-DD)") from None


class ModelSearch(dg.Config):
    """The fit's search budget for this run (0: the configured FRAUD_PLATFORM_SEARCH_TRIALS / _SECONDS)."""

    search_trials: int = 0
    search_seconds: int = 0


def build_training_resources(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    """Resources of the training group from the platform's configuration."""
    return {
        "mlflow": MlflowResource(
            tracking_uri=settings.mlflow_tracking_uri, artifact_root=str(settings.mlflow_artifact_root)
        ),
        "training_settings": TrainingSettings(
            label_maturity_days=settings.label_maturity_days,
            retrain_min_new_labels=settings.retrain_min_new_labels,
            train_window_days=settings.train_window_days,
            test_days=settings.test_days,
            validation_days=settings.validation_days,
            gap_days=settings.gap_days,
            search_trials=settings.search_trials,
            search_seconds=settings.search_seconds,
            train_threads=settings.train_threads,
        ),
    }


def _split_metadata(
    data: TrainingData, split: SplitConfig, maturity_days: int
) -> dict[str, dg.MetadataValue]:
    metadata: dict[str, dg.MetadataValue] = {
        "rows": dg.MetadataValue.int(len(data.labels)),
        "labels_as_of": dg.MetadataValue.text(data.labels_as_of),
        "maturity_cutoff": dg.MetadataValue.text(data.maturity_cutoff),
        "label_maturity_days": dg.MetadataValue.int(maturity_days),
        "windows_chosen_by": dg.MetadataValue.text(
            "dates" if split.by_date else "shares of the labelled days"
        ),
    }
    for name in SPLITS:
        part = data.part(name)
        first, last = data.window(name)
        metadata[f"{name}_window"] = dg.MetadataValue.text(f"{first} .. {last}")
        metadata[f"{name}_rows"] = dg.MetadataValue.int(len(part.labels))
        metadata[f"{name}_frauds"] = dg.MetadataValue.int(int(part.labels.sum()))
    return metadata


@dg.asset(
    key=DATASET_ASSET,
    group_name=GROUP,
    kinds={"python", "duckdb"},
    deps=[
        LABELS_ASSET,
        dg.AssetKey(["features", "card_realtime"]),
        dg.AssetKey(["card_daily_features"]),
        dg.AssetKey(["merchant_daily_features"]),
    ],
    description=(
        "Mature labelled transactions joined point in time with backfilled real-time features, the previous "
        "day's card and merchant snapshots and on-demand features; split train | gap | validation | test."
    ),
)
def training_dataset(
    config: TrainingWindows, warehouse: DuckDBResource, training_settings: TrainingSettings
) -> dg.MaterializeResult:
    """Build the dataset for the chosen windows and store it in the warehouse as training.dataset."""
    split = config.split(training_settings)
    with warehouse.get_connection() as connection:
        data = build_training_data(connection, training_settings.label_maturity_days, split)
        dataset_rows = data.to_arrow()  # noqa: F841 - read by DuckDB's replacement scan
        connection.execute("CREATE SCHEMA IF NOT EXISTS training")
        connection.execute(f"CREATE OR REPLACE TABLE {DATASET_TABLE} AS SELECT * FROM dataset_rows")
    return dg.MaterializeResult(metadata=_split_metadata(data, split, training_settings.label_maturity_days))


def _window_params(data: TrainingData, maturity_days: int) -> dict[str, str]:
    """The windows, their row counts and the label maturity, as the MLflow run records them."""
    params = {"label_maturity_days": str(maturity_days), "labels_as_of": data.labels_as_of}
    for name in SPLITS:
        first, last = data.window(name)
        params[f"{name}_window"] = f"{first} .. {last}"
        params[f"{name}_rows"] = str(int((data.split == name).sum()))
    return params


def _labels_known(instance: dg.DagsterInstance) -> int:
    event = instance.get_latest_materialization_event(LABELS_ASSET)
    value = (
        event.asset_materialization.metadata.get("labels_known")
        if event and event.asset_materialization
        else None
    )
    return int(value.value) if value is not None else 0


@dg.asset(
    key=MODEL_ASSET,
    group_name=GROUP,
    kinds={"xgboost", "mlflow"},
    deps=[DATASET_ASSET],
    description=(
        "XGBoost fraud model registered in MLflow with its contract; becomes champion only if it beats the "
        "current champion on the same test window."
    ),
    check_specs=[
        dg.AssetCheckSpec(
            QUALITY_CHECK,
            asset=MODEL_ASSET,
            description="The new version's test average precision beats the rules baseline's on the same test "
            "window and reaches the floor (min_test_average_precision of the training_settings resource).",
        ),
        dg.AssetCheckSpec(
            CHALLENGE_CHECK,
            asset=MODEL_ASSET,
            description="The new version beats the champion on the same test window (or there is none): a "
            "warning when the champion stays.",
        ),
    ],
)
def fraud_model(
    context: dg.AssetExecutionContext,
    config: ModelSearch,
    warehouse: DuckDBResource,
    mlflow: MlflowResource,
    training_settings: TrainingSettings,
) -> dg.MaterializeResult:
    """Search and fit, register with the windows it was trained and tested on, and challenge the champion."""
    dataset_event = context.instance.get_latest_materialization_event(DATASET_ASSET)
    dataset_metadata = dataset_event.asset_materialization.metadata if dataset_event else {}
    with warehouse.get_connection() as connection:
        table = connection.sql(
            f"SELECT * FROM {DATASET_TABLE} ORDER BY event_date, transaction_id"
        ).to_arrow_table()
    data = TrainingData.from_arrow(
        table,
        labels_as_of=getattr(dataset_metadata.get("labels_as_of"), "value", ""),
        maturity_cutoff=getattr(dataset_metadata.get("maturity_cutoff"), "value", ""),
    )
    trained = fit(
        data,
        TrainingConfig(
            search_trials=config.search_trials or training_settings.search_trials,
            search_seconds=config.search_seconds or training_settings.search_seconds,
            threads=training_settings.train_threads,
        ),
        progress=lambda trial: context.log.info(
            "search trial %d: pooled validation AP %.4f with %d trees, %s (%.1f s)",
            trial.number,
            trial.average_precision,
            trial.trees,
            trial.params,
            trial.seconds,
        ),
    )
    tested_from, tested_to = data.window("test")
    contract = registry.ModelContract(
        features=MODEL_FEATURES,
        feature_definition_version=FEATURE_DEFINITION_VERSION,
        decline_threshold=trained.thresholds.decline,
        review_threshold=trained.thresholds.review,
        validation_metrics=trained.validation_metrics,
        labels_known=_labels_known(context.instance),
        trained_until=data.window("validation")[1],
        tested_from=tested_from.strip("-"),  # '-': no test rows
        tested_to=tested_to.strip("-"),
    )
    test = data.part("test")
    client = mlflow.client()
    registered = registry.register(
        trained,
        contract,
        score(trained.booster, test.features),
        test.labels,
        tags={
            "dagster_run_id": context.run.run_id,
            "dagster_run_url": f"{DAGSTER_UI}/runs/{context.run.run_id}",
        },
        windows=_window_params(data, training_settings.label_maturity_days),
        data=data,
        dataset_source=f"{warehouse.database}#{DATASET_TABLE}",
    )
    version = str(registered.version)
    challenge = registry.challenge_champion(client, version, trained.test_metrics["average_precision"], test)
    context.log.info("model version %s: %s", version, challenge.reason)
    run = client.get_run(registered.run_id)
    return dg.MaterializeResult(
        check_results=[
            _quality_check(
                trained.test_metrics["average_precision"],
                float(average_precision_score(test.labels, rules_score(test.features))),
                training_settings.min_test_average_precision,
            ),
            dg.AssetCheckResult(
                check_name=CHALLENGE_CHECK,
                passed=challenge.promoted,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"reason": dg.MetadataValue.text(f"version {version}: {challenge.reason}")},
            ),
        ],
        metadata={
            "mlflow_run": dg.MetadataValue.url(
                registry.run_url(mlflow.tracking_uri, run.info.experiment_id, registered.run_id)
            ),
            "mlflow_model_version": dg.MetadataValue.url(
                registry.model_version_url(mlflow.tracking_uri, version)
            ),
            "model_version": dg.MetadataValue.text(version),
            "promoted_to_champion": dg.MetadataValue.bool(challenge.promoted),
            "challenge": dg.MetadataValue.text(challenge.reason),
            "champion_version_before": dg.MetadataValue.text(challenge.champion_version or "-"),
            "champion_test_average_precision": dg.MetadataValue.float(
                challenge.champion_average_precision
                if challenge.champion_average_precision is not None
                else float("nan")
            ),
            "decline_threshold": dg.MetadataValue.float(trained.thresholds.decline),
            "review_threshold": dg.MetadataValue.float(trained.thresholds.review),
            "trees": dg.MetadataValue.int(trained.best_iteration),
            "chosen_params": dg.MetadataValue.json(
                {**trained.selection.params, "trees": trained.selection.trees}
            ),
            "search": dg.MetadataValue.text(
                f"{len(trained.selection.trials)} trial(s) in {trained.selection.seconds:.0f} s, best pooled "
                f"validation AP {trained.selection.average_precision:.4f} over "
                f"{trained.params['selection_folds']} prequential fold(s)"
            ),
            "labels_known": dg.MetadataValue.int(contract.labels_known),
            **{f"test_{key}": dg.MetadataValue.float(value) for key, value in trained.test_metrics.items()},
            "mlflow_run_id": dg.MetadataValue.text(registered.run_id),
        },
    )


def _quality_check(model_ap: float, rules_ap: float, floor: float) -> dg.AssetCheckResult:
    """ERROR unless the model's test average precision beats the rules baseline's and reaches the floor."""
    passed = model_ap > rules_ap and model_ap >= floor
    return dg.AssetCheckResult(
        check_name=QUALITY_CHECK,
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "test_average_precision": dg.MetadataValue.float(model_ap),
            "rules_baseline_average_precision": dg.MetadataValue.float(rules_ap),
            "floor": dg.MetadataValue.float(floor),
            "reason": dg.MetadataValue.text(
                f"test AP {model_ap:.4f} vs rules baseline {rules_ap:.4f} (floor {floor:.4f}): "
                + ("better" if passed else "not good enough to serve")
            ),
        },
    )


training_job = dg.define_asset_job(
    "train_model",
    selection=dg.AssetSelection.assets(DATASET_ASSET, MODEL_ASSET),
    description="Build the training dataset, fit and register a model, challenge the champion.",
)

weekly_retrain = dg.ScheduleDefinition(
    name="weekly_retrain",
    job=training_job,
    cron_schedule="0 3 * * 1",
    execution_timezone="UTC",
    description="Backstop: retrain every Monday at 03:00 UTC even without enough new labels.",
)


def new_labels_since_champion(labels_known: int, client: MlflowClient) -> tuple[int, str]:
    """How many labels became known since the champion was trained, and the champion version ('-' if none)."""
    champion = registry.champion_version(client)
    if champion is None:
        return labels_known, "-"
    return labels_known - int(champion.tags.get("labels_known", "0")), str(champion.version)


@dg.sensor(
    job=training_job, minimum_interval_seconds=60, description="Retrain when enough new labels matured."
)
def retrain_sensor(
    context: dg.SensorEvaluationContext, mlflow: MlflowResource, training_settings: TrainingSettings
) -> dg.SensorResult:
    """Request a training run when labels known since the champion reach the configured threshold."""
    labels_known = _labels_known(context.instance)
    new_labels, champion = new_labels_since_champion(labels_known, mlflow.client())
    if new_labels < training_settings.retrain_min_new_labels:
        return dg.SensorResult(
            skip_reason=f"{new_labels} new label(s) since champion {champion}; "
            f"retraining at {training_settings.retrain_min_new_labels}"
        )
    reason = f"{new_labels} new labels since champion {champion}"
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(run_key=f"labels-{labels_known}", tags={"fraud_platform/retrain_reason": reason})
        ]
    )
