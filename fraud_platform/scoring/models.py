"""The model the stream serves: the registry's champion, checked against this code's features, swapped live.

`ModelWatcher.start()` loads the champion (native XGBoost format, `registry.load`) or refuses to start, with
an error naming the store when it is missing or unreadable (a sqlite store that does not exist is never
created empty in its place). The registry is never on the scoring path: a background thread checks the
`champion` alias every `refresh_seconds` and loads a new version there; `current()` only returns the newest
loaded model, so a batch is scored by one model and the swap happens between two batches (no event dropped
or scored twice). MLflow's HTTP calls are bounded (MLFLOW_HTTP_REQUEST_TIMEOUT / _MAX_RETRIES default to
REGISTRY_TIMEOUT_SECONDS / REGISTRY_RETRIES in the process unless set). A version whose contract this code
cannot serve is refused (error log line, `models_refused` counter) and the current model kept; an
unreachable registry (or a sqlite store gone missing) keeps the current model too: one warning per outage,
the `registry_errors` counter per failed check, an info line when it answers again. With
`scoring_mode="rules"` the rules baseline serves and nothing is read from the registry.

Threads are chosen on purpose (FRAUD_PLATFORM_SCORING_THREADS, `Settings.scoring_threads`): XGBoost would
otherwise use every core's OpenMP thread for every call, and on a busy machine a parallel region waits for
its slowest thread (docs/benchmarks.md). Batches under WIDE_BATCH_ROWS rows are scored with one thread,
larger ones (a backlog) with the configured number; 0 leaves XGBoost's default. `ModelWatcher.start()`
also bounds the OpenMP and BLAS thread pools the process has loaded (threadpoolctl).
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xgboost as xgb
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from threadpoolctl import threadpool_limits

from fraud_platform.config import (
    DEFAULT_SCORING_THREADS,
    MLFLOW_URI_VAR,
    SCORING_MODE_VAR,
    SCORING_THREADS_VAR,
    Settings,
    masked_url,
)
from fraud_platform.features.vector import MODEL_FEATURES
from fraud_platform.training import registry
from fraud_platform.training.baseline import rules_score
from fraud_platform.training.model import Thresholds, score

logger = logging.getLogger(__name__)

RULES_VERSION = "rules-v1"
# rules_score is a share of four rules: review from two rules' worth of evidence, decline from three.
RULES_THRESHOLDS = Thresholds(decline=0.75, review=0.5)
REASON_CODES = 3
# Batches of this many rows or more get the configured threads; smaller ones one thread, where OpenMP's
# fork and join cost more than they save (measured: bench/bench_scoring.py, docs/benchmarks.md).
WIDE_BATCH_ROWS = 1_000
# MLflow's HTTP client retries for minutes by default; a check of the alias gives up after this long (no retry
# with backoff: the next check, `refresh_seconds` later, is the retry).
REGISTRY_TIMEOUT_SECONDS = 5
REGISTRY_RETRIES = 0
_NOT_FOUND = ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST")  # MLflow's codes for no alias, no model
MIN_REFRESH_SECONDS = 0.2  # the background check's shortest interval (refresh_seconds 0: as often as this)


class NoServableModel(RuntimeError):
    """The stream cannot start: there is no champion, or the champion cannot be served."""


@dataclass(frozen=True)
class ServingModel:
    """What scores a batch: a booster with its thresholds, or the rules baseline (booster None).

    `threads`: XGBoost threads for batches of WIDE_BATCH_ROWS rows or more (smaller ones use one); 0 leaves
    XGBoost's default (every core) for every call. The booster's `nthread` is set here, on purpose.
    `exact_reasons`: reason codes from exact TreeSHAP instead of the approximate contributions."""

    version: str
    thresholds: Thresholds
    booster: xgb.Booster | None = None
    threads: int = DEFAULT_SCORING_THREADS
    exact_reasons: bool = False
    _wide: xgb.Booster | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.threads < 0:
            raise ValueError(f"ServingModel threads={self.threads}: must be 0 (XGBoost's default) or more")
        if self.booster is None:
            return
        self.booster.set_param({"nthread": 1 if self.threads else 0})
        if self.threads > 1:  # a copy for large batches: no thread count is switched between calls
            wide = self.booster.copy()
            wide.set_param({"nthread": self.threads})
            object.__setattr__(self, "_wide", wide)

    def booster_for(self, rows: int) -> xgb.Booster | None:
        """The booster that scores a batch of `rows` rows (None for the rules baseline)."""
        return self._wide if self._wide is not None and rows >= WIDE_BATCH_ROWS else self.booster

    def threads_for(self, rows: int) -> int:
        """XGBoost threads for a batch of `rows` rows (0: XGBoost's default, every core)."""
        if not self.threads:
            return 0
        return self.threads if rows >= WIDE_BATCH_ROWS else 1

    def scores(self, features: np.ndarray) -> np.ndarray:
        """Scores of a float32 matrix in MODEL_FEATURES order, one vectorised call."""
        booster = self.booster_for(len(features))
        if booster is None:
            return rules_score(features).astype(np.float32)
        return score(booster, features)

    def reasons(self, features: np.ndarray) -> list[tuple[str, ...]]:
        """Up to REASON_CODES feature names per row, those pushing the score up most (`explain`'s names)."""
        return [tuple(name for name, _ in row) for row in self.explain(features)]

    def explain(self, features: np.ndarray) -> list[tuple[tuple[str, float], ...]]:
        """Up to REASON_CODES (feature name, contribution in log-odds) per row, those pushing the score up
        most, largest first.

        XGBoost's approximate contributions (Saabas: 62 us per row on 200 trees), or exact TreeSHAP (407 us)
        with `exact_reasons` (FRAUD_PLATFORM_REASON_CODES=exact; how often the two name the same features:
        docs/benchmarks.md); called only for the rows that are reviewed or declined. The rules baseline gives
        none."""
        booster = self.booster_for(len(features))
        if booster is None or len(features) == 0:
            return [() for _ in range(len(features))]
        threads = self.threads_for(len(features)) or None  # None: XGBoost's default
        return strongest_reasons(
            feature_contributions(booster, features, threads, approximate=not self.exact_reasons)
        )


def feature_contributions(
    booster: xgb.Booster, features: np.ndarray, threads: int | None, approximate: bool = True
) -> np.ndarray:
    """Each row's contribution of every feature (log-odds) and the bias last: approximate (Saabas) or exact
    TreeSHAP, on `threads` XGBoost threads (None: its default). Columns are in MODEL_FEATURES order, as
    `ServingModel.scores` takes them: no names are set and checked per call."""
    matrix = xgb.DMatrix(features, missing=np.nan, nthread=threads)
    return booster.predict(matrix, pred_contribs=True, approx_contribs=approximate, validate_features=False)


def strongest_reasons(contributions: np.ndarray) -> list[tuple[tuple[str, float], ...]]:
    """Per row of `feature_contributions` (the bias column last): up to REASON_CODES (feature name,
    contribution) pushing the score up most, largest first."""
    features = contributions[:, :-1]
    top = np.argsort(-features, axis=1)[:, :REASON_CODES]
    return [
        tuple(
            (MODEL_FEATURES[column], float(row_contributions[column]))
            for column in columns
            if row_contributions[column] > 0
        )
        for columns, row_contributions in zip(top, features, strict=True)
    ]


RULES_MODEL = ServingModel(RULES_VERSION, RULES_THRESHOLDS)


class ModelWatcher:
    """Holds the serving model and follows the registry's champion alias from a background thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.models_refused = 0
        self.registry_errors = 0
        self._model: ServingModel | None = None
        self._client: MlflowClient | None = None
        self._refused: set[str] = set()
        self._outage = False  # the last check failed (warned once)
        self._stopped = threading.Event()
        self._refresher: threading.Thread | None = None

    def start(self) -> ServingModel:
        """Bound the native thread pools, load the model to serve first and start following the alias; raise
        NoServableModel with what to do when there is none or the store is missing or unreadable."""
        bound_native_threads(self.settings.scoring_threads)
        if self.settings.scoring_mode == "rules":
            logger.warning("%s=rules: scoring with the rules baseline (%s)", SCORING_MODE_VAR, RULES_VERSION)
            self._model = RULES_MODEL
            return self._model
        uri = self.settings.mlflow_tracking_uri
        missing = _missing_store(uri)
        if missing is not None:
            raise NoServableModel(
                f"the model registry store {missing} does not exist ({MLFLOW_URI_VAR}={masked_url(uri)}): "
                f"restore it, point {MLFLOW_URI_VAR} at the registry, train a model with "
                f"`fraud-platform train`, or score with the rules baseline ({SCORING_MODE_VAR}=rules)"
            )
        bound_registry_requests()
        try:
            self._client = registry.configure(uri, self.settings.mlflow_artifact_root)
            champion = _champion(self._client)
        except Exception as error:  # a broken store, an unreachable server: say which and stop
            raise NoServableModel(
                f"the model registry at {masked_url(uri)} cannot be read ({type(error).__name__}: "
                f"{_first_line(error)}): check {MLFLOW_URI_VAR} and the store, or score with the rules "
                f"baseline ({SCORING_MODE_VAR}=rules)"
            ) from None
        if champion is None:
            raise NoServableModel(
                f"no '{registry.CHAMPION}' model of {registry.MODEL_NAME!r} in the registry at "
                f"{masked_url(uri)}: train one with `fraud-platform train`, or score with the rules baseline "
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
        self._model = _serving(loaded, self.settings)
        logger.info("serving model %s version %s", registry.MODEL_NAME, self._model.version)
        self._refresher = threading.Thread(target=self._follow, name="model-refresh", daemon=True)
        self._refresher.start()
        return self._model

    def current(self) -> ServingModel:
        """The model for the next batch: the newest the background check loaded (never waits for it)."""
        if self._model is None:
            raise RuntimeError("ModelWatcher.start() first")
        return self._model

    def current_version(self) -> str:
        """The version being served (without checking the registry)."""
        return self._model.version if self._model else "none"

    def stop(self) -> None:
        """Stop following the alias (the current model stays)."""
        self._stopped.set()
        if self._refresher is not None:
            self._refresher.join()

    def refresh(self) -> None:
        """Check the champion alias once and swap to a new servable version (what the background thread
        does every `refresh_seconds`); never raises."""
        if self._client is None:
            return
        current = self.current_version()
        try:
            missing = _missing_store(self.settings.mlflow_tracking_uri)
            if missing is not None:  # querying would create an empty registry in its place
                raise FileNotFoundError(f"the store {missing} is missing")
            champion = _champion(self._client)
            if champion is None:
                logger.warning("the registry shows no champion: keeping model version %s", current)
                return
            version = str(champion.version)
            if version != current and version not in self._refused:
                loaded = registry.load(self._client, version)
        except Exception as error:  # any registry failure: keep serving, never crash-loop
            self.registry_errors += 1
            if not self._outage:
                self._outage = True
                logger.warning(
                    "model registry unreachable (%s): keeping model version %s, checking again every %s s",
                    _first_line(error),
                    current,
                    self.settings.model_refresh_seconds,
                )
            return
        if self._outage:
            self._outage = False
            logger.info("model registry reachable again (%d failed checks so far)", self.registry_errors)
        if version == current or version in self._refused:
            return
        try:
            loaded.contract.check_servable()
        except registry.ContractError as error:
            self._refused.add(version)
            self.models_refused += 1
            logger.error("REFUSED champion version %s: %s; keeping model version %s", version, error, current)
            return
        self._model = _serving(loaded, self.settings)
        logger.info("swapped the serving model: version %s -> %s", current, version)

    def _follow(self) -> None:
        while not self._stopped.wait(max(self.settings.model_refresh_seconds, MIN_REFRESH_SECONDS)):
            self.refresh()


def bound_registry_requests() -> None:
    """Bound MLflow's HTTP calls in this process (MLflow reads them per request; values set by the operator
    are kept): a check of an unreachable server gives up after about REGISTRY_TIMEOUT_SECONDS per try."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(REGISTRY_TIMEOUT_SECONDS))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(REGISTRY_RETRIES))


