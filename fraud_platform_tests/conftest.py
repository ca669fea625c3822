"""Shared fixtures: an isolated platform home per test and a real Redis-compatible server process."""

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from fraud_platform.config import Settings
from fraud_platform.lib.redis_server import LocalRedisServer, free_port


@pytest.fixture
def platform_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Point every setting at a fresh home under tmp_path (no REDIS_URL: the local server is used)."""
    for name in [*Settings.from_env({}).environment(), "REDIS_URL", "MLFLOW_TRACKING_URI"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FRAUD_PLATFORM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FRAUD_PLATFORM_REDIS_PORT", str(free_port()))
    return Settings.from_env()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedisServer]:
    """One real server process for the session, on a free loopback port, stopped at the end."""
    server = LocalRedisServer(tmp_path_factory.mktemp("redis"), free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def clean_redis(redis_server: LocalRedisServer) -> redis.Redis:
    """A client of the session's server, emptied for this test."""
    connection = redis_server.client()
    connection.flushdb()
    return connection


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The scoring flow freezes the heap after start-up (gc.freeze, for latency); in the test process, thaw
    and collect it so extension modules do not report the frozen objects as leaks at exit."""
    gc.unfreeze()
    gc.collect()
