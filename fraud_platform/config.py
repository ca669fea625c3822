"""Every setting of the platform, read from environment variables with defaults under one home directory.

`Settings.from_env()` validates everything at once and raises `ConfigError` naming the variable at fault,
so a bad value stops a command at start rather than deep inside a run. A value with leading or trailing
whitespace is refused (a quoted `" 6503"` is a mistake, not a port). `masked_url` hides the password of a
URL wherever one is shown.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

HOME_VAR = "FRAUD_PLATFORM_HOME"
REDIS_URL_VAR = "REDIS_URL"
REDIS_PORT_VAR = "FRAUD_PLATFORM_REDIS_PORT"
REDIS_CLUSTER_VAR = "FRAUD_PLATFORM_REDIS_CLUSTER"
MLFLOW_URI_VAR = "MLFLOW_TRACKING_URI"
DAGSTER_HOME_VAR = "DAGSTER_HOME"
WAREHOUSE_VAR = "FRAUD_PLATFORM_WAREHOUSE"
LANDING_VAR = "FRAUD_PLATFORM_LANDING"
LABEL_MATURITY_VAR = "FRAUD_PLATFORM_LABEL_MATURITY_DAYS"
STREAM_SHARDS_VAR = "FRAUD_PLATFORM_STREAM_SHARDS"
ALLOWED_LATENESS_VAR = "FRAUD_PLATFORM_ALLOWED_LATENESS_SECONDS"
FEATURE_TTL_VAR = "FRAUD_PLATFORM_FEATURE_TTL_SECONDS"
MARKER_TTL_VAR = "FRAUD_PLATFORM_MARKER_TTL_SECONDS"
RETRAIN_LABELS_VAR = "FRAUD_PLATFORM_RETRAIN_MIN_NEW_LABELS"
TRAIN_WINDOW_DAYS_VAR = "FRAUD_PLATFORM_TRAIN_WINDOW_DAYS"
TEST_DAYS_VAR = "FRAUD_PLATFORM_TEST_DAYS"
VALIDATION_DAYS_VAR = "FRAUD_PLATFORM_VALIDATION_DAYS"
GAP_DAYS_VAR = "FRAUD_PLATFORM_GAP_DAYS"
SEARCH_TRIALS_VAR = "FRAUD_PLATFORM_SEARCH_TRIALS"
SEARCH_SECONDS_VAR = "FRAUD_PLATFORM_SEARCH_SECONDS"
TRAIN_THREADS_VAR = "FRAUD_PLATFORM_TRAIN_THREADS"
STREAM_MAX_LENGTH_VAR = "FRAUD_PLATFORM_STREAM_MAX_LENGTH"
MODEL_REFRESH_VAR = "FRAUD_PLATFORM_MODEL_REFRESH_SECONDS"
SCORING_MODE_VAR = "FRAUD_PLATFORM_SCORING_MODE"
SCORING_THREADS_VAR = "FRAUD_PLATFORM_SCORING_THREADS"
REASON_CODES_VAR = "FRAUD_PLATFORM_REASON_CODES"
FEATURE_LOG_FLUSH_VAR = "FRAUD_PLATFORM_FEATURE_LOG_FLUSH_SECONDS"
MAX_EVENT_AGE_VAR = "FRAUD_PLATFORM_MAX_EVENT_AGE_DAYS"
MAX_EVENT_FUTURE_VAR = "FRAUD_PLATFORM_MAX_EVENT_FUTURE_SECONDS"
TRANSPORT_VAR = "FRAUD_PLATFORM_TRANSPORT"
KAFKA_BROKERS_VAR = "FRAUD_PLATFORM_KAFKA_BROKERS"
KAFKA_TOPIC_PREFIX_VAR = "FRAUD_PLATFORM_KAFKA_TOPIC_PREFIX"
KAFKA_CONFIG_VAR = "FRAUD_PLATFORM_KAFKA_CONFIG"

DEFAULT_REDIS_PORT = 6390
DEFAULT_LABEL_MATURITY_DAYS = 180
DEFAULT_STREAM_SHARDS = 4
DEFAULT_ALLOWED_LATENESS_SECONDS = 300
DEFAULT_FEATURE_TTL_SECONDS = 3 * 86_400
# How long a transaction_id is remembered: its first decision (`decided:<id>`, what a repeated authorization
# is answered with, and what keeps a replayed event from a second decision) and its content (`seen:<id>`, so
# that a reused id is dead-lettered). Redis holds about 550 bytes per transaction for this long
# (docs/operations.md, sizing).
DEFAULT_MARKER_TTL_SECONDS = 3 * 86_400
DEFAULT_RETRAIN_MIN_NEW_LABELS = 1_000
# Training windows for scheduled and sensor-started runs (0: the default share of the labelled days, or all).
DEFAULT_GAP_DAYS = 7
DEFAULT_SEARCH_TRIALS = 24
DEFAULT_SEARCH_SECONDS = 300
# XGBoost threads while training: on a shared 2-core machine under load two OpenMP threads made a fit 3x slower
# than one (docs/benchmarks.md); 0 is XGBoost's own default, every core (a dedicated training machine).
DEFAULT_TRAIN_THREADS = 1
DEFAULT_STREAM_MAX_LENGTH = 10_000_000  # entries per shard, about 2 GB of Redis memory at ~216 bytes each
DEFAULT_MODEL_REFRESH_SECONDS = 30
DEFAULT_FEATURE_LOG_FLUSH_SECONDS = 60
# The stream's plausibility window for an event's timestamp around its clock (the wall clock for live events,
# the replayed time for replays): late clearing takes days, a producer's clock may be minutes ahead.
DEFAULT_MAX_EVENT_AGE_DAYS = 30
DEFAULT_MAX_EVENT_FUTURE_SECONDS = 300
# `fraud-platform import`: above this share of rejected rows a file is taken as misread, not as a few bad rows.
DEFAULT_MAX_REJECT_SHARE = 0.1
# XGBoost threads of a serving process: 1 keeps small batches off contended cores (docs/benchmarks.md); 0 is
# XGBoost's own default, every core.
DEFAULT_SCORING_THREADS = 1
SCORING_MODES = ("model", "rules")
# How reason codes are computed: XGBoost's approximate contributions (Saabas) or exact TreeSHAP.
REASON_CODE_METHODS = ("approximate", "exact")
TRANSPORTS = ("redis", "kafka")
DEFAULT_KAFKA_TOPIC_PREFIX = "fraud-platform"
# librdkafka properties the connectors set themselves: the brokers come from KAFKA_BROKERS_VAR, and the source
# keeps its offsets in Bytewax recovery instead of a consumer group.
MANAGED_KAFKA_PROPERTIES = ("bootstrap.servers", "group.id", "enable.auto.commit", "enable.partition.eof")
_KAFKA_PROPERTY = re.compile(r"[a-z][a-z0-9_.]*")
# Kafka topic names: [A-Za-z0-9._-], at most 249 characters; the longest suffix is ".transactions".
_TOPIC_PREFIX = re.compile(r"[A-Za-z0-9._-]{1,200}")
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#]*")
_REDIS_SCHEMES = ("redis", "rediss", "unix")
_MLFLOW_SCHEMES = ("sqlite", "http", "https", "file", "postgresql", "mysql", "databricks")


class ConfigError(ValueError):
    """A setting has a value the platform cannot use; the message names the variable."""


def project_root() -> Path:
    """The checkout this package runs from (editable install), else the current directory."""
    checkout = Path(__file__).resolve().parents[1]
    return checkout if (checkout / "pyproject.toml").is_file() else Path.cwd()


@dataclass(frozen=True)
class Settings:
    """Resolved configuration. `redis_url` is None when the project runs its own local server."""

    home: Path
    redis_url: str | None = field(repr=False)  # may hold a password: never in repr (logs, tracebacks)
    redis_port: int
    mlflow_tracking_uri: str = field(repr=False)  # a database URI may hold a password, as above
    dagster_home: Path
    warehouse_path: Path
    landing_dir: Path
    label_maturity_days: int
    stream_shards: int
    allowed_lateness_seconds: int
    feature_ttl_seconds: int
    retrain_min_new_labels: int
    stream_max_length: int
    train_window_days: int = 0  # only the newest N days of mature labelled history (0: all of it)
    test_days: int = 0  # the newest N labelled days are the test window (0: 20 % of the days)
    validation_days: int = 0  # the newest N development days validate the search (0: 20 % of the days)
    gap_days: int = DEFAULT_GAP_DAYS
    search_trials: int = DEFAULT_SEARCH_TRIALS
    search_seconds: int = DEFAULT_SEARCH_SECONDS
    train_threads: int = DEFAULT_TRAIN_THREADS
    model_refresh_seconds: int = DEFAULT_MODEL_REFRESH_SECONDS
    scoring_mode: str = SCORING_MODES[0]
    scoring_threads: int = DEFAULT_SCORING_THREADS
    reason_codes: str = REASON_CODE_METHODS[0]
    feature_log_flush_seconds: int = DEFAULT_FEATURE_LOG_FLUSH_SECONDS
    marker_ttl_seconds: int = DEFAULT_MARKER_TTL_SECONDS
    max_event_age_days: int = DEFAULT_MAX_EVENT_AGE_DAYS
    max_event_future_seconds: int = DEFAULT_MAX_EVENT_FUTURE_SECONDS
    transport: str = TRANSPORTS[0]
    kafka_brokers: tuple[str, ...] = ()
    kafka_topic_prefix: str = DEFAULT_KAFKA_TOPIC_PREFIX
    redis_cluster: bool = False  # REDIS_URL names a node of a Redis Cluster: cluster-aware clients
    # librdkafka properties (security: TLS, SASL), possibly with passwords: never in repr or `environment()`.
    kafka_config: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    @property
    def redis_dir(self) -> Path:
        """Data directory, pid file, log and password of the project-owned Redis-compatible server."""
        return self.home / "redis"

    @property
    def mlflow_artifact_root(self) -> Path:
        """Where the local MLflow store keeps model artefacts."""
        return self.home / "mlflow" / "artifacts"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and validate every setting; raise ConfigError naming the first bad variable."""
        env = os.environ if environ is None else environ
        home = _path(env, HOME_VAR, project_root() / ".fraud_platform", directory=True)
        redis_url = _text(env, REDIS_URL_VAR)
        if redis_url is not None:
            _check_url(REDIS_URL_VAR, redis_url, _REDIS_SCHEMES)
        mlflow_uri = _text(env, MLFLOW_URI_VAR) or f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
        _check_url(MLFLOW_URI_VAR, mlflow_uri, _MLFLOW_SCHEMES)
        return cls(
            home=home,
            redis_url=redis_url,
            redis_port=_integer(env, REDIS_PORT_VAR, DEFAULT_REDIS_PORT, 1024, 65535),
            mlflow_tracking_uri=mlflow_uri,
            dagster_home=_path(env, DAGSTER_HOME_VAR, home / "dagster", directory=True),
            warehouse_path=_path(env, WAREHOUSE_VAR, home / "warehouse.duckdb", directory=False),
            landing_dir=_path(env, LANDING_VAR, home / "landing", directory=True),
            label_maturity_days=_integer(env, LABEL_MATURITY_VAR, DEFAULT_LABEL_MATURITY_DAYS, 1, 3650),
            stream_shards=_integer(env, STREAM_SHARDS_VAR, DEFAULT_STREAM_SHARDS, 1, 1024),
            allowed_lateness_seconds=_integer(
                env, ALLOWED_LATENESS_VAR, DEFAULT_ALLOWED_LATENESS_SECONDS, 0, 86_400
            ),
            feature_ttl_seconds=_integer(env, FEATURE_TTL_VAR, DEFAULT_FEATURE_TTL_SECONDS, 60, 365 * 86_400),
            retrain_min_new_labels=_integer(
                env, RETRAIN_LABELS_VAR, DEFAULT_RETRAIN_MIN_NEW_LABELS, 1, 10**9
            ),
            train_window_days=_integer(env, TRAIN_WINDOW_DAYS_VAR, 0, 0, 36_500),
            test_days=_integer(env, TEST_DAYS_VAR, 0, 0, 3_650),
            validation_days=_integer(env, VALIDATION_DAYS_VAR, 0, 0, 3_650),
            gap_days=_integer(env, GAP_DAYS_VAR, DEFAULT_GAP_DAYS, 0, 3_650),
            search_trials=_integer(env, SEARCH_TRIALS_VAR, DEFAULT_SEARCH_TRIALS, 1, 10_000),
            search_seconds=_integer(env, SEARCH_SECONDS_VAR, DEFAULT_SEARCH_SECONDS, 1, 86_400),
            train_threads=_integer(env, TRAIN_THREADS_VAR, DEFAULT_TRAIN_THREADS, 0, 1024),
            stream_max_length=_integer(env, STREAM_MAX_LENGTH_VAR, DEFAULT_STREAM_MAX_LENGTH, 0, 10**12),
            model_refresh_seconds=_integer(env, MODEL_REFRESH_VAR, DEFAULT_MODEL_REFRESH_SECONDS, 1, 86_400),
            scoring_mode=_choice(env, SCORING_MODE_VAR, SCORING_MODES),
            scoring_threads=_integer(env, SCORING_THREADS_VAR, DEFAULT_SCORING_THREADS, 0, 256),
            reason_codes=_choice(env, REASON_CODES_VAR, REASON_CODE_METHODS),
            feature_log_flush_seconds=_integer(
                env, FEATURE_LOG_FLUSH_VAR, DEFAULT_FEATURE_LOG_FLUSH_SECONDS, 1, 86_400
            ),
            marker_ttl_seconds=_integer(env, MARKER_TTL_VAR, DEFAULT_MARKER_TTL_SECONDS, 60, 365 * 86_400),
            max_event_age_days=_integer(env, MAX_EVENT_AGE_VAR, DEFAULT_MAX_EVENT_AGE_DAYS, 1, 36_500),
            max_event_future_seconds=_integer(
                env, MAX_EVENT_FUTURE_VAR, DEFAULT_MAX_EVENT_FUTURE_SECONDS, 0, 365 * 86_400
            ),
            **_kafka(env),
            redis_cluster=redis_cluster_enabled(env),
        )

    def environment(self) -> dict[str, str]:
        """The variables a child process (dagster, bytewax, mlflow) needs to see this configuration.

        FRAUD_PLATFORM_KAFKA_CONFIG is left out (it may hold passwords and is printed by `fraud-platform
        env`): a child process inherits it from the environment it was read from."""
        variables = {
            HOME_VAR: str(self.home),
            DAGSTER_HOME_VAR: str(self.dagster_home),
            MLFLOW_URI_VAR: self.mlflow_tracking_uri,
            WAREHOUSE_VAR: str(self.warehouse_path),
            LANDING_VAR: str(self.landing_dir),
            REDIS_PORT_VAR: str(self.redis_port),
            LABEL_MATURITY_VAR: str(self.label_maturity_days),
            STREAM_SHARDS_VAR: str(self.stream_shards),
            ALLOWED_LATENESS_VAR: str(self.allowed_lateness_seconds),
            FEATURE_TTL_VAR: str(self.feature_ttl_seconds),
            MARKER_TTL_VAR: str(self.marker_ttl_seconds),
            RETRAIN_LABELS_VAR: str(self.retrain_min_new_labels),
            TRAIN_WINDOW_DAYS_VAR: str(self.train_window_days),
            TEST_DAYS_VAR: str(self.test_days),
            VALIDATION_DAYS_VAR: str(self.validation_days),
            GAP_DAYS_VAR: str(self.gap_days),
            SEARCH_TRIALS_VAR: str(self.search_trials),
            SEARCH_SECONDS_VAR: str(self.search_seconds),
            TRAIN_THREADS_VAR: str(self.train_threads),
            STREAM_MAX_LENGTH_VAR: str(self.stream_max_length),
            MODEL_REFRESH_VAR: str(self.model_refresh_seconds),
            SCORING_MODE_VAR: self.scoring_mode,
            SCORING_THREADS_VAR: str(self.scoring_threads),
            REASON_CODES_VAR: self.reason_codes,
            FEATURE_LOG_FLUSH_VAR: str(self.feature_log_flush_seconds),
            MAX_EVENT_AGE_VAR: str(self.max_event_age_days),
            MAX_EVENT_FUTURE_VAR: str(self.max_event_future_seconds),
            TRANSPORT_VAR: self.transport,
            KAFKA_TOPIC_PREFIX_VAR: self.kafka_topic_prefix,
            REDIS_CLUSTER_VAR: "1" if self.redis_cluster else "0",
        }
        if self.redis_url:
            variables[REDIS_URL_VAR] = self.redis_url
        if self.kafka_brokers:
            variables[KAFKA_BROKERS_VAR] = ",".join(self.kafka_brokers)
        return variables


