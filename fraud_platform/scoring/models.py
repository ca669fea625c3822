"""The model the stream serves: the registry's champion, checked against this code's features, swapped live.

`ModelWatcher.start()` loads the champion (native XGBoost format, `registry.load`) or refuses to start;
`current()` checks the `champion` alias every `refresh_seconds` and swaps to a new version between two
batches, so no event is dropped or scored twice. A version whose contract this code cannot serve is refused
(error log line, `models_refused` counter) and the current model kept; an unreachable registry keeps the
current model too (warning, `registry_errors` counter). With `scoring_mode="rules"` the rules baseline
serves and nothing is read from the registry.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import xgboost as xgb
from mlflow import MlflowClient

from fraud_platform.config import SCORING_MODE_VAR, Settings
from fraud_platform.features.vector import MODEL_FEATURES
from fraud_platform.training import registry
from fraud_platform.training.baseline import rules_score
from fraud_platform.training.model import Thresholds, score

logger = logging.getLogger(__name__)

RULES_VERSION = "rules-v1"
# rules_score is a share of four rules: review from two rules' worth of evidence, decline from three.
RULES_THRESHOLDS = Thresholds(decline=0.75, review=0.5)
REASON_CODES = 3


class NoServableModel(RuntimeError):
    """The stream cannot start: there is no champion, or the champion cannot be served."""


@dataclass(frozen=True)
class ServingModel:
    """What scores a batch: a booster with its thresholds, or the rules baseline (booster None)."""

    version: str
    thresholds: Thresholds
    booster: xgb.Booster | None = None

    def scores(self, features: np.ndarray) -> np.ndarray:
        """Scores of a float32 matrix in MODEL_FEATURES order, one vectorised call."""
        if self.booster is None:
            return rules_score(features).astype(np.float32)
        return score(self.booster, features)

    def reasons(self, features: np.ndarray) -> list[tuple[str, ...]]:
        """Up to REASON_CODES feature names per row, those pushing the score up most.

        XGBoost's approximate contributions (Saabas: 62 us per row on 200 trees, exact TreeSHAP 407 us,
        docs/benchmarks.md); still called only for the rows that are reviewed or declined. The rules
        baseline gives none."""
        if self.booster is None or len(features) == 0:
            return [() for _ in range(len(features))]
        matrix = xgb.DMatrix(features, feature_names=list(MODEL_FEATURES), missing=np.nan)
        contributions = self.booster.predict(matrix, pred_contribs=True, approx_contribs=True)
        contributions = contributions[:, :-1]  # the last column is the bias
        top = np.argsort(-contributions, axis=1)[:, :REASON_CODES]
        return [
            tuple(MODEL_FEATURES[column] for column in columns if row_contributions[column] > 0)
            for columns, row_contributions in zip(top, contributions, strict=True)
        ]


RULES_MODEL = ServingModel(RULES_VERSION, RULES_THRESHOLDS)


class ModelWatcher:
    """Holds the serving model and follows the registry's champion alias."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self.models_refused = 0
        self.registry_errors = 0
        self._model: ServingModel | None = None
        self._client: MlflowClient | None = None
        self._refused: set[str] = set()
        self._next_check = 0.0

    def start(self) -> ServingModel:
        """Load the model to serve first; raise NoServableModel with what to do when there is none."""
        if self.settings.scoring_mode == "rules":
            logger.warning("%s=rules: scoring with the rules baseline (%s)", SCORING_MODE_VAR, RULES_VERSION)
            self._model = RULES_MODEL
            return self._model
        uri = self.settings.mlflow_tracking_uri
        self._client = registry.configure(uri, self.settings.mlflow_artifact_root)
        champion = registry.champion_version(self._client)
        if champion is None:
            raise NoServableModel(
                f"no '{registry.CHAMPION}' model of {registry.MODEL_NAME!r} in the registry at {uri}: "
                f"train one with `fraud-platform train`, or score with the rules baseline "
                f"({SCORING_MODE_VAR}=rules)"
            )
        loaded = registry.load(self._client, str(champion.version))
        try:
            loaded.contract.check_servable()
        except registry.ContractError as error:
            raise NoServableModel(
                f"champion version {champion.version} cannot be served: {error}; retrain with "
                f"`fraud-platform train`, or set {SCORING_MODE_VAR}=rules"
            ) from None
        self._model = _serving(loaded)
        self._next_check = self.clock() + self.settings.model_refresh_seconds
        logger.info("serving model %s version %s", registry.MODEL_NAME, self._model.version)
        return self._model

    def current(self) -> ServingModel:
        """The model for the next batch: the champion of the last check (checked when one is due)."""
        if self._model is None:
            raise RuntimeError("ModelWatcher.start() first")
        if self._client is not None and self.clock() >= self._next_check:
            self._next_check = self.clock() + self.settings.model_refresh_seconds
            self._refresh(self._client)
        return self._model

    def current_version(self) -> str:
        """The version being served (without checking the registry)."""
        return self._model.version if self._model else "none"

    def _refresh(self, client: MlflowClient) -> None:
        current = self._model.version if self._model else None
        try:
            champion = registry.champion_version(client)
            if champion is None:
                logger.warning("the registry shows no champion: keeping model version %s", current)
                return
            version = str(champion.version)
            if version == current or version in self._refused:
                return
            loaded = registry.load(client, version)
        except Exception as error:  # any registry failure: keep serving, never crash-loop
            self.registry_errors += 1
            logger.warning("model registry unreachable (%s): keeping model version %s", error, current)
            return
        try:
            loaded.contract.check_servable()
        except registry.ContractError as error:
            self._refused.add(version)
            self.models_refused += 1
            logger.error("REFUSED champion version %s: %s; keeping model version %s", version, error, current)
            return
        self._model = _serving(loaded)
        logger.info("swapped the serving model: version %s -> %s", current, version)


def _serving(loaded: registry.LoadedModel) -> ServingModel:
    return ServingModel(loaded.version, loaded.contract.thresholds, loaded.booster)
