"""The model registry in MLflow: register a version with its contract, promote a champion, load one natively.

A version carries its contract (feature names and order, feature-definition version, thresholds, validation
metrics, the labels it was trained with) as `contract.json` and as version tags. The booster is stored in
XGBoost's native JSON format and loaded with `mlflow.xgboost.load_model`: never a pickle.
"""

import json
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import xgboost as xgb
from matplotlib.figure import Figure
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from sklearn.metrics import precision_recall_curve

from fraud_platform.features.vector import FEATURE_DEFINITION_VERSION, MODEL_FEATURES
from fraud_platform.training.dataset import TrainingData
from fraud_platform.training.evaluation import ranking_metrics
from fraud_platform.training.model import Thresholds, TrainedModel, score, scored

MODEL_NAME = "fraud-xgboost"
CHAMPION = "champion"
EXPERIMENT = "fraud-platform"
CONTRACT_FILE = "contract.json"
XGBOOST_REQUIREMENT = f"xgboost-cpu=={xgb.__version__}"
# MLflow 3 opens an experiment without this tag in its GenAI view; classic ML is "custom_model_development".
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
CLASSIC_ML = "custom_model_development"
# Where `fraud-platform ui mlflow` serves a local store (a tracking server is its own UI).
LOCAL_UI = "http://127.0.0.1:5000"
INPUT_EXAMPLE_ROWS = 5
DATASET_NAME = "training.dataset"  # the warehouse table the datasets are read from


class ContractError(ValueError):
    """A model's contract asks for features this code cannot produce."""


class RegistryError(LookupError):
    """The registry has no such model version; the message names what there is."""


@dataclass(frozen=True)
class ModelContract:
    """What a registered model needs and promises."""

    features: tuple[str, ...]
    feature_definition_version: str
    decline_threshold: float
    review_threshold: float
    validation_metrics: dict[str, float] = field(default_factory=dict)
    labels_known: int = 0
    trained_until: str = ""
    tested_from: str = ""  # the test window its metrics were measured on: monitoring's drift reference
    tested_to: str = ""

    @property
    def thresholds(self) -> Thresholds:
        """The decision thresholds."""
        return Thresholds(decline=self.decline_threshold, review=self.review_threshold)

    def check_servable(self) -> None:
        """Raise ContractError unless this code produces exactly the features the model expects."""
        if self.feature_definition_version != FEATURE_DEFINITION_VERSION:
            raise ContractError(
                f"model needs feature definitions {self.feature_definition_version!r}, "
                f"this code serves {FEATURE_DEFINITION_VERSION!r}"
            )
        if tuple(self.features) != MODEL_FEATURES:
            missing = sorted(set(self.features) - set(MODEL_FEATURES))
            raise ContractError(
                f"model features differ from the served ones (missing here: {missing or 'none'}; "
                "or a different order)"
            )


@dataclass(frozen=True)
class LoadedModel:
    """A registered booster with its contract."""

    version: str
    booster: xgb.Booster
    contract: ModelContract


def is_tracking_server(tracking_uri: str) -> bool:
    """True for an MLflow tracking server (http, https, databricks), which keeps artefacts in its own store."""
    return tracking_uri.startswith(("http://", "https://", "databricks"))


def configure(tracking_uri: str, artifact_root: Path) -> MlflowClient:
    """Point MLflow at the store and make sure the experiment exists.

    With a local store (sqlite, file) artefacts go under `artifact_root`; a tracking server (http, https,
    databricks) keeps them where the server is configured to (its artifact store), so none is given.
    """
    mlflow.set_tracking_uri(tracking_uri)
    if mlflow.get_experiment_by_name(EXPERIMENT) is None:
        if is_tracking_server(tracking_uri):
            mlflow.create_experiment(EXPERIMENT)
        else:
            artifact_root.mkdir(parents=True, exist_ok=True)
            mlflow.create_experiment(EXPERIMENT, artifact_location=artifact_root.resolve().as_uri())
    experiment = mlflow.set_experiment(EXPERIMENT)
    client = MlflowClient(tracking_uri)
    mark_classic_ml(client, experiment.experiment_id, experiment.tags)
    return client


def mark_classic_ml(client: MlflowClient, experiment_id: str, tags: dict[str, str]) -> None:
    """Tag the experiment as classic model development (MLflow's UI shows runs and models, not GenAI traces)."""
    if tags.get(EXPERIMENT_KIND_TAG) != CLASSIC_ML:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, CLASSIC_ML)


def ui_address(tracking_uri: str) -> str:
    """The MLflow UI's address for this store: the tracking server itself, or `fraud-platform ui mlflow`'s."""
    return tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else LOCAL_UI


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """The page of one run on the MLflow UI."""
    return f"{ui_address(tracking_uri)}/#/experiments/{experiment_id}/runs/{run_id}"