def masked_url(url: str) -> str:
    """The URL with its password (user info or a `password=` query parameter) replaced by ***, for messages
    and `fraud-platform env`."""
    password = urlparse(url).password
    if password is not None:
        url = url.replace(f":{password}@", ":***@", 1)
    return _QUERY_PASSWORD.sub(r"\1***", url)


def _text(env: Mapping[str, str], name: str) -> str | None:
    """The variable's value (None when unset or empty); a value with stray whitespace is refused."""
    text = env.get(name)
    if not text:
        return None
    if text != text.strip():
        raise ConfigError(f"{name}={text!r}: remove the leading or trailing whitespace")
    return text


def _path(env: Mapping[str, str], name: str, default: Path, *, directory: bool) -> Path:
    text = _text(env, name)
    path = Path(text).expanduser() if text else default
    if not path.is_absolute():
        path = Path.cwd() / path
    if directory and path.exists() and not path.is_dir():
        raise ConfigError(f"{name}={path}: exists and is not a directory")
    if not directory and path.is_dir():
        raise ConfigError(f"{name}={path}: is a directory, expected a file path")
    return path


def _integer(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    text = _text(env, name)
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{name}={text!r}: not a whole number") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}={value}: must be between {low} and {high}")
    return value


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    """The variable's value, one of `choices` (the first is the default)."""
    text = _text(env, name)
    if not text:
        return choices[0]
    if text not in choices:
        raise ConfigError(f"{name}={text!r}: must be one of {', '.join(choices)}")
    return text


