"""Start the application on uvicorn with uvloop and httptools, refusing an unprotected non-loopback address."""

from __future__ import annotations

import ipaddress

import uvicorn

from fraud_platform.api.settings import API_KEY_VAR, ApiSettings
from fraud_platform.config import ConfigError, Settings

APP_FACTORY = "fraud_platform.api.app:create_app"


def is_loopback(host: str) -> bool:
    """Whether `host` is a loopback address or localhost."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(host: str, port: int, workers: int) -> None:
    """Run the server until interrupted; raise ConfigError for a non-loopback host without an API key or for
    the Kafka transport (the gateway hands transactions over Redis streams)."""
    settings, api = Settings.from_env(), ApiSettings.from_env()
    if not is_loopback(host) and api.api_key is None:
        raise ConfigError(
            f"--host {host} is not loopback: set {API_KEY_VAR} (callers send it as a bearer token)"
        )
    if settings.transport != "redis":
        raise ConfigError(
            "the authorization API hands transactions over Redis streams: transport must be redis"
        )
    uvicorn.run(
        APP_FACTORY,
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=5,
    )