def model_version_url(tracking_uri: str, version: str) -> str:
    """The page of one registered version on the MLflow UI (signature, input example, aliases, tags)."""
    return f"{ui_address(tracking_uri)}/#/models/{MODEL_NAME}/versions/{version}"


def _pr_curve_figure(scores: np.ndarray, labels: np.ndarray) -> Figure:
    precision, recall, _ = precision_recall_curve(labels, scores)
    figure = Figure(figsize=(5, 4))
    axes = figure.add_subplot()
    axes.plot(recall, precision)
    axes.set(xlabel="recall", ylabel="precision", title="Precision-recall (test window)")
    return figure


def _importance_figure(booster: xgb.Booster) -> Figure:
    gains = booster.get_score(importance_type="gain")
    top = sorted(gains.items(), key=lambda item: item[1])[-20:]
    figure = Figure(figsize=(6, 6))
    axes = figure.add_subplot()
    axes.barh([name for name, _ in top], [value for _, value in top])
    axes.set(xlabel="gain", title="Feature importance (top 20)")
    figure.tight_layout()
    return figure


def register(
    trained: TrainedModel,
    contract: ModelContract,
    test_scores: np.ndarray,
    test_labels: np.ndarray,
    tags: dict[str, str],
    windows: dict[str, str] | None = None,
    data: TrainingData | None = None,
    dataset_source: str = "",
) -> ModelVersion:
    """Log parameters (the chosen ones and the windows), metrics, the search's trials, contract and plots to a
    new MLflow run and register the booster with its signature and an input example.

    With `data`, its train and test parts are logged as the run's datasets (`mlflow.log_input`, named after
    the warehouse table, sourced at `dataset_source`) and the run is named `model-v<version>-train-<first>-<last>`.
    """
    window = data.window("train") if data is not None else None
    run_name = f"train-{window[0]}-{window[1]}" if window else None
    with mlflow.start_run(run_name=run_name, tags=tags) as run:
        mlflow.log_params({**trained.params, **(windows or {})})
        _log_search(trained)
        mlflow.log_metrics({f"validation_{key}": value for key, value in trained.validation_metrics.items()})
        mlflow.log_metrics({f"test_{key}": value for key, value in trained.test_metrics.items()})
        mlflow.log_dict(asdict(contract), CONTRACT_FILE)
        mlflow.log_text("\n".join(contract.features), "features.txt")
        for name, figure in (
            ("pr_curve.png", _pr_curve_figure(test_scores, test_labels)),
            ("feature_importance.png", _importance_figure(trained.booster)),
        ):
            mlflow.log_figure(figure, name)
        if data is not None:
            for part, context in (("train", "training"), ("test", "testing")):
                _log_dataset(data.part(part), dataset_source, context)
        example = pd.DataFrame(
            (data.part("test").features if data is not None else np.empty((0, len(contract.features))))[
                :INPUT_EXAMPLE_ROWS
            ],
            columns=list(contract.features),
        )
        info = mlflow.xgboost.log_model(
            trained.booster,
            name="model",
            model_format="json",
            pip_requirements=[XGBOOST_REQUIREMENT],
            signature=infer_signature(example, test_scores[: len(example)].astype(np.float32)),
            input_example=example if len(example) else None,
            registered_model_name=MODEL_NAME,
            await_registration_for=0,
        )
    client = MlflowClient()
    version = client.get_model_version(MODEL_NAME, str(info.registered_model_version))
    if window:
        client.update_run(run.info.run_id, name=f"model-v{version.version}-{run_name}")
    for key, value in _contract_tags(contract).items():
        client.set_model_version_tag(MODEL_NAME, version.version, key, value)
    client.set_model_version_tag(MODEL_NAME, version.version, "run_id", run.info.run_id)
    return version


def _log_dataset(part: TrainingData, source: str, context: str) -> None:
    """One split as an MLflow dataset input: the model features and the label, named after the table."""
    features = pd.DataFrame(part.features, columns=list(MODEL_FEATURES))
    features["label"] = part.labels.astype(np.float32)  # an integer column draws MLflow's missing-value hint
    with warnings.catch_warnings():
        # A path source "can be interpreted in multiple ways", all of them the local artefact source.
        warnings.filterwarnings("ignore", "The specified dataset source", UserWarning)
        dataset = mlflow.data.from_pandas(features, source=source or None, name=DATASET_NAME, targets="label")
    mlflow.log_input(dataset, context=context)