def redis_cluster_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """FRAUD_PLATFORM_REDIS_CLUSTER: "1" when REDIS_URL names a node of a Redis Cluster, "0" (default) else."""
    return _choice(os.environ if environ is None else environ, REDIS_CLUSTER_VAR, ("0", "1")) == "1"


TRAIN_ON_SERVED_VAR = "FRAUD_PLATFORM_TRAIN_ON_SERVED"


def train_on_served_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """FRAUD_PLATFORM_TRAIN_ON_SERVED: "1" (default) trains on the served vector of each transaction the
    stream decided (the feature log), "0" on the backfill's for every row."""
    return _choice(os.environ if environ is None else environ, TRAIN_ON_SERVED_VAR, ("1", "0")) == "1"


def _kafka(env: Mapping[str, str]) -> dict[str, object]:
    """The transport and, for Kafka, the brokers, topic prefix and extra librdkafka properties."""
    transport = _choice(env, TRANSPORT_VAR, TRANSPORTS)
    brokers = tuple(
        _broker(part.strip()) for part in env.get(KAFKA_BROKERS_VAR, "").split(",") if part.strip()
    )
    if transport == "kafka" and not brokers:
        raise ConfigError(
            f"{KAFKA_BROKERS_VAR}: required when {TRANSPORT_VAR}=kafka (comma-separated host:port)"
        )
    prefix = _text(env, KAFKA_TOPIC_PREFIX_VAR) or DEFAULT_KAFKA_TOPIC_PREFIX
    if not _TOPIC_PREFIX.fullmatch(prefix):
        raise ConfigError(
            f"{KAFKA_TOPIC_PREFIX_VAR}={prefix!r}: use 1 to 200 of the characters A-Z a-z 0-9 . _ -"
        )
    return {
        "transport": transport,
        "kafka_brokers": brokers,
        "kafka_topic_prefix": prefix,
        "kafka_config": _kafka_properties(env.get(KAFKA_CONFIG_VAR, "")),
    }


