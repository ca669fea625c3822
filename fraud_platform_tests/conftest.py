"""Shared fixtures: an isolated platform home per test and a real Redis-compatible server process."""

import gc
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from fraud_platform.config import Settings
from fraud_platform.lib.redis_server import LocalRedisServer, free_port
from fraud_platform.scoring.models import ModelWatcher


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


# The platform's background threads (the model watcher's refresher, the metrics heartbeat, the feature log's
# publisher): a test that starts one stops it, or its frames (and all they reach) outlive the test run.
PLATFORM_THREADS = ("model-refresh", "scoring-metrics", "feature-log-")


def _platform_threads() -> set[threading.Thread]:
    return {thread for thread in threading.enumerate() if thread.name.startswith(PLATFORM_THREADS)}


@pytest.fixture(autouse=True)
def no_platform_thread_left() -> Iterator[None]:
    """Fail a test that leaves a platform background thread running."""
    before = _platform_threads()
    yield
    left = _platform_threads() - before
    for thread in left:
        thread.join(timeout=5)  # one that is stopping gets its moment
    running = sorted(thread.name for thread in left if thread.is_alive())
    assert not running, f"the test left platform threads running: {running}"


@pytest.fixture
def model_watcher() -> Iterator[Callable[[Settings], ModelWatcher]]:
    """Build ModelWatchers that are stopped when the test ends."""
    built: list[ModelWatcher] = []

    def build(settings: Settings) -> ModelWatcher:
        built.append(ModelWatcher(settings))
        return built[-1]

    yield build
    for watcher in built:
        watcher.stop()


_GC_CALLBACKS = pytest.StashKey[list]()  # gc.callbacks when the session started


def pytest_sessionstart(session: pytest.Session) -> None:
    """Remember the garbage collector's callbacks the session starts with (see pytest_sessionfinish)."""
    session.stash[_GC_CALLBACKS] = list(gc.callbacks)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Leave the garbage collector as the session found it, so extension modules report no leaks at exit.

    The scoring flow freezes the heap after start-up (gc.freeze, for latency): thaw and collect it. Hypothesis
    adds a callback timing every collection and never removes it: left in place at exit, DuckDB's bindings
    reported their whole module as leaked (one @given test and test_monitoring in one run: 39 lines; none with
    the callback removed here)."""
    gc.callbacks[:] = session.stash[_GC_CALLBACKS]
    gc.unfreeze()
    gc.collect()
