"""Resources shared by the asset groups: the DuckDB warehouse, the landing zone, dbt and Redis."""

import sys
from pathlib import Path

import dagster as dg
from dagster_dbt import DbtCliResource
from dagster_duckdb import DuckDBResource

from fraud_platform.config import REDIS_URL_VAR, Settings
from fraud_platform.lib.landing import LandingZone
from fraud_platform.lib.redis_server import RedisClient, redis_client, redis_url


class LandingResource(dg.ConfigurableResource):
    """The landing zone where simulated, imported and streamed transactions arrive."""

    root: str

    def zone(self) -> LandingZone:
        """The landing zone API over `root`."""
        return LandingZone(self.root)


class RedisResource(dg.ConfigurableResource):
    """The online store. With no `url`, the configured one (REDIS_URL or the local server) at use time."""

    url: str | None = None
    feature_ttl_seconds: int

    def client(self) -> RedisClient:
        """A client for the online store (of a Redis Cluster with FRAUD_PLATFORM_REDIS_CLUSTER=1)."""
        settings = Settings.from_env()
        url = self.url or redis_url(settings)
        return redis_client(url, cluster=settings.redis_cluster, socket_connect_timeout=5, socket_timeout=30)


def _dbt_executable() -> str:
    """dbt from this interpreter's environment (works without an activated venv), else from PATH."""
    beside = Path(sys.executable).parent / "dbt"
    return str(beside) if beside.is_file() else "dbt"


def build_resources(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    """Resources bound from the platform's configuration (environment variables with defaults)."""
    from fraud_platform.defs.batch import dbt_project

    return {
        "warehouse": DuckDBResource(database=str(settings.warehouse_path)),
        "landing": LandingResource(root=str(settings.landing_dir)),
        "dbt": DbtCliResource(project_dir=dbt_project(), dbt_executable=_dbt_executable()),
        # An EnvVar, not the value: the URL may carry a password, and resource config is shown in the UI.
        "redis": RedisResource(
            url=dg.EnvVar(REDIS_URL_VAR) if settings.redis_url else None,
            feature_ttl_seconds=settings.feature_ttl_seconds,
        ),
    }
