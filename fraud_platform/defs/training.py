"""Training: the point-in-time dataset, the XGBoost model in MLflow, champion/challenger, retraining.

dagster-mlflow offers only the legacy op-style `mlflow_tracking` resource (configured with a config schema,
one MLflow run per Dagster run) and the `end_mlflow_on_run_finished` hook. The assets here need a registry
client and runs of their own, so `MlflowResource` is a small ConfigurableResource over MLflow's client; each
MLflow run is tagged with the Dagster run id so the two UIs point at each other.
"""

from pathlib import Path

import dagster as dg
from dagster_duckdb import DuckDBResource
from mlflow import MlflowClient

from fraud_platform.config import Settings
from fraud_platform.defs.batch import LABELS_ASSET
from fraud_platform.features.vector import FEATURE_DEFINITION_VERSION, MODEL_FEATURES
from fraud_platform.training import registry
from fraud_platform.training.dataset import SplitConfig, TrainingData, build_training_data
from fraud_platform.training.model import fit, score

GROUP = "training"
DATASET_TABLE = "training.dataset"
DATASET_ASSET = dg.AssetKey(["training", "dataset"])
MODEL_ASSET = dg.AssetKey(["training", "model"])


class MlflowResource(dg.ConfigurableResource):
    """The MLflow tracking store and model registry."""

    tracking_uri: str
    artifact_root: str

    def client(self) -> MlflowClient:
        """A registry client, with the experiment created on first use."""
        return registry.configure(self.tracking_uri, Path(self.artifact_root))


class TrainingSettings(dg.ConfigurableResource):
    """Label maturity (which labels are final) and the retraining threshold."""

    label_maturity_days: int
    retrain_min_new_labels: int


def build_training_resources(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    """Resources of the training group from the platform's configuration."""
    return {
        "mlflow": MlflowResource(
            tracking_uri=settings.mlflow_tracking_uri, artifact_root=str(settings.mlflow_artifact_root)
        ),
        "training_settings": TrainingSettings(
            label_maturity_days=settings.label_maturity_days,
            retrain_min_new_labels=settings.retrain_min_new_labels,
        ),
    }


def _split_metadata(data: TrainingData) -> dict[str, dg.MetadataValue]:
    metadata: dict[str, dg.MetadataValue] = {
        "rows": dg.MetadataValue.int(len(data.labels)),
        "labels_as_of": dg.MetadataValue.text(data.labels_as_of),
        "maturity_cutoff": dg.MetadataValue.text(data.maturity_cutoff),
    }
    for name in ("train", "validation", "test"):
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
def training_dataset(warehouse: DuckDBResource, training_settings: TrainingSettings) -> dg.MaterializeResult:
    """Build the dataset and store it in the warehouse as training.dataset."""
    with warehouse.get_connection() as connection:
        data = build_training_data(connection, training_settings.label_maturity_days, SplitConfig())
        dataset_rows = data.to_arrow()  # noqa: F841 - read by DuckDB's replacement scan
        connection.execute("CREATE SCHEMA IF NOT EXISTS training")
        connection.execute(f"CREATE OR REPLACE TABLE {DATASET_TABLE} AS SELECT * FROM dataset_rows")
    return dg.MaterializeResult(metadata=_split_metadata(data))


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
)
def fraud_model(
    context: dg.AssetExecutionContext, warehouse: DuckDBResource, mlflow: MlflowResource
) -> dg.MaterializeResult:
    """Fit, register, and challenge the champion."""
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
    trained = fit(data)
    contract = registry.ModelContract(
        features=MODEL_FEATURES,
        feature_definition_version=FEATURE_DEFINITION_VERSION,
        decline_threshold=trained.thresholds.decline,
        review_threshold=trained.thresholds.review,
        validation_metrics=trained.validation_metrics,
        labels_known=_labels_known(context.instance),
        trained_until=data.window("train")[1],
    )
    test = data.part("test")
    client = mlflow.client()
    registered = registry.register(
        trained,
        contract,
        score(trained.booster, test.features),
        test.labels,
        tags={"dagster_run_id": context.run.run_id},
    )
    version = str(registered.version)
    challenge = registry.challenge_champion(client, version, trained.test_metrics["average_precision"], test)
    context.log.info("model version %s: %s", version, challenge.reason)
    return dg.MaterializeResult(
        metadata={
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
            "best_iteration": dg.MetadataValue.int(trained.best_iteration),
            "labels_known": dg.MetadataValue.int(contract.labels_known),
            **{f"test_{key}": dg.MetadataValue.float(value) for key, value in trained.test_metrics.items()},
            "mlflow_run_id": dg.MetadataValue.text(registered.run_id),
        }
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
