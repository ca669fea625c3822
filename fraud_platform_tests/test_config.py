"""Configuration: defaults under one home, and a clear error naming the variable for every bad value."""

from pathlib import Path

import pytest

from fraud_platform.config import ConfigError, Settings, masked_url


def test_defaults_live_under_one_home(tmp_path: Path) -> None:
    settings = Settings.from_env({"FRAUD_PLATFORM_HOME": str(tmp_path)})
    assert settings.home == tmp_path
    assert settings.dagster_home == tmp_path / "dagster"
    assert settings.warehouse_path == tmp_path / "warehouse.duckdb"
    assert settings.landing_dir == tmp_path / "landing"
    assert settings.mlflow_tracking_uri == f"sqlite:///{tmp_path}/mlflow/mlflow.db"
    assert settings.redis_url is None
    assert settings.label_maturity_days == 180
    assert (settings.model_refresh_seconds, settings.scoring_mode) == (30, "model")
    assert settings.reason_codes == "approximate"
    assert settings.marker_ttl_seconds == settings.feature_ttl_seconds == 3 * 86_400


def test_environment_round_trips(tmp_path: Path) -> None:
    settings = Settings.from_env({"FRAUD_PLATFORM_HOME": str(tmp_path), "REDIS_URL": "redis://h:1/0"})
    assert Settings.from_env(settings.environment()) == settings


def test_explicit_values_win(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "FRAUD_PLATFORM_HOME": str(tmp_path),
            "REDIS_URL": "rediss://:secret@cache.example:6380/2",
            "FRAUD_PLATFORM_LABEL_MATURITY_DAYS": "30",
            "DAGSTER_HOME": str(tmp_path / "elsewhere"),
            "FRAUD_PLATFORM_MODEL_REFRESH_SECONDS": "5",
            "FRAUD_PLATFORM_SCORING_MODE": "rules",
            "FRAUD_PLATFORM_MARKER_TTL_SECONDS": "86400",
        }
    )
    assert (settings.model_refresh_seconds, settings.scoring_mode) == (5, "rules")
    assert (settings.marker_ttl_seconds, settings.feature_ttl_seconds) == (86_400, 3 * 86_400)
    assert settings.redis_url == "rediss://:secret@cache.example:6380/2"
    assert settings.label_maturity_days == 30
    assert settings.dagster_home == tmp_path / "elsewhere"
    assert "secret" not in repr(settings)  # URLs with passwords stay out of logs and tracebacks


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("REDIS_URL", "http://localhost:6379", "REDIS_URL: scheme 'http'"),
        ("REDIS_URL", "redis://", "REDIS_URL: URL has no host"),
        ("REDIS_URL", "redis://localhost:notaport", "REDIS_URL: URL has an invalid port"),
        ("MLFLOW_TRACKING_URI", "ftp://x", "MLFLOW_TRACKING_URI: scheme 'ftp'"),
        ("FRAUD_PLATFORM_REDIS_PORT", "abc", "FRAUD_PLATFORM_REDIS_PORT='abc': not a whole number"),
        ("FRAUD_PLATFORM_REDIS_PORT", "80", "FRAUD_PLATFORM_REDIS_PORT=80: must be between 1024 and 65535"),
        ("FRAUD_PLATFORM_LABEL_MATURITY_DAYS", "0", "FRAUD_PLATFORM_LABEL_MATURITY_DAYS=0: must be between"),
        (
            "FRAUD_PLATFORM_MODEL_REFRESH_SECONDS",
            "0",
            "FRAUD_PLATFORM_MODEL_REFRESH_SECONDS=0: must be between",
        ),
        (
            "FRAUD_PLATFORM_SCORING_MODE",
            "magic",
            "FRAUD_PLATFORM_SCORING_MODE='magic': must be one of model, rules",
        ),
        (
            "FRAUD_PLATFORM_MARKER_TTL_SECONDS",
            "30",
            "FRAUD_PLATFORM_MARKER_TTL_SECONDS=30: must be between 60 and 31536000",
        ),
        (
            "FRAUD_PLATFORM_REASON_CODES",
            "shap",
            "FRAUD_PLATFORM_REASON_CODES='shap': must be one of approximate, exact",
        ),
    ],
)
def test_bad_values_name_the_variable(tmp_path: Path, name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        Settings.from_env({"FRAUD_PLATFORM_HOME": str(tmp_path), name: value})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FRAUD_PLATFORM_REDIS_PORT", " 6503"),
        ("FRAUD_PLATFORM_STREAM_SHARDS", "4\n"),
        ("FRAUD_PLATFORM_SCORING_MODE", "rules "),
        ("REDIS_URL", " redis://localhost:6379/0"),
        ("FRAUD_PLATFORM_WAREHOUSE", "/tmp/w.duckdb "),
        ("FRAUD_PLATFORM_MAX_EVENT_AGE_DAYS", "\t30"),
    ],
)
def test_values_with_stray_whitespace_are_refused_naming_the_variable(
    tmp_path: Path, name: str, value: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"FRAUD_PLATFORM_HOME": str(tmp_path), name: value})
    assert str(refused.value) == f"{name}={value!r}: remove the leading or trailing whitespace"


