"""The model registry on a real MLflow store (sqlite + local artefacts): register, promote, load natively."""

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from fraud_platform.features.vector import FEATURE_DEFINITION_VERSION, MODEL_FEATURES
from fraud_platform.testing import synthetic_data
from fraud_platform.training import registry
from fraud_platform.training.dataset import TrainingData
from fraud_platform.training.model import TrainingConfig, fit, score


def _contract(trained, labels_known: int = 0) -> registry.ModelContract:  # type: ignore[no-untyped-def]
    return registry.ModelContract(
        features=MODEL_FEATURES,
        feature_definition_version=FEATURE_DEFINITION_VERSION,
        decline_threshold=trained.thresholds.decline,
        review_threshold=trained.thresholds.review,
        validation_metrics=trained.validation_metrics,
        labels_known=labels_known,
    )


@pytest.fixture
def client(tmp_path: Path) -> MlflowClient:
    return registry.configure(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "artifacts")


def _register(data: TrainingData, labels_known: int = 0):  # type: ignore[no-untyped-def]
    trained = fit(data, TrainingConfig(search_trials=1))
    test = data.part("test")
    version = registry.register(
        trained, _contract(trained, labels_known), score(trained.booster, test.features), test.labels, {}
    )
    return trained, version


def test_first_model_becomes_champion_and_loads_natively(client: MlflowClient, tmp_path: Path) -> None:
    data = synthetic_data(1, signal=1.0)
    trained, version = _register(data, labels_known=123)
    result = registry.challenge_champion(
        client, version.version, trained.test_metrics["average_precision"], data.part("test")
    )
    assert result.promoted and result.reason == "first model"
    assert registry.champion_version(client).version == version.version

    loaded = registry.load(client, version.version)
    assert loaded.contract.features == MODEL_FEATURES
    assert loaded.contract.labels_known == 123
    np.testing.assert_allclose(loaded.contract.decline_threshold, trained.thresholds.decline)
    test = data.part("test")
    np.testing.assert_array_equal(score(loaded.booster, test.features), score(trained.booster, test.features))
    stored = [path.name for path in (tmp_path / "artifacts").rglob("*") if path.is_file()]
    assert "model.json" in stored  # XGBoost's native format
    assert not [name for name in stored if name.endswith((".pkl", ".pickle", ".joblib"))]
    assert {"pr_curve.png", "feature_importance.png", "contract.json"} <= set(stored)


def test_alias_moves_only_on_improvement(client: MlflowClient) -> None:
    strong = synthetic_data(2, signal=1.5)
    trained, first = _register(strong)
    registry.challenge_champion(
        client, first.version, trained.test_metrics["average_precision"], strong.part("test")
    )

    weak_data = synthetic_data(2, signal=1.5)
    weak_data.features[:, :3] = np.random.default_rng(9).normal(
        size=(len(weak_data.labels), 3)
    )  # signal gone
    weak, second = _register(weak_data)
    refused = registry.challenge_champion(
        client, second.version, weak.test_metrics["average_precision"], strong.part("test")
    )
    assert not refused.promoted and refused.champion_version == str(first.version)
    assert refused.champion_average_precision > refused.challenger_average_precision
    assert registry.champion_version(client).version == first.version

    better_data = synthetic_data(2, signal=3.0)
    better, third = _register(better_data)
    accepted = registry.challenge_champion(
        client, third.version, better.test_metrics["average_precision"], better_data.part("test")
    )
    assert accepted.promoted and registry.champion_version(client).version == third.version
    assert (
        client.get_model_version(registry.MODEL_NAME, second.version)
        .tags["challenge"]
        .startswith('{"promoted": false')
    )


def test_a_model_whose_features_cannot_be_served_is_refused() -> None:
    contract = registry.ModelContract(
        features=(*MODEL_FEATURES[:-1], "feature_from_the_future"),
        feature_definition_version=FEATURE_DEFINITION_VERSION,
        decline_threshold=0.9,
        review_threshold=0.5,
    )
    with pytest.raises(registry.ContractError, match="feature_from_the_future"):
        contract.check_servable()
    other_version = registry.ModelContract(MODEL_FEATURES, "rt-v0+od-v1+batch-v1", 0.9, 0.5)
    with pytest.raises(registry.ContractError, match="rt-v0"):
        other_version.check_servable()


def test_thresholds_and_metrics_are_consistent() -> None:
    data = synthetic_data(4, signal=2.0)
    trained = fit(data, TrainingConfig(search_trials=1))
    assert 0 < trained.thresholds.review <= trained.thresholds.decline <= 1
    metrics = trained.test_metrics
    assert 0.5 < metrics["roc_auc"] <= 1 and 0 < metrics["average_precision"] <= 1
    assert 0 <= metrics["recall_at_1pct_fpr"] <= 1 and 0 <= metrics["fraud_amount_caught"] <= 1
    assert metrics["frauds"] == data.part("test").labels.sum()


def test_a_version_carries_its_signature_example_datasets_and_a_readable_run(
    client: MlflowClient, tmp_path: Path
) -> None:
    data = synthetic_data(5, signal=2.0)
    trained = fit(data, TrainingConfig(search_trials=1))
    test = data.part("test")
    version = registry.register(
        trained,
        _contract(trained),
        score(trained.booster, test.features),
        test.labels,
        {"dagster_run_id": "r1"},
        data=data,
        dataset_source=f"{tmp_path / 'warehouse.duckdb'}#training.dataset",
    )
    experiment = client.get_experiment_by_name(registry.EXPERIMENT)
    assert experiment.tags[registry.EXPERIMENT_KIND_TAG] == registry.CLASSIC_ML  # not the GenAI view
    run = client.get_run(version.run_id)
    first, last = data.window("train")
    assert run.info.run_name == f"model-v{version.version}-train-{first}-{last}"
    inputs = {item.tags[0].value: item.dataset for item in run.inputs.dataset_inputs}
    assert set(inputs) == {"training", "testing"}
    assert inputs["training"].name == "training.dataset"
    assert "warehouse.duckdb#training.dataset" in inputs["training"].source
    assert json.loads(inputs["testing"].profile)["num_rows"] == len(test.labels)

    model = mlflow.models.get_model_info(f"models:/{registry.MODEL_NAME}/{version.version}")
    assert model.signature.inputs.input_names() == list(MODEL_FEATURES)
    assert model.saved_input_example_info is not None
    assert registry.run_url("sqlite:///x.db", experiment.experiment_id, run.info.run_id) == (
        f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}"
    )
