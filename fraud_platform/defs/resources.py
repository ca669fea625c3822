"""Resources shared by the asset groups: the DuckDB warehouse and the landing zone."""

import dagster as dg
from dagster_duckdb import DuckDBResource

from fraud_platform.config import Settings
from fraud_platform.lib.landing import LandingZone


class LandingResource(dg.ConfigurableResource):
    """The landing zone where simulated, imported and streamed transactions arrive."""

    root: str

    def zone(self) -> LandingZone:
        """The landing zone API over `root`."""
        return LandingZone(self.root)


def build_resources(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    """Resources bound from the platform's configuration (environment variables with defaults)."""
    return {
        "warehouse": DuckDBResource(database=str(settings.warehouse_path)),
        "landing": LandingResource(root=str(settings.landing_dir)),
    }
