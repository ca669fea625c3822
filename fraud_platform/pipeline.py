"""Run the batch side from the command line, recorded in the same Dagster instance `dagster dev` shows."""

import os

import dagster as dg

from fraud_platform.config import DAGSTER_HOME_VAR, Settings
from fraud_platform.defs.raw import LANDING_DAYS
from fraud_platform.defs.resources import build_resources
from fraud_platform.home import prepare_home
from fraud_platform.lib.landing import LandingError, LandingZone
from fraud_platform.lib.redis_server import require_server

# Runs started from the command line log warnings only; the full event log is in the Dagster UI.
QUIET_CONSOLE = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def instance_for(settings: Settings) -> dg.DagsterInstance:
    """The persistent Dagster instance under the configured DAGSTER_HOME."""
    prepare_home(settings)
    os.environ[DAGSTER_HOME_VAR] = str(settings.dagster_home)
    return dg.DagsterInstance.get()


def register_landing_days(instance: dg.DagsterInstance, zone: LandingZone) -> list[str]:
    """Add every landed day as a partition of raw.transactions; return the days that were new."""
    known = set(instance.get_dynamic_partitions(LANDING_DAYS.name))
    new_days = [day for day in zone.days() if day not in known]
    if new_days:
        instance.add_dynamic_partitions(LANDING_DAYS.name, new_days)
    return new_days


def run_job(
    instance: dg.DagsterInstance,
    name: str,
    ops_config: dict | None = None,
    *,
    resources: dict[str, dg.ConfigurableResource] | None = None,
    partition_key: str | None = None,
    tags: dict[str, str] | None = None,
) -> dg.ExecuteInProcessResult:
    """Run one named job of the code location in this process, recorded in `instance` under its name;
    `resources` replace the configured ones (a caller's own settings)."""
    from fraud_platform.definitions import defs

    job = defs().resolve_job_def(name)
    run_config = {**QUIET_CONSOLE, "ops": ops_config} if ops_config else QUIET_CONSOLE
    return job.execute_in_process(
        instance=instance,
        run_config=run_config,
        raise_on_error=False,
        resources=resources,
        partition_key=partition_key,
        tags=tags,
    )


def _online_config(snapshot_date: str) -> dict:
    return {"online__batch_features": {"config": {"snapshot_date": snapshot_date}}}


def failure_causes(result: dg.ExecuteInProcessResult) -> list[str]:
    """The root cause of each failed step, `step: message` (the innermost exception's first line, not
    Dagster's "Error occurred while executing op")."""
    causes = []
    for event in result.all_events:
        if not (event.is_step_failure and event.step_failure_data.error):
            continue
        error = event.step_failure_data.error
        while error.cause is not None:
            error = error.cause
        message = error.message.strip().splitlines()[0] if error.message.strip() else error.cls_name
        name, separator, text = message.partition(": ")  # "package.module.Class: text"
        if separator and name.rpartition(".")[2] == error.cls_name:
            message = text
        causes.append(f"{event.step_key}: {message}")
    return causes


def refresh_batch_side(instance: dg.DagsterInstance, snapshot_date: str = "") -> dg.ExecuteInProcessResult:
    """dbt features and labels (with their tests), the real-time feature backfill, then the online load of
    the latest snapshots (or of `snapshot_date`'s: the ones that serve the day after it).

    The online store must answer first (RedisServerError otherwise): a run would build everything before
    finding out."""
    require_server(Settings.from_env())
    return run_job(instance, "batch_refresh", _online_config(snapshot_date) if snapshot_date else None)


def load_online(
    settings: Settings, instance: dg.DagsterInstance, snapshot_date: str = ""
) -> dg.ExecuteInProcessResult:
    """Only the online load: the snapshots of `snapshot_date` (the latest when empty) into Redis, which must
    answer first (RedisServerError)."""
    require_server(settings)
    return run_job(
        instance, "load_online", _online_config(snapshot_date), resources=build_resources(settings)
    )


def train_model(
    instance: dg.DagsterInstance, windows: dict | None = None, search: dict | None = None
) -> dg.ExecuteInProcessResult:
    """The training dataset, a new model version in MLflow and the champion/challenger decision; `windows`
    (TrainingWindows fields) and `search` (ModelSearch fields) are the run's config, the settings' otherwise."""
    ops_config = {
        **({"training__dataset": {"config": windows}} if windows else {}),
        **({"training__model": {"config": search}} if search else {}),
    }
    return run_job(instance, "train_model", ops_config or None)


def load_landing(settings: Settings, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    """Materialise every raw asset over every landed day in one run."""
    register_landing_days(instance, LandingZone(settings.landing_dir))
    days = instance.get_dynamic_partitions(LANDING_DAYS.name)
    if not days:
        raise LandingError(
            f"the landing zone {settings.landing_dir} is empty: run 'fraud-platform simulate' or "
            "'fraud-platform import FILE' first"
        )
    return run_job(
        instance,
        "load_landing",
        resources=build_resources(settings),
        tags={
            "dagster/asset_partition_range_start": days[0],
            "dagster/asset_partition_range_end": days[-1],
        },
    )


def monitoring_resources(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    """Resources of the monitoring group: the warehouse, MLflow, label maturity and the default thresholds."""
    from fraud_platform.defs.monitoring import build_monitoring_resources
    from fraud_platform.defs.training import build_training_resources

    return {**build_resources(settings), **build_training_resources(settings), **build_monitoring_resources()}


def monitor_days(
    settings: Settings, instance: dg.DagsterInstance, days: list[str]
) -> list[dg.ExecuteInProcessResult]:
    """Run the `monitor` job for each landed day (one run per `decision_day` partition, added first),
    recorded in `instance`."""
    from fraud_platform.defs.monitoring import DECISION_DAYS

    register_landing_days(instance, LandingZone(settings.landing_dir))
    known = set(instance.get_dynamic_partitions(LANDING_DAYS.name))
    unknown = [day for day in days if day not in known]
    if unknown:
        raise LandingError(f"no landed transactions on {', '.join(unknown)}: nothing to monitor there")
    monitored = set(instance.get_dynamic_partitions(DECISION_DAYS.name))
    new_days = [day for day in days if day not in monitored]
    if new_days:
        instance.add_dynamic_partitions(DECISION_DAYS.name, new_days)
    resources = monitoring_resources(settings)
    return [run_job(instance, "monitor", resources=resources, partition_key=day) for day in days]
