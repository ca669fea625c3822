"""Serving threads chosen on purpose: the configured thread count reaches the real XGBoost boosters the stream
(and the authorization API) score with, small batches get one thread, and the process's OpenMP and BLAS
pools are bounded when the watcher starts."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb
from threadpoolctl import threadpool_info, threadpool_limits

from fraud_platform.config import SCORING_THREADS_VAR, ConfigError, Settings
from fraud_platform.features.vector import MODEL_FEATURES
from fraud_platform.lib.redis_server import LocalRedisServer
from fraud_platform.scoring.models import WIDE_BATCH_ROWS, ModelWatcher, ServingModel
from fraud_platform.testing import register_model, scoring_settings, set_champion
from fraud_platform.training.model import Thresholds

THRESHOLDS = Thresholds(decline=0.6, review=0.2)


def nthread(booster: xgb.Booster) -> int:
    """The booster's own thread setting, as XGBoost stores it (0: every core)."""
    return int(json.loads(booster.save_config())["learner"]["generic_param"]["nthread"])


@pytest.fixture(scope="module")
def booster() -> xgb.Booster:
    """30 trees on random features where the first three carry the label."""
    features = rows(5_000)
    labels = (features[:, :3].sum(axis=1) > 2.0).astype(np.int8)
    matrix = xgb.DMatrix(features, label=labels, feature_names=list(MODEL_FEATURES))
    return xgb.train({"objective": "binary:logistic", "max_depth": 4, "seed": 4}, matrix, num_boost_round=30)


@pytest.fixture(scope="module")
def registry_settings(tmp_path_factory: pytest.TempPathFactory, redis_server: LocalRedisServer) -> Settings:
    """An MLflow store with two servable models, the first the champion."""
    settings = scoring_settings(tmp_path_factory.mktemp("threads"), redis_server.url, refresh_seconds=0)
    for seed in (1, 2):
        register_model(settings, seed, review=0.2, decline=0.6)
    set_champion(settings, "1")
    return settings


@pytest.fixture
def restored_pools() -> Iterator[None]:
    """Put the process's thread-pool limits back after a test that bounds them."""
    saved = threadpool_limits(limits=None)  # changes nothing, remembers the current limits
    yield
    saved.restore_original_limits()


def rows(count: int) -> np.ndarray:
    return np.random.default_rng(count).normal(size=(count, len(MODEL_FEATURES))).astype(np.float32)


def test_small_batches_use_one_thread_and_large_ones_the_configured_count(booster: xgb.Booster) -> None:
    model = ServingModel("1", THRESHOLDS, booster.copy(), threads=2)
    assert nthread(model.booster_for(1)) == 1
    assert nthread(model.booster_for(WIDE_BATCH_ROWS - 1)) == 1
    assert nthread(model.booster_for(WIDE_BATCH_ROWS)) == 2
    assert [model.threads_for(n) for n in (1, WIDE_BATCH_ROWS - 1, WIDE_BATCH_ROWS)] == [1, 1, 2]
    batch = rows(WIDE_BATCH_ROWS)
    one = ServingModel("1", THRESHOLDS, booster.copy(), threads=1)
    assert nthread(one.booster_for(WIDE_BATCH_ROWS)) == 1
    # the copy for large batches is the same model: the same scores and reason codes to the bit
    np.testing.assert_array_equal(model.scores(batch), one.scores(batch))
    assert model.reasons(batch) == one.reasons(batch)
    np.testing.assert_array_equal(model.scores(batch[:10]), one.scores(batch[:10]))


def test_zero_threads_leaves_xgboost_its_default(booster: xgb.Booster) -> None:
    served = booster.copy()
    served.set_param({"nthread": 1})
    model = ServingModel("1", THRESHOLDS, served, threads=0)
    assert nthread(model.booster_for(1)) == nthread(model.booster_for(WIDE_BATCH_ROWS)) == 0
    assert model.threads_for(WIDE_BATCH_ROWS) == 0
    with pytest.raises(ValueError, match="threads=-1"):
        ServingModel("1", THRESHOLDS, booster.copy(), threads=-1)


@pytest.mark.usefixtures("restored_pools")
def test_the_watcher_applies_the_configured_threads_to_every_model_it_serves(
    registry_settings: Settings, model_watcher: Callable[[Settings], ModelWatcher]
) -> None:
    watcher = model_watcher(dataclasses.replace(registry_settings, scoring_threads=2))
    first = watcher.start()
    assert first.version == "1" and first.threads == 2
    assert nthread(first.booster_for(10)) == 1 and nthread(first.booster_for(WIDE_BATCH_ROWS)) == 2
    # the BLAS pools (process-wide) and this thread's OpenMP default are bounded to the setting
    pools = threadpool_info()
    assert pools and {pool["num_threads"] for pool in pools} == {2}

    set_champion(registry_settings, "2")  # a live swap keeps the threads chosen
    watcher.refresh()
    swapped = watcher.current()
    assert swapped.version == "2"
    assert nthread(swapped.booster_for(10)) == 1 and nthread(swapped.booster_for(WIDE_BATCH_ROWS)) == 2
    set_champion(registry_settings, "1")


@pytest.mark.usefixtures("restored_pools")
def test_one_thread_by_default(
    registry_settings: Settings, model_watcher: Callable[[Settings], ModelWatcher]
) -> None:
    assert registry_settings.scoring_threads == 1  # nothing configured
    model = model_watcher(registry_settings).start()
    assert model.threads == 1
    assert nthread(model.booster_for(10)) == nthread(model.booster_for(WIDE_BATCH_ROWS)) == 1
    assert {pool["num_threads"] for pool in threadpool_info()} == {1}


def test_the_thread_count_is_read_from_the_environment(tmp_path: Path) -> None:
    home = {"FRAUD_PLATFORM_HOME": str(tmp_path)}
    assert Settings.from_env(home).scoring_threads == 1
    assert Settings.from_env({**home, SCORING_THREADS_VAR: "0"}).scoring_threads == 0
    settings = Settings.from_env({**home, SCORING_THREADS_VAR: "2"})
    assert settings.scoring_threads == 2 and Settings.from_env(settings.environment()) == settings


@pytest.mark.parametrize(("value", "problem"), [("-1", "between 0 and 256"), ("two", "not a whole number")])
def test_a_bad_thread_count_is_refused_by_name(tmp_path: Path, value: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=f"{SCORING_THREADS_VAR}.*{problem}"):
        Settings.from_env({"FRAUD_PLATFORM_HOME": str(tmp_path), SCORING_THREADS_VAR: value})
