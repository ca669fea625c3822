"""The main job's monitoring demonstration: an injected drift, and the verdict in plain words.

    python -m fraud_platform.monitoring.demo drift DAY      # break the GPS of DAY's landed transactions
    python -m fraud_platform.monitoring.demo verdict FIRST LAST   # what monitoring found, what it asks for

`drift` plays an upstream fault a real platform meets: a terminal SDK release that reports coordinates with a
few degrees of jitter. It rewrites the day's landed transaction files (never the stream's own feature log) with
each latitude and longitude moved by up to `GPS_JITTER_DEGREES`, seeded. Replayed afterwards, the day's
`km_from_prev_txn` and `speed_kmh_from_prev_txn` (and through them the score) drift while every other feature
stays: the drift check fails on exactly those at ERROR and the monitoring retrain sensor requests a training
run. `verdict` evaluates that sensor once and says, per monitored day, which checks failed.
"""

import argparse
import sys
import warnings
from collections.abc import Sequence
from datetime import date, timedelta

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fraud_platform.config import Settings
from fraud_platform.lib.bus import STREAM_SOURCE
from fraud_platform.lib.landing import LandingError, LandingZone

GPS_JITTER_DEGREES = 2.0
_SEED = 7


def jitter_coordinates(zone: LandingZone, day: str, degrees: float = GPS_JITTER_DEGREES) -> int:
    """Move every coordinate of `day`'s landed transactions by up to `degrees` (uniform, seeded), in place;
    return the rows changed. Raises LandingError when nothing landed that day."""
    files = zone.transaction_files(day, exclude_source=STREAM_SOURCE)
    if not files:
        raise LandingError(f"no landed transactions on {day}: nothing to drift")
    rng = np.random.default_rng(_SEED)
    changed = 0
    for path in files:
        table = pq.read_table(path)
        for name in ("lat", "lon"):
            column = table.column(name)
            values = pc.add(column, pa.array(rng.uniform(-degrees, degrees, table.num_rows)))
            table = table.set_column(table.schema.get_field_index(name), table.schema.field(name), values)
        pq.write_table(table, path)
        changed += table.num_rows
    return changed


def _days(first: str, last: str) -> list[str]:
    start, end = date.fromisoformat(first), date.fromisoformat(last)
    return [(start + timedelta(days=offset)).isoformat() for offset in range((end - start).days + 1)]


def verdict(settings: Settings, instance: dg.DagsterInstance, days: Sequence[str]) -> list[str]:
    """Plain-words lines: each day's failed monitoring checks, then whether retraining is requested."""
    from fraud_platform.defs.monitoring import (
        DECISION_DAYS,
        RETRAIN_REASON_TAG,
        MonitoringSettings,
        monitoring_retrain_sensor,
    )

    lines = []
    checks = sorted(_check_keys(dg.AssetSelection.groups("monitoring")), key=lambda key: key.to_user_string())
    monitored = set(instance.get_dynamic_partitions(DECISION_DAYS.name))
    for day in days:
        if day not in monitored:
            lines.append(f"{day}: not monitored")
            continue
        failed = []
        for key in checks:
            records = instance.event_log_storage.get_asset_check_execution_history(key, limit=50)
            newest = next((r for r in records if r.evaluation is not None and _day_of(r) == day), None)
            if newest and not newest.evaluation.passed:
                reason = getattr(newest.evaluation.metadata.get("reason"), "value", "")
                failed.append(f"{key.name} ({newest.evaluation.severity.value}: {reason})")
        if not failed:
            lines.append(f"{day}: every check passed")
        else:
            word = "FAILED" if any("(ERROR:" in text for text in failed) else "warning"
            lines.append(f"{day}: {word} " + "; ".join(failed))
    context = dg.build_sensor_context(instance=instance, resources={"monitoring": MonitoringSettings()})
    result = monitoring_retrain_sensor(context)
    if result.run_requests:
        lines.append(
            "retraining requested by the monitoring sensor: "
            + result.run_requests[0].tags[RETRAIN_REASON_TAG]
        )
    else:
        skipped = result.skip_reason.skip_message if result.skip_reason else "no request"
        lines.append(f"no retraining requested ({skipped})")
    return lines


def _day_of(record: object) -> str:
    """The day an evaluation judged (its `day` metadata, as the retrain sensor reads it)."""
    day = record.evaluation.metadata.get("day")  # type: ignore[attr-defined]
    return getattr(day, "value", None) or getattr(record, "partition", None) or "-"


def _check_keys(selection: dg.AssetSelection) -> list[dg.AssetCheckKey]:
    from fraud_platform.definitions import defs

    graph = defs().resolve_asset_graph()
    return list(selection.resolve_checks(graph))


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m fraud_platform.monitoring.demo")
    commands = parser.add_subparsers(dest="command", required=True)
    drift = commands.add_parser("drift", help="jitter the GPS coordinates of one landed day")
    drift.add_argument("day", type=date.fromisoformat)
    judged = commands.add_parser("verdict", help="failed checks per day and the retrain sensor's answer")
    judged.add_argument("first", type=date.fromisoformat)
    judged.add_argument("last", type=date.fromisoformat)
    args = parser.parse_args(argv)
    # Single-run backfills (raw/transactions) are a beta Dagster parameter: known, deliberate (as in the CLI).
    warnings.filterwarnings("ignore", message="Parameter `backfill_policy`")
    settings = Settings.from_env()
    if args.command == "drift":
        rows = jitter_coordinates(LandingZone(settings.landing_dir), args.day.isoformat())
        print(
            f"drift injected on {args.day}: GPS of {rows:,} transactions jittered by up to {GPS_JITTER_DEGREES} deg"
        )
        return 0
    from fraud_platform.pipeline import instance_for

    for line in verdict(
        settings, instance_for(settings), _days(args.first.isoformat(), args.last.isoformat())
    ):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
