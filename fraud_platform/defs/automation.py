"""What runs the batch side by itself: a sensor on the landing zone and a daily refresh schedule."""

import json

import dagster as dg

from fraud_platform.defs.raw import CONTEXT_ASSETS, LANDING_DAYS, raw_transactions
from fraud_platform.defs.resources import LandingResource

BATCH_SIDE = dg.AssetSelection.groups("batch_features", "labels", "realtime_features", "online")

batch_refresh_job = dg.define_asset_job(
    "batch_refresh",
    selection=BATCH_SIDE,
    description="Rebuild the dbt features and labels, backfill real-time features, load the latest snapshots into Redis.",
)

daily_batch_refresh = dg.ScheduleDefinition(
    name="daily_batch_refresh",
    job=batch_refresh_job,
    cron_schedule="0 2 * * *",
    execution_timezone="UTC",
    description="Every day at 02:00 UTC: yesterday's snapshots into the warehouse and the online store.",
)


@dg.sensor(
    minimum_interval_seconds=30,
    asset_selection=dg.AssetSelection.assets(raw_transactions, *CONTEXT_ASSETS),
    description="Loads new landing batches: adds their days as partitions and materialises them.",
)
def landing_sensor(context: dg.SensorEvaluationContext, landing: LandingResource) -> dg.SensorResult:
    """One run for the new batches' days (a single-run range) and one for their context tables."""
    seen = set(json.loads(context.cursor or "[]"))
    new_batches = [manifest for manifest in landing.zone().batches() if manifest.batch_id not in seen]
    if not new_batches:
        return dg.SensorResult(skip_reason="no new landing batch")
    known = list(context.instance.get_dynamic_partitions(LANDING_DAYS.name))
    days = sorted({day for manifest in new_batches for day in manifest.days})
    added = [day for day in days if day not in set(known)]
    order = {day: position for position, day in enumerate(known + added)}
    run_key = ",".join(manifest.batch_id for manifest in new_batches)
    run_requests = []
    if days:
        first, last = min(days, key=order.__getitem__), max(days, key=order.__getitem__)
        run_requests.append(
            dg.RunRequest(
                run_key=f"transactions:{run_key}",
                asset_selection=[raw_transactions.key],
                tags={
                    "dagster/asset_partition_range_start": first,
                    "dagster/asset_partition_range_end": last,
                },
            )
        )
    if any(manifest.tables for manifest in new_batches):
        run_requests.append(
            dg.RunRequest(
                run_key=f"context:{run_key}", asset_selection=[asset.key for asset in CONTEXT_ASSETS]
            )
        )
    return dg.SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=[LANDING_DAYS.build_add_request(added)] if added else [],
        cursor=json.dumps(sorted(seen | {manifest.batch_id for manifest in new_batches})),
    )
