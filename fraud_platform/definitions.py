"""The Dagster code location: every asset group, resource, schedule and sensor of the platform."""

import dagster as dg

from fraud_platform.config import Settings
from fraud_platform.defs.raw import RAW_ASSETS
from fraud_platform.defs.resources import build_resources


@dg.definitions
def defs() -> dg.Definitions:
    """Build the definitions from the current configuration (loaded lazily by Dagster tools)."""
    return dg.Definitions(
        assets=RAW_ASSETS,
        resources=build_resources(Settings.from_env()),
        # DuckDB allows one writing process per file: run the steps of a run in one process.
        executor=dg.in_process_executor,
    )