def _broker(text: str) -> str:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"{KAFKA_BROKERS_VAR}: {text!r} is not host:port (port 1 to 65535)")
    return text


def _kafka_properties(text: str) -> tuple[tuple[str, str], ...]:
    """`key=value` librdkafka properties separated by `;` or new lines. Errors never show a value."""
    properties: dict[str, str] = {}
    for number, item in enumerate((part.strip() for part in re.split(r"[;\n]", text)), start=1):
        if not item:
            continue
        key, equals, value = item.partition("=")
        key = key.strip()
        if not equals or not _KAFKA_PROPERTY.fullmatch(key):
            raise ConfigError(f"{KAFKA_CONFIG_VAR}: item {number} is not key=value (values are not shown)")
        if key in MANAGED_KAFKA_PROPERTIES:
            raise ConfigError(
                f"{KAFKA_CONFIG_VAR}: {key} is set by the platform"
                + (f" (use {KAFKA_BROKERS_VAR})" if key == "bootstrap.servers" else "")
            )
        properties[key] = value.strip()
    return tuple(properties.items())


def _check_url(name: str, url: str, schemes: tuple[str, ...]) -> None:
    parsed = urlparse(url)
    if parsed.scheme not in schemes:
        raise ConfigError(f"{name}: scheme {parsed.scheme!r} is not one of {', '.join(schemes)}")
    if parsed.scheme in ("redis", "rediss", "http", "https") and not parsed.hostname:
        raise ConfigError(f"{name}: URL has no host")
    try:
        parsed.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise ConfigError(f"{name}: URL has an invalid port") from None