def _log_search(trained: TrainedModel) -> None:
    """Every search trial: its pooled validation AP as a metric series (step = trial number) and a table."""
    trials = trained.selection.trials
    for trial in trials:
        mlflow.log_metric("search_trial_average_precision", trial.average_precision, step=trial.number)
    mlflow.log_dict(
        [
            {
                "trial": trial.number,
                **trial.params,
                "best_trees": trial.trees,
                "pooled_validation_average_precision": trial.average_precision,
                "fold_average_precision": list(trial.fold_average_precision),
                "seconds": round(trial.seconds, 2),
            }
            for trial in trials
        ],
        "search_trials.json",
    )


def _contract_tags(contract: ModelContract) -> dict[str, str]:
    return {
        "feature_definition_version": contract.feature_definition_version,
        "feature_count": str(len(contract.features)),
        "decline_threshold": f"{contract.decline_threshold:.6f}",
        "review_threshold": f"{contract.review_threshold:.6f}",
        "labels_known": str(contract.labels_known),
        "trained_until": contract.trained_until,
        "tested_from": contract.tested_from,
        "tested_to": contract.tested_to,
    }


def champion_version(client: MlflowClient) -> ModelVersion | None:
    """The version holding the champion alias, or None when there is none (or no registered model yet)."""
    try:
        return client.get_model_version_by_alias(MODEL_NAME, CHAMPION)
    except MlflowException:
        return None


def resolve_version(client: MlflowClient, text: str) -> str:
    """The version number meant by `text`: a registered version, or 'champion' for the champion's."""
    if text == CHAMPION:
        champion = champion_version(client)
        if champion is None:
            raise RegistryError(f"model {MODEL_NAME!r} has no champion yet: run 'fraud-platform train'")
        return str(champion.version)
    try:
        return str(client.get_model_version(MODEL_NAME, text).version)
    except MlflowException:
        versions = sorted(
            int(found.version) for found in client.search_model_versions(f"name='{MODEL_NAME}'")
        )
        raise RegistryError(
            f"model {MODEL_NAME!r} has no version {text!r} (registered: "
            f"{', '.join(map(str, versions)) or 'none: run fraud-platform train'})"
        ) from None


def load(client: MlflowClient, version: str) -> LoadedModel:
    """Load a registered version natively with its contract (no pickle)."""
    model_version = client.get_model_version(MODEL_NAME, version)
    booster = mlflow.xgboost.load_model(f"models:/{MODEL_NAME}/{version}")
    with tempfile.TemporaryDirectory() as directory:
        path = mlflow.artifacts.download_artifacts(
            run_id=model_version.run_id, artifact_path=CONTRACT_FILE, dst_path=directory
        )
        raw: dict[str, Any] = json.loads(Path(path).read_text())
    raw["features"] = tuple(raw["features"])
    return LoadedModel(version=str(version), booster=booster, contract=ModelContract(**raw))


def set_champion(client: MlflowClient, version: str) -> None:
    """Move the champion alias to `version`."""
    client.set_registered_model_alias(MODEL_NAME, CHAMPION, version)


@dataclass(frozen=True)
class Challenge:
    """The champion/challenger comparison on one test window."""

    promoted: bool
    reason: str
    challenger_version: str
    challenger_average_precision: float
    champion_version: str | None = None
    champion_average_precision: float | None = None


def challenge_champion(
    client: MlflowClient, version: str, challenger_average_precision: float, test: TrainingData
) -> Challenge:
    """Give `version` the champion alias if it beats the champion's average precision on the same test
    window (or if there is no champion, or the champion can no longer be served); record the comparison."""
    current = champion_version(client)
    champion_metrics: dict[str, float] = {}  # the champion on the same test window
    if current is None:
        result = Challenge(True, "first model", version, challenger_average_precision)
    else:
        champion = load(client, current.version)
        try:
            champion.contract.check_servable()
        except ContractError as error:
            result = Challenge(
                True,
                f"champion {current.version} cannot be served: {error}",
                version,
                challenger_average_precision,
                str(current.version),
            )
        else:
            champion_metrics = ranking_metrics(scored(score(champion.booster, test.features), test))
            champion_ap = champion_metrics["average_precision"]
            better = challenger_average_precision > champion_ap
            result = Challenge(
                better,
                "beats the champion" if better else "does not beat the champion",
                version,
                challenger_average_precision,
                str(current.version),
                champion_ap,
            )
    if result.promoted:
        set_champion(client, version)
    client.set_model_version_tag(MODEL_NAME, version, "challenge", json.dumps(asdict(result)))
    run_id = client.get_model_version(MODEL_NAME, version).run_id
    for key, value in champion_metrics.items():
        client.log_metric(run_id, f"champion_test_{key}", value)
    client.set_tag(run_id, "promoted", str(result.promoted).lower())
    return result
