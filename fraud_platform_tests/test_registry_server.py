"""MLflow as a tracking server (the way out of one machine): the platform registers, promotes and loads a
model through `mlflow server` over HTTP, with artefacts in the server's artifact store, not in a local path."""

import dataclasses
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

from fraud_platform.config import Settings
from fraud_platform.lib.redis_server import LocalRedisServer, free_port
from fraud_platform.scoring.models import ModelWatcher
from fraud_platform.testing import register_model, scoring_settings, set_champion
from fraud_platform.training import registry


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real `mlflow server` (sqlite backend, file artifact store) on a free loopback port."""
    port = free_port()
    artifacts = tmp_path / "server-artifacts"
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{tmp_path / 'server.sqlite'}",
        "--artifacts-destination", artifacts.as_uri(),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    server = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},  # as docs/scale-out.md runs it
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while not _healthy(url):
            assert server.poll() is None, "mlflow server exited at start"
            assert time.monotonic() < deadline, "mlflow server did not answer /health"
            time.sleep(0.2)
        yield url, artifacts
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_register_promote_and_serve_through_a_tracking_server(
    tmp_path: Path,
    mlflow_server: tuple[str, Path],
    redis_server: LocalRedisServer,
    model_watcher: Callable[[Settings], ModelWatcher],
) -> None:
    url, artifacts = mlflow_server
    settings = dataclasses.replace(
        scoring_settings(tmp_path / "home", redis_server.url), mlflow_tracking_uri=url
    )
    version = register_model(settings, 1, review=0.2, decline=0.6)
    set_champion(settings, version)

    client = MlflowClient(url)
    experiment = client.get_experiment_by_name(registry.EXPERIMENT)
    assert experiment.artifact_location.startswith("mlflow-artifacts:")  # the server's store, not a path
    assert not settings.mlflow_artifact_root.exists()
    assert any(artifacts.rglob(registry.CONTRACT_FILE))

    watcher = model_watcher(settings)
    watcher.start()
    served = watcher.current()
    assert served.version == version
    assert served.thresholds.review == pytest.approx(0.2)