def test_the_event_window_settings_and_masked_urls(tmp_path: Path) -> None:
    settings = Settings.from_env({"FRAUD_PLATFORM_HOME": str(tmp_path)})
    assert (settings.max_event_age_days, settings.max_event_future_seconds) == (30, 300)
    with pytest.raises(ConfigError, match="FRAUD_PLATFORM_MAX_EVENT_AGE_DAYS=0: must be between 1 and"):
        Settings.from_env({"FRAUD_PLATFORM_HOME": str(tmp_path), "FRAUD_PLATFORM_MAX_EVENT_AGE_DAYS": "0"})
    assert masked_url("redis://:s3cret@10.0.0.5:6379/0") == "redis://:***@10.0.0.5:6379/0"
    assert masked_url("rediss://app:p%40ss@cache:6380") == "rediss://app:***@cache:6380"
    assert (
        masked_url("unix:///run/redis.sock?db=1&password=s3cret")
        == "unix:///run/redis.sock?db=1&password=***"
    )
    assert masked_url("redis://cache:6379/0") == "redis://cache:6379/0"


def test_paths_of_the_wrong_kind_are_refused(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(ConfigError, match=r"FRAUD_PLATFORM_HOME=.*not a directory"):
        Settings.from_env({"FRAUD_PLATFORM_HOME": str(a_file)})
    with pytest.raises(ConfigError, match=r"FRAUD_PLATFORM_WAREHOUSE=.*is a directory"):
        Settings.from_env({"FRAUD_PLATFORM_HOME": str(tmp_path), "FRAUD_PLATFORM_WAREHOUSE": str(tmp_path)})


def test_transport_defaults_to_redis_and_kafka_settings_round_trip(tmp_path: Path) -> None:
    home = {"FRAUD_PLATFORM_HOME": str(tmp_path)}
    default = Settings.from_env(home)
    assert (default.transport, default.kafka_brokers, default.kafka_topic_prefix) == (
        "redis",
        (),
        "fraud-platform",
    )
    kafka = Settings.from_env(
        {
            **home,
            "FRAUD_PLATFORM_TRANSPORT": "kafka",
            "FRAUD_PLATFORM_KAFKA_BROKERS": " kafka-0:9092, [::1]:9093 ,",
            "FRAUD_PLATFORM_KAFKA_TOPIC_PREFIX": "risk.prod",
        }
    )
    assert kafka.kafka_brokers == ("kafka-0:9092", "[::1]:9093")
    assert kafka.kafka_topic_prefix == "risk.prod"
    assert Settings.from_env(kafka.environment()) == kafka


def test_kafka_security_properties_are_parsed_and_never_shown(tmp_path: Path) -> None:
    config = (
        "security.protocol=SASL_SSL; sasl.mechanisms=SCRAM-SHA-512\nsasl.username=fraud;sasl.password=s3cr=t"
    )
    settings = Settings.from_env(
        {"FRAUD_PLATFORM_HOME": str(tmp_path), "FRAUD_PLATFORM_KAFKA_CONFIG": config}
    )
    assert dict(settings.kafka_config) == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanisms": "SCRAM-SHA-512",
        "sasl.username": "fraud",
        "sasl.password": "s3cr=t",
    }
    assert "s3cr=t" not in repr(settings)
    assert "s3cr=t" not in " ".join(settings.environment().values())
    with pytest.raises(ConfigError) as bad:
        Settings.from_env(
            {"FRAUD_PLATFORM_HOME": str(tmp_path), "FRAUD_PLATFORM_KAFKA_CONFIG": "sasl.password s3cr"}
        )
    assert "s3cr" not in str(bad.value)


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        (
            {"FRAUD_PLATFORM_TRANSPORT": "kafka"},
            "FRAUD_PLATFORM_KAFKA_BROKERS: required when FRAUD_PLATFORM_TRANSPORT=kafka",
        ),
        (
            {"FRAUD_PLATFORM_TRANSPORT": "nats"},
            "FRAUD_PLATFORM_TRANSPORT='nats': must be one of redis, kafka",
        ),
        (
            {"FRAUD_PLATFORM_KAFKA_BROKERS": "kafka-0"},
            "FRAUD_PLATFORM_KAFKA_BROKERS: 'kafka-0' is not host:port",
        ),
        (
            {"FRAUD_PLATFORM_KAFKA_BROKERS": "k:99999"},
            "FRAUD_PLATFORM_KAFKA_BROKERS: 'k:99999' is not host:port",
        ),
        (
            {"FRAUD_PLATFORM_KAFKA_TOPIC_PREFIX": "a/b"},
            "FRAUD_PLATFORM_KAFKA_TOPIC_PREFIX='a/b': use 1 to 200",
        ),
        (
            {"FRAUD_PLATFORM_KAFKA_CONFIG": "acks=all;sasl.password"},
            "FRAUD_PLATFORM_KAFKA_CONFIG: item 2 is not key=value",
        ),
        (
            {"FRAUD_PLATFORM_KAFKA_CONFIG": "bootstrap.servers=x:1"},
            "FRAUD_PLATFORM_KAFKA_CONFIG: bootstrap.servers is set by the platform .use FRAUD_PLATFORM_KAFKA_BROKERS",
        ),
        (
            {"FRAUD_PLATFORM_KAFKA_CONFIG": "group.id=g"},
            "FRAUD_PLATFORM_KAFKA_CONFIG: group.id is set by the platform",
        ),
    ],
)
def test_bad_kafka_settings_name_the_variable(
    tmp_path: Path, variables: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env({"FRAUD_PLATFORM_HOME": str(tmp_path), **variables})