def _champion(client: MlflowClient) -> ModelVersion | None:
    """The champion's version; None when the registry answers that there is none; raises when it does not
    answer (`registry.champion_version` reads both as None)."""
    try:
        return client.get_model_version_by_alias(registry.MODEL_NAME, registry.CHAMPION)
    except MlflowException as error:
        if error.error_code in _NOT_FOUND:
            return None
        raise


def _missing_store(uri: str) -> Path | None:
    """The file of a sqlite tracking URI when it does not exist (None: exists, or not a sqlite store)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = Path(uri.removeprefix("sqlite:///").split("?", 1)[0])
    return None if path.is_file() else path


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def bound_native_threads(threads: int) -> None:
    """Limit the OpenMP and BLAS thread pools of the libraries loaded so far to `threads` (0: leave them).

    BLAS limits are process-wide; OpenMP's is the calling thread's default (libgomp keeps it per thread),
    which is why ServingModel also gives XGBoost its thread count explicitly on every call."""
    if threads < 0:
        raise ValueError(f"{SCORING_THREADS_VAR}={threads}: must be 0 (the libraries' default) or more")
    if threads:
        threadpool_limits(limits=threads)


def _serving(loaded: registry.LoadedModel, settings: Settings) -> ServingModel:
    return ServingModel(
        loaded.version,
        loaded.contract.thresholds,
        loaded.booster,
        settings.scoring_threads,
        exact_reasons=settings.reason_codes == "exact",
    )
