"""Monitoring figures in MLflow: one run per (day, model version) in the experiment "fraud-monitoring" (a
classic-ML experiment), tagged with the model version, so the registry's versions and their realised
behaviour sit side by side."""

import math
import time
from collections.abc import Mapping
from pathlib import Path

from matplotlib.figure import Figure
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

from fraud_platform.training.registry import MODEL_NAME, mark_classic_ml

EXPERIMENT = "fraud-monitoring"
VALIDATION_PREFIX = "validation_"
_NOT_A_VERSION = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


def validation_metrics(client: MlflowClient, version: str) -> dict[str, float]:
    """The validation metrics a registered version was trained with ({} for a version the registry does not
    have, e.g. the rules baseline's). A registry that cannot be reached raises: an outage is not a pass."""
    try:
        run_id = client.get_model_version(MODEL_NAME, version).run_id
    except MlflowException as error:
        if error.error_code in _NOT_A_VERSION:
            return {}
        raise
    metrics = client.get_run(run_id).data.metrics
    return {
        key.removeprefix(VALIDATION_PREFIX): value
        for key, value in metrics.items()
        if key.startswith(VALIDATION_PREFIX)
    }


def experiment_id(client: MlflowClient, artifact_root: Path | None) -> str:
    """The monitoring experiment, created on first use with its artefacts under `artifact_root` (None: a
    tracking server's own artifact store, as `registry.configure` does)."""
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is not None:
        mark_classic_ml(client, experiment.experiment_id, experiment.tags)
        return experiment.experiment_id
    if artifact_root is None:
        created = client.create_experiment(EXPERIMENT)
    else:
        location = (artifact_root / "monitoring").resolve()
        location.mkdir(parents=True, exist_ok=True)
        created = client.create_experiment(EXPERIMENT, artifact_location=location.as_uri())
    mark_classic_ml(client, created, {})
    return created


def log_day(
    client: MlflowClient,
    artifact_root: Path | None,
    day: str,
    model_version: str,
    metrics: Mapping[str, float],
    figures: Mapping[str, Figure],
    tags: Mapping[str, str],
) -> str:
    """Replace the (day, model version) run with a new one holding `metrics` (non-finite values are left
    out) and `figures` (PNG artefacts); return its run id."""
    experiment = experiment_id(client, artifact_root)
    previous = client.search_runs(
        [experiment], filter_string=f"tags.day = '{day}' AND tags.model_version = '{model_version}'"
    )
    for run in previous:
        client.delete_run(run.info.run_id)
    run = client.create_run(
        experiment,
        run_name=f"{day} model {model_version}",
        tags={**tags, "day": day, "model_version": model_version},
    )
    run_id = run.info.run_id
    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[
            Metric(key, float(value), now, 0)
            for key, value in metrics.items()
            if value is not None and math.isfinite(value)
        ],
    )
    for name, figure in figures.items():
        client.log_figure(run_id, figure, name)
    client.set_terminated(run_id)
    return run_id
