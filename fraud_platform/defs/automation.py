"""What runs the batch side by itself: a sensor on the landing zone and a daily refresh schedule."""

import json
from datetime import UTC, datetime, timedelta

import dagster as dg

from fraud_platform.defs.raw import BATCH_HORIZON_TAG, CONTEXT_ASSETS, LANDING_DAYS, raw_transactions
from fraud_platform.defs.resources import LandingResource
from fraud_platform.lib.landing import BatchHorizon, BatchManifest

# A batch is stamped (created_at) just before it is published, so none appears later than this after a newer
# one: batches older than the newest seen minus this are taken as seen, and the cursor stays small.
SEEN_HORIZON = timedelta(hours=1)

BATCH_SIDE = dg.AssetSelection.groups("batch_features", "labels", "realtime_features", "online")

batch_refresh_job = dg.define_asset_job(
    "batch_refresh",
    selection=BATCH_SIDE,
    description="Rebuild the dbt features and labels, backfill real-time features, load the latest snapshots into Redis.",
)

load_landing_job = dg.define_asset_job(
    "load_landing",
    selection=dg.AssetSelection.assets(raw_transactions, *CONTEXT_ASSETS),
    description="Load the landing zone into the warehouse's raw tables (the days given by the run's partition "
    "range) and run their checks.",
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
    """One run for the new batches' days (a single-run range) and one for their context tables, which reads
    only the batches this tick saw (runs execute one at a time, in order: a claim never comes before the
    transactions it refers to).

    The cursor is a watermark and the ids of the batches seen since it (a plain list of ids from earlier
    versions is read as ids with no watermark).
    """
    watermark, seen = _read_cursor(context.cursor)
    batches = landing.zone().batches()
    new_batches = [
        manifest for manifest in batches if manifest.batch_id not in seen and _created(manifest) >= watermark
    ]
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
                run_key=f"context:{run_key}",
                asset_selection=[asset.key for asset in CONTEXT_ASSETS],
                tags={BATCH_HORIZON_TAG: BatchHorizon.of(batches).to_json()},
            )
        )
    return dg.SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=[LANDING_DAYS.build_add_request(added)] if added else [],
        cursor=_write_cursor(batches, seen | {manifest.batch_id for manifest in new_batches}),
    )


def _created(manifest: BatchManifest) -> datetime:
    return datetime.fromisoformat(manifest.created_at)


def _read_cursor(cursor: str | None) -> tuple[datetime, set[str]]:
    """The landing sensor's watermark and the batch ids seen at or after it."""
    state = json.loads(cursor or "[]")
    if isinstance(state, list):
        return datetime.min.replace(tzinfo=UTC), set(state)
    return datetime.fromisoformat(state["watermark"]), set(state["seen"])


def _write_cursor(batches: list[BatchManifest], seen: set[str]) -> str:
    """The newest seen batch's time minus SEEN_HORIZON, and the seen batches stamped at or after it."""
    watermark = max(_created(manifest) for manifest in batches if manifest.batch_id in seen) - SEEN_HORIZON
    recent = sorted(
        manifest.batch_id
        for manifest in batches
        if manifest.batch_id in seen and _created(manifest) >= watermark
    )
    return json.dumps({"watermark": watermark.isoformat(), "seen": recent})
