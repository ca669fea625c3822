"""The Dagster code location: every asset group, check, resource, schedule and sensor of the platform."""

import dagster as dg

from fraud_platform.config import Settings
from fraud_platform.defs.automation import (
    batch_refresh_job,
    daily_batch_refresh,
    landing_sensor,
    load_landing_job,
)
from fraud_platform.defs.batch import build_dbt_assets
from fraud_platform.defs.monitoring import (
    MONITORING_ASSETS,
    build_monitoring_resources,
    daily_monitoring,
    monitoring_job,
    monitoring_retrain_sensor,
)
from fraud_platform.defs.online import online_batch_features, online_load_job
from fraud_platform.defs.raw import RAW_ASSETS, RAW_CHECKS
from fraud_platform.defs.realtime import REALTIME_ASSETS
from fraud_platform.defs.resources import build_resources
from fraud_platform.defs.stream import STREAM_SPECS, with_stream_upstream
from fraud_platform.defs.training import (
    build_training_resources,
    fraud_model,
    retrain_sensor,
    training_dataset,
    training_job,
    weekly_retrain,
)


@dg.definitions
def defs() -> dg.Definitions:
    """Build the definitions from the current configuration (loaded lazily by Dagster tools)."""
    settings = Settings.from_env()
    return dg.Definitions(
        assets=[
            *with_stream_upstream(RAW_ASSETS),
            build_dbt_assets(),
            *REALTIME_ASSETS,
            online_batch_features,
            *STREAM_SPECS,
            training_dataset,
            fraud_model,
            *MONITORING_ASSETS,
        ],
        asset_checks=RAW_CHECKS,
        jobs=[load_landing_job, batch_refresh_job, online_load_job, training_job, monitoring_job],
        schedules=[daily_batch_refresh, weekly_retrain, daily_monitoring],
        sensors=[landing_sensor, retrain_sensor, monitoring_retrain_sensor],
        resources={
            **build_resources(settings),
            **build_training_resources(settings),
            **build_monitoring_resources(),
        },
        # DuckDB allows one writing process per file: run the steps of a run in one process.
        executor=dg.in_process_executor,
    )
