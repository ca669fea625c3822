"""The `fraud-platform` command line: set-up, the local Redis server, data in (simulate, import) and loading.

Heavy libraries (Dagster, pandas) are imported inside the commands that need them so `--help` stays fast.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import redis.exceptions as redis_errors

from fraud_platform.config import DEFAULT_MAX_REJECT_SHARE, ConfigError, Settings
from fraud_platform.lib.landing import LandingError, LandingZone
from fraud_platform.lib.redis_server import LocalRedisServer, RedisServerError, unreachable

if TYPE_CHECKING:
    from fraud_platform.api.client import Authorizer


class PlatformGroup(click.Group):
    """A click group that turns the platform's known errors into a one-line message and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; known errors become `Error: ...` instead of a traceback, and a Redis server that
        does not answer is named (without its password) with the fix."""
        from fraud_platform.lib.importer import ImportFileError

        # Single-run backfills (raw/transactions) are a beta Dagster parameter: known, deliberate.
        warnings.filterwarnings("ignore", message="Parameter `backfill_policy`")
        try:
            return super().invoke(ctx)
        except (ConfigError, RedisServerError, LandingError, ImportFileError) as error:
            raise click.ClickException(str(error)) from error
        except (redis_errors.ConnectionError, redis_errors.TimeoutError) as error:
            raise click.ClickException(str(unreachable(_settings(), error))) from error


_DAY = click.DateTime(formats=["%Y-%m-%d"])
_EPOCH = date(1970, 1, 1)


def _settings() -> Settings:
    return Settings.from_env()


@contextmanager
def progress_bar(total: int | None, unit: str, description: str) -> Iterator[Callable[[int], None]]:
    """A tqdm bar on stderr with counts and rate; yields the function that advances it."""
    from tqdm import tqdm

    with tqdm(
        total=total, unit=unit, unit_scale=True, desc=description, file=sys.stderr, mininterval=0.5
    ) as bar:
        yield bar.update


@click.group(cls=PlatformGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Real-time card-fraud detection platform.

    Configuration comes from environment variables (see README): FRAUD_PLATFORM_HOME, REDIS_URL,
    FRAUD_PLATFORM_REDIS_PORT, MLFLOW_TRACKING_URI, DAGSTER_HOME, FRAUD_PLATFORM_WAREHOUSE,
    FRAUD_PLATFORM_LANDING, FRAUD_PLATFORM_LABEL_MATURITY_DAYS.
    """


@main.command(short_help="Create the project home, the landing zone and DAGSTER_HOME.")
def init() -> None:
    """Create the project home, the landing zone and DAGSTER_HOME with its dagster.yaml."""
    from fraud_platform.home import prepare_home

    settings = _settings()
    prepare_home(settings)
    click.echo(f"home ready: {settings.home} (DAGSTER_HOME={settings.dagster_home})")


@main.command(short_help="Print the configuration as shell exports.")
@click.option("--show-secrets", is_flag=True, help="Print passwords in URLs as they are.")
def env(show_secrets: bool) -> None:
    """Print the configuration as shell exports, e.g. `eval "$(fraud-platform env)"` before `dagster dev`.

    A URL with a password (REDIS_URL, MLFLOW_TRACKING_URI) is printed masked and commented out, so the
    eval keeps the value already in the environment; --show-secrets prints it as it is."""
    import shlex

    from fraud_platform.config import masked_url

    for name, value in _settings().environment().items():
        masked = value if show_secrets else masked_url(value)
        prefix = "" if masked == value else "# (password hidden: --show-secrets) "
        click.echo(f"{prefix}export {name}={shlex.quote(masked)}")


_UI_PORTS = {"dagster": 3000, "mlflow": 5000}


@main.command(short_help="Start the Dagster or MLflow UI on 127.0.0.1.")
@click.argument("app", type=click.Choice(sorted(_UI_PORTS)))
@click.option(
    "--port", type=click.IntRange(1, 65535), help="Port on 127.0.0.1 [default: 3000 dagster, 5000 mlflow]."
)
def ui(app: str, port: int | None) -> None:
    """Start `dagster dev` or `mlflow ui` on 127.0.0.1 with the platform's configuration (DAGSTER_HOME, the
    tracking URI, label maturity and the rest of `fraud-platform env`); Ctrl-C stops it.

    The UI replaces this process, so signals reach it directly. The Dagster UI needs the dbt manifest that
    `source scripts/setup.sh` builds."""
    from fraud_platform.config import project_root
    from fraud_platform.home import prepare_home

    settings = _settings()
    prepare_home(settings)
    root = project_root()
    port = port or _UI_PORTS[app]
    python = sys.executable
    environment = {
        **os.environ,
        **settings.environment(),
        "DO_NOT_TRACK": "1",
        "DBT_PROFILES_DIR": str(root / "dbt_project"),
        "PATH": os.pathsep.join([str(Path(python).parent), os.environ.get("PATH", "")]),
    }
    if app == "dagster":
        command = ["dagster", "dev", "-w", str(root / "workspace.yaml")]
    else:
        artifacts = settings.mlflow_artifact_root.resolve().as_uri()
        command = ["mlflow", "ui", "--backend-store-uri", settings.mlflow_tracking_uri]
        command += ["--default-artifact-root", artifacts, "--workers", "1"]
        # Without this MLflow also starts its job runner (seven huey consumers, for GenAI jobs the platform
        # never submits): more start-up, a Ctrl-C that took 2-5 s instead of 2 and left consumers behind.
        environment["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    command += ["--host", "127.0.0.1", "--port", str(port)]
    click.echo(f"{app} UI on http://127.0.0.1:{port} (Ctrl-C stops it)", err=True)
    os.chdir(root)
    # A shell without job control starts `&` jobs with SIGINT ignored, and an ignored signal stays ignored
    # across exec: `dagster dev` would then ignore Ctrl-C, `kill -INT` and even SIGTERM (it turns SIGTERM into
    # an interrupt). Default handling, so the UI stops however it was started.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.execve(python, [python, "-m", *command], environment)


@main.group(short_help="Manage the project's local Redis-compatible server.")
def redis() -> None:
    """Manage the project's local Redis-compatible server (not used when REDIS_URL is set)."""


def _local_server() -> LocalRedisServer:
    settings = _settings()
    if settings.redis_url:
        raise RedisServerError("REDIS_URL is set: the platform uses that server and starts none of its own")
    return LocalRedisServer.from_settings(settings)


@redis.command("start", short_help="Start the local server (loopback, password; idempotent).")
def redis_start() -> None:
    """Start the local server on loopback with a password and append-only persistence (idempotent)."""
    server = _local_server()
    status = server.start()
    click.echo(f"redis running: pid {status.pid}, 127.0.0.1:{status.port}, data in {status.data_dir}")


@redis.command("stop")
def redis_stop() -> None:
    """Stop exactly the local server named in its pid file."""
    stopped = _local_server().stop()
    click.echo("redis stopped" if stopped else "redis was not running")


@redis.command("status", short_help="Whether the local server runs: pid, memory, keys.")
def redis_status() -> None:
    """Say whether the local server runs, with its pid, memory and key count; exit 1 if it does not."""
    status = _local_server().status()
    if not status.running:
        click.echo(f"redis not running (port {status.port}, data in {status.data_dir})")
        sys.exit(1)
    memory = "unknown" if status.used_memory_bytes is None else f"{status.used_memory_bytes / 2**20:.1f} MiB"
    click.echo(f"redis running: pid {status.pid}, port {status.port}, {status.keys} keys, {memory} used")


@main.command(short_help="Simulate transactions with fraud into the landing zone.")
@click.option("--cards", default=5_000, show_default=True, help="Number of cards (customers).")
@click.option("--days", default=60, show_default=True, help="Number of days of history.")
@click.option(
    "--start", default="2026-01-01", show_default=True, help="First day (YYYY-MM-DD, UTC).",
    type=click.DateTime(formats=["%Y-%m-%d"]),
)  # fmt: skip
@click.option("--seed", default=42, show_default=True, help="Random seed: same seed, same data.")
def simulate(cards: int, days: int, start: Any, seed: int) -> None:
    """Simulate card transactions with fraud scenarios into the landing zone (one batch per call)."""
    from fraud_platform.lib.simulator import SimulationConfig
    from fraud_platform.lib.simulator import simulate as run_simulation

    settings = _settings()
    zone = LandingZone(settings.landing_dir)
    first_day: date = start.date()
    batch_id = f"sim-{first_day.isoformat()}-{days}d-{cards}c-seed{seed}"
    if zone.has_batch(batch_id):
        click.echo(f"batch {batch_id} is already in the landing zone (same parameters): nothing to do")
        return
    other_worlds = [manifest.batch_id for manifest in zone.batches() if manifest.source == "simulator"]
    if other_worlds:
        raise LandingError(
            f"the landing zone already holds the simulation {other_worlds[0]}: a second simulated world would "
            "reuse its card, merchant and transaction ids. Use a fresh FRAUD_PLATFORM_HOME, or start over with "
            "'fraud-platform redis stop; rm -rf <home>'"
        )
    try:
        config = SimulationConfig(cards=cards, days=days, start=first_day, seed=seed)
    except ValueError as error:
        raise click.BadParameter(str(error)) from error
    began = time.perf_counter()
    with progress_bar(None, "tx", "simulate") as advance:
        data = run_simulation(config, progress=advance)
    manifest = zone.write_batch(
        batch_id,
        data.transactions,
        data.context(),
        source="simulator",
        parameters={"cards": cards, "days": days, "start": first_day.isoformat(), "seed": seed},
    )
    seconds = time.perf_counter() - began
    frauds = sum(data.fraud_truth.column("is_fraud").to_pylist())
    click.echo(
        f"simulated {manifest.transactions:,} transactions ({frauds:,} fraud) over {len(manifest.days)} days, "
        f"{manifest.tables['chargebacks']:,} chargebacks, in {seconds:.1f} s "
        f"({manifest.transactions / seconds:,.0f} tx/s) -> batch {batch_id}"
    )


@main.command("import", short_help="Import a CSV or parquet file into the landing zone.")
@click.argument("file", type=click.Path(path_type=Path))
@click.option(
    "--map", "mappings", multiple=True, metavar="SRC=DST", help="Map a file column to a schema column."
)
@click.option("--label-column", help="Column with a 0/1 fraud label; 1 becomes a chargeback.")
@click.option("--chargeback-date-column", help="Column with the date a claim was reported.")
@click.option(
    "--cards", "cards_file", type=click.Path(path_type=Path), help="Cards context table (CSV/parquet)."
)
@click.option(
    "--merchants",
    "merchants_file",
    type=click.Path(path_type=Path),
    help="Merchants context table (CSV/parquet).",
)
@click.option("--currency", "default_currency", help="Currency for a file without a currency column.")
@click.option(
    "--timezone",
    metavar="ZONE",
    help="IANA zone (e.g. UTC, Europe/Paris) of timestamps written without one [default: none; such "
    "timestamps are refused].",
)
@click.option(
    "--max-reject-share",
    type=click.FloatRange(0, 1),
    default=DEFAULT_MAX_REJECT_SHARE,
    show_default=True,
    help="Import nothing when more than this share of the rows is rejected (rows landed before not counted).",
)
@click.option("--batch-id", help="Landing batch id (default: from the file name and its content hash).")
def import_command(
    file: Path,
    mappings: tuple[str, ...],
    label_column: str | None,
    chargeback_date_column: str | None,
    cards_file: Path | None,
    merchants_file: Path | None,
    default_currency: str | None,
    timezone: str | None,
    max_reject_share: float,
    batch_id: str | None,
) -> None:
    """Import a user's transaction file (CSV or parquet) into the landing zone, all good rows or none.

    Rows that break the schema go to a reject file with the reason per row; when more than
    --max-reject-share of them (or all) are rejected nothing is imported and the command fails with counts
    per reason and sample rows.
    """
    from fraud_platform.lib.importer import import_file, parse_column_map

    settings = _settings()
    with progress_bar(None, "rows", "import") as advance:
        result = import_file(
            file,
            LandingZone(settings.landing_dir),
            column_map=parse_column_map(mappings),
            label_column=label_column,
            chargeback_date_column=chargeback_date_column,
            cards_file=cards_file,
            merchants_file=merchants_file,
            reject_dir=settings.landing_dir / "rejects",
            batch_id=batch_id,
            default_currency=default_currency,
            timezone=timezone,
            max_reject_share=max_reject_share,
            progress=advance,
        )
    rejects = f", rejects in {result.reject_file}" if result.reject_file else ""
    if not result.loaded:
        click.echo(
            f"nothing new in {file.name}: all {result.rejected:,} rows were landed before; no batch written"
            f"{rejects}"
        )
        return
    click.echo(
        f"imported {file.name}: {result.loaded:,} rows loaded over {len(result.days)} days, "
        f"{result.rejected:,} rejected{rejects} -> batch {result.batch_id}"
    )


def _materialised(result: Any) -> tuple[dict[str, Any], str]:
    """Metadata per materialised asset, and a sentence on the run's asset checks (failed at ERROR, warnings,
    or all passed); fail on a failed run."""
    import dagster as dg

    if not result.success:
        from fraud_platform.pipeline import failure_causes

        causes = "".join(f"\n{cause}" for cause in failure_causes(result))  # the root cause last
        raise click.ClickException(
            f"run {result.run_id} failed; the whole run is in the Dagster UI (dagster dev){causes}"
        )
    metadata = {
        event.asset_key.to_user_string(): event.step_materialization_data.materialization.metadata
        for event in result.get_asset_materialization_events()
    }
    evaluations = result.get_asset_check_evaluations()

    def named(severity: dg.AssetCheckSeverity) -> list[str]:
        return [
            f"{check.asset_key.to_user_string()}:{check.check_name}"
            for check in evaluations
            if not check.passed and check.severity == severity
        ]

    failed, warned = named(dg.AssetCheckSeverity.ERROR), named(dg.AssetCheckSeverity.WARN)
    parts = [f"FAILED checks: {', '.join(failed)}"] if failed else []
    parts += [f"warnings: {', '.join(warned)}"] if warned else []
    passed = len(evaluations) - len(failed) - len(warned)
    return metadata, "; ".join(parts) if parts else f"{passed} checks passed"


@main.command(short_help="Load the landing zone into the DuckDB warehouse.")
def load() -> None:
    """Load every landed day and context table into the DuckDB warehouse (raw assets, one Dagster run)."""
    from fraud_platform.pipeline import instance_for, load_landing

    settings = _settings()
    began = time.perf_counter()
    result = load_landing(settings, instance_for(settings))
    metadata, checks = _materialised(result)
    rows = ", ".join(f"{key} {values['rows'].value:,}" for key, values in sorted(metadata.items()))
    click.echo(
        f"loaded into {settings.warehouse_path} in {time.perf_counter() - began:.1f} s "
        f"(run {result.run_id}): {rows}; {checks}"
    )


@main.command(short_help="Rebuild batch features and labels, load them into Redis.")
@click.option(
    "--snapshot-date",
    type=_DAY,
    help="Load this day's snapshots into Redis instead of the latest: they serve the day after it "
    "(to replay a past day with what it would have been served).",
)
def refresh(snapshot_date: Any) -> None:
    """Rebuild batch features and labels with dbt (tests included) and load the latest snapshots into Redis."""
    from fraud_platform.pipeline import instance_for, refresh_batch_side

    settings = _settings()
    began = time.perf_counter()
    result = refresh_batch_side(
        instance_for(settings), snapshot_date.date().isoformat() if snapshot_date else ""
    )
    metadata, checks = _materialised(result)
    online, labels = metadata["online/batch_features"], metadata["transaction_labels"]
    click.echo(
        f"batch side refreshed in {time.perf_counter() - began:.1f} s (run {result.run_id}): "
        f"labels {labels['labels_fraud'].value:,} fraud / {labels['labels_genuine'].value:,} genuine / "
        f"{labels['labels_unknown'].value:,} not yet known; snapshot {online['snapshot_date'].value} of "
        f"{online['cards'].value:,} cards and {online['merchants'].value:,} merchants online "
        f"({online['rows_per_second'].value:,.0f} rows/s); {checks}"
    )


@main.command(short_help="Load card and merchant snapshots into Redis (no dbt).")
@click.option(
    "--snapshot-date",
    type=_DAY,
    help="The day whose snapshots to serve (they serve the day after it) [default: the latest].",
)
def online(snapshot_date: Any) -> None:
    """Load card and merchant snapshots into Redis only (no dbt): the daily switch of what the stream serves."""
    from fraud_platform.pipeline import instance_for, load_online

    settings = _settings()
    result = load_online(
        settings, instance_for(settings), snapshot_date.date().isoformat() if snapshot_date else ""
    )
    metadata, _ = _materialised(result)
    loaded = metadata["online/batch_features"]
    click.echo(
        f"snapshot {loaded['snapshot_date'].value} of {loaded['cards'].value:,} cards and "
        f"{loaded['merchants'].value:,} merchants online as generation {loaded['generation'].value} "
        f"({loaded['rows_per_second'].value:,.0f} rows/s)"
    )


@main.command(short_help="Build the training set, fit, register, challenge the champion.")
@click.option(
    "--train-from", type=_DAY, help="First training day (YYYY-MM-DD) [default: the oldest labelled]."
)
@click.option("--train-to", type=_DAY, help="Last training day, inclusive (YYYY-MM-DD).")
@click.option("--test-from", type=_DAY, help="First test day (YYYY-MM-DD); the days between are the gap.")
@click.option("--test-to", type=_DAY, help="Last test day, inclusive (YYYY-MM-DD).")
@click.option(
    "--validation-days",
    type=click.IntRange(min=1),
    help="The newest N training days validate the search [default: FRAUD_PLATFORM_VALIDATION_DAYS or 20-30 %].",
)
@click.option(
    "--search-trials",
    type=click.IntRange(min=1),
    help="Candidates to try [default: FRAUD_PLATFORM_SEARCH_TRIALS].",
)
@click.option(
    "--search-seconds",
    type=click.IntRange(min=1),
    help="Time budget of the search [default: FRAUD_PLATFORM_SEARCH_SECONDS].",
)
def train(
    train_from: Any,
    train_to: Any,
    test_from: Any,
    test_to: Any,
    validation_days: int | None,
    search_trials: int | None,
    search_seconds: int | None,
) -> None:
    """Build the training dataset, search and fit an XGBoost model, register it, and challenge the champion.

    Without dates the windows are shares of the mature labelled days (FRAUD_PLATFORM_TRAIN_WINDOW_DAYS,
    _TEST_DAYS, _VALIDATION_DAYS, _GAP_DAYS set them for schedules and sensors); with --train-to, --test-from
    and --test-to the model trains and is tested on exactly those days (rows outside are left out).
    """
    from fraud_platform.pipeline import instance_for, train_model
    from fraud_platform.training.evaluation import format_metrics

    settings = _settings()
    windows = {
        name: value.date().isoformat()
        for name, value in (
            ("train_from", train_from),
            ("train_to", train_to),
            ("test_from", test_from),
            ("test_to", test_to),
        )
        if value
    }
    began = time.perf_counter()
    result = train_model(
        instance_for(settings),
        windows={**windows, **({"validation_days": validation_days} if validation_days else {})},
        search={
            name: value
            for name, value in (("search_trials", search_trials), ("search_seconds", search_seconds))
            if value
        },
    )
    metadata, _ = _materialised(result)
    dataset, model = metadata["training/dataset"], metadata["training/model"]
    test_metrics = {
        key.removeprefix("test_"): value.value for key, value in model.items() if key.startswith("test_")
    }
    click.echo(
        f"trained in {time.perf_counter() - began:.1f} s (run {result.run_id}): {dataset['rows'].value:,} rows; "
        f"train {dataset['train_window'].value}, validation {dataset['validation_window'].value}, "
        f"test {dataset['test_window'].value}; {model['search'].value}"
    )
    click.echo(
        f"model version {model['model_version'].value} on the test window: {format_metrics(test_metrics)}; "
        f"{model['challenge'].value}"
        + (" -> champion" if model["promoted_to_champion"].value else " -> stays challenger")
    )
    click.echo(f"MLflow UI: mlflow ui --backend-store-uri {settings.mlflow_tracking_uri}")


@main.command(short_help="Score a window with a registered model version: standard metrics.")
@click.option("--model-version", required=True, help="The registered version to evaluate (or 'champion').")
@click.option("--from", "first", type=_DAY, required=True, help="First day to score (YYYY-MM-DD).")
@click.option("--to", "last", type=_DAY, required=True, help="Last day to score, inclusive (YYYY-MM-DD).")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as one JSON object.")
def evaluate(model_version: str, first: Any, last: Any, as_json: bool) -> None:
    """Score the mature labelled transactions of a window with any registered model version and print ROC AUC,
    average precision, recall at 1 % FPR, fraud amount caught and card precision@100 by the standard rule
    (per day, known-compromised and earlier-detected cards removed), with the version's operating points."""
    import json

    import duckdb

    from fraud_platform.training import registry
    from fraud_platform.training.dataset import DatasetError, build_window_data
    from fraud_platform.training.evaluation import format_metrics
    from fraud_platform.training.model import evaluate as evaluate_scores
    from fraud_platform.training.model import score

    settings = _settings()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a clean output, JSON included
    client = registry.configure(settings.mlflow_tracking_uri, settings.mlflow_artifact_root)
    try:
        version = registry.resolve_version(client, model_version)
        model = registry.load(client, version)
        with duckdb.connect(str(settings.warehouse_path), read_only=True) as connection:
            data = build_window_data(connection, settings.label_maturity_days, first.date(), last.date())
    except (registry.RegistryError, DatasetError) as error:
        raise click.ClickException(str(error)) from error
    metrics = evaluate_scores(score(model.booster, data.features), data, model.contract.thresholds)
    if as_json:
        click.echo(
            json.dumps(
                {"model_version": version, "from": str(first.date()), "to": str(last.date()), **metrics}
            )
        )
        return
    click.echo(
        f"model version {version} on {first.date()} .. {last.date()} ({int(metrics['transactions']):,} labelled "
        f"transactions, {int(metrics['frauds']):,} frauds): {format_metrics(metrics)}"
    )
    click.echo(
        f"  operating points (its thresholds): review+decline alert rate {metrics['alert_rate']:.2%}, precision "
        f"{metrics['alert_precision']:.1%}, recall {metrics['alert_recall']:.1%}; declines precision "
        f"{metrics['decline_precision']:.1%}, recall {metrics['decline_recall']:.1%}"
    )


def _empty_landing(zone: LandingZone) -> LandingError:
    return LandingError(
        f"the landing zone {zone.root} is empty: run 'fraud-platform simulate' or 'fraud-platform import FILE' first"
    )


def _day_range(day: Any, first: Any, last: Any) -> tuple[date | None, date | None]:
    """The first and last day (inclusive, None: open) chosen by --day or --from/--to."""
    if day and (first or last):
        raise click.UsageError("give either --day or --from/--to, not both")
    low, high = (day, day) if day else (first, last)
    return (low and low.date()), (high and high.date())


def _span(low: date | None, high: date | None) -> str:
    """'D' or 'D1 to D2' (either end may be open) for messages."""
    if low and low == high:
        return str(low)
    return f"{low or 'the start'} to {high or 'the end'}"


def _replay_days(zone: LandingZone, low: date | None, high: date | None) -> list[str]:
    """The landed days from `low` to `high` inclusive (all landed days when both are open)."""
    landed = zone.days()
    if not landed:
        raise _empty_landing(zone)
    first, last = (low or date.min).isoformat(), (high or date.max).isoformat()
    selected = [landed_day for landed_day in landed if first <= landed_day <= last]
    if not selected:
        raise LandingError(
            f"no landed transactions from {first} to {last}; landed days: {landed[0]} to {landed[-1]}"
        )
    return selected


@main.command(short_help="Publish landed transactions to the bus in event-time order.")
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    help="Transactions per second [default: as fast as possible].",
)
@click.option("--day", type=_DAY, help="Replay one day (YYYY-MM-DD).")
@click.option("--from", "first", type=_DAY, help="First day to replay (YYYY-MM-DD).")
@click.option("--to", "last", type=_DAY, help="Last day to replay, inclusive (YYYY-MM-DD).")
@click.option(
    "--reset",
    is_flag=True,
    help="Start the stream over: delete the transactions streams, dead letters, decisions and their "
    "idempotency markers, the scoring metrics and the recorded authorizations first, so they hold only this "
    "replay (Redis transport).",
)
@click.option(
    "--authorize-every",
    type=click.IntRange(min=1),
    help="Send every Nth transaction to the authorization API (--api-url, a running `fraud-platform serve`) "
    "instead of the bus, one request at a time in its turn, and record each round trip for `report`.",
)
@click.option(
    "--api-url",
    default="http://127.0.0.1:8080",
    show_default=True,
    help="The authorization API for --authorize-every (its key from FRAUD_PLATFORM_API_KEY).",
)
def replay(
    rate: float | None,
    day: Any,
    first: Any,
    last: Any,
    reset: bool,
    authorize_every: int | None,
    api_url: str,
) -> None:
    """Publish landed transactions to the bus in event-time order: the Redis transactions stream sharded by
    card, or with FRAUD_PLATFORM_TRANSPORT=kafka the transactions topic keyed by card (missing topics are
    created with FRAUD_PLATFORM_STREAM_SHARDS partitions).

    With --authorize-every N a sample goes through the authorization API instead, as a payment switch would
    send it (no replay clock: the server judges timestamps by its wall clock, so history older than
    FRAUD_PLATFORM_MAX_EVENT_AGE_DAYS needs a server started with a longer one)."""
    import redis as redis_client
    from confluent_kafka import KafkaException

    from fraud_platform.api.client import AuthorizationError
    from fraud_platform.lib.bus import KafkaPublisher, UndeliveredMessage, create_topics, landing_days
    from fraud_platform.lib.bus import replay as publish_tables
    from fraud_platform.lib.keys import (
        DEAD_LETTER_STREAM,
        DECISIONS_STREAM,
        TRANSACTIONS_STREAM_PREFIX,
        transactions_stream,
    )
    from fraud_platform.lib.online_store import delete_matching
    from fraud_platform.lib.redis_server import RedisClient, client_for
    from fraud_platform.report import authorization_summary, authorizations_dir, write_authorizations
    from fraud_platform.scoring.decisions import MARKER_PREFIX
    from fraud_platform.scoring.metrics import METRICS_KEY

    settings = _settings()
    kafka = settings.transport == "kafka"
    if kafka and reset:
        raise click.UsageError(
            "--reset starts the Redis streams over; with FRAUD_PLATFORM_TRANSPORT=kafka start over with a new "
            "FRAUD_PLATFORM_KAFKA_TOPIC_PREFIX (or delete the topics with your Kafka tools)"
        )
    zone = LandingZone(settings.landing_dir)
    days = _replay_days(zone, *_day_range(day, first, last))
    total = sum(manifest.days.get(landed_day, 0) for manifest in zone.batches() for landed_day in days)
    target: RedisClient | KafkaPublisher
    try:
        if kafka:
            for topic in create_topics(settings):
                click.echo(f"created Kafka topic {topic} with {settings.stream_shards} partitions")
            target = KafkaPublisher(settings)
            destination = f"Kafka topic {target.topic} (keyed by card_id)"
        else:
            target = client_for(settings)
            destination = f"{settings.stream_shards} shards of {TRANSACTIONS_STREAM_PREFIX}"
            if reset:
                target.delete(
                    *(transactions_stream(shard) for shard in range(settings.stream_shards)),
                    DEAD_LETTER_STREAM,
                    DECISIONS_STREAM,
                    METRICS_KEY,
                )
                delete_matching(target, f"{MARKER_PREFIX}*")
                delete_matching(target, f"{DECISIONS_STREAM}:*")  # a cluster's decisions streams per shard
                shutil.rmtree(authorizations_dir(settings.home), ignore_errors=True)
        authorizer = _authorizer(api_url) if authorize_every else None
        with progress_bar(total, "tx", "replay") as advance:
            result = publish_tables(
                target,
                landing_days(zone, days),
                settings.stream_shards,
                rate=rate,
                progress=advance,
                max_length=settings.stream_max_length,
                authorize=authorizer,
                authorize_every=authorize_every or 0,
            )
    except (redis_client.ConnectionError, redis_client.TimeoutError) as error:
        raise unreachable(settings, error) from error
    except redis_client.RedisError as error:
        raise click.ClickException(f"Redis: {error}") from error
    except (KafkaException, UndeliveredMessage) as error:
        raise click.ClickException(f"Kafka: {error}") from error
    except AuthorizationError as error:
        raise click.ClickException(f"authorization API: {error}") from error
    span = days[0] if len(days) == 1 else f"{days[0]} to {days[-1]}"
    click.echo(
        f"replayed {result.published:,} transactions of {span} to {destination} in {result.seconds:.1f} s "
        f"({result.rate:,.0f} tx/s)"
    )
    if authorizer is not None:
        authorizer.close()
        path = write_authorizations(settings.home, f"{days[0]}_{days[-1]}", authorizer.answers)
        click.echo(
            f"authorized {result.authorized:,} through {api_url}: {authorization_summary(authorizer.answers)}"
        )
        click.echo(f"  each request's answer and round trip: {path}")


def _authorizer(api_url: str) -> Authorizer:
    """A caller of the running API at `api_url` (its key from FRAUD_PLATFORM_API_KEY), once it is ready."""
    from fraud_platform.api.client import Authorizer, wait_until_ready
    from fraud_platform.api.settings import ApiSettings

    try:
        api_key = ApiSettings.from_env().api_key
        wait_until_ready(api_url.rstrip("/"), timeout=120)
        return Authorizer(api_url, api_key)
    except RuntimeError as error:  # not ready in time, or a URL that is not http://HOST:PORT
        raise click.ClickException(
            f"authorization API at {api_url}: {error} (is `fraud-platform serve` running?)"
        ) from error


@main.group(short_help="Real-time card features computed offline.")
def features() -> None:
    """Real-time card features computed offline by the stream's own code."""


@features.command("backfill", short_help="Backfill landed transactions' real-time features to parquet.")
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Parquet file to write."
)
@click.option(
    "--processes", type=click.IntRange(min=1), help="Worker processes [default: the available cores]."
)
def features_backfill(out: Path, processes: int | None) -> None:
    """Backfill every landed transaction's real-time features into a parquet file.

    The stream's own logged decisions (the feature log) are mostly transactions landed already: each
    transaction is read once."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from fraud_platform.features.backfill import backfill, with_version
    from fraud_platform.features.realtime import FEATURE_DEFINITION_VERSION, FEATURE_NAMES
    from fraud_platform.lib.bus import STREAM_SOURCE
    from fraud_platform.lib.schema import TRANSACTIONS

    def read(paths: list[Path]) -> pa.Table:
        return pa.concat_tables(
            [TRANSACTIONS.empty_table()] + [pq.read_table(p, schema=TRANSACTIONS) for p in paths]
        )

    zone = LandingZone(_settings().landing_dir)
    files = zone.transaction_files()
    if not files:
        raise _empty_landing(zone)
    landed = zone.transaction_files(exclude_source=STREAM_SOURCE)
    transactions = read(landed)
    logged = read(sorted(set(files) - set(landed)))
    already = pc.is_in(logged.column("transaction_id"), value_set=transactions.column("transaction_id"))
    transactions = pa.concat_tables([transactions, logged.filter(pc.invert(already))])
    began = time.perf_counter()
    with progress_bar(transactions.num_rows, "tx", "backfill") as advance:
        result = backfill(transactions, processes=processes, progress=advance)
    seconds = time.perf_counter() - began
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    pq.write_table(with_version(result), partial)
    partial.replace(out)
    read_once = pc.sum(already).as_py() or 0
    repeated = transactions.num_rows - result.num_rows
    notes = []
    if read_once:
        notes.append(
            f"{read_once:,} stream decisions in the feature log are landed transactions too: read once"
        )
    if repeated:
        notes.append(f"{repeated:,} repeated transaction ids of a card counted once, as the stream does")
    click.echo(
        f"backfilled {result.num_rows:,} transactions in {seconds:.1f} s ({result.num_rows / seconds:,.0f} tx/s):"
        f" {len(FEATURE_NAMES)} features {FEATURE_DEFINITION_VERSION} -> {out}"
        + "".join(f"; {note}" for note in notes)
    )


@main.command("decisions", short_help="The newest decisions as a table (or JSON), then the metrics.")
@click.option("--count", type=click.IntRange(min=1), default=10, show_default=True, help="How many.")
@click.option(
    "--decision",
    "kind",
    type=click.Choice(["approve", "review", "decline"]),  # scorer.APPROVE, REVIEW, DECLINE (tested)
    help="Only decisions of this kind.",
)
@click.option("--card", help="Only this card's decisions.")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="One JSON object per line: the stream entries (times in epoch ms).",
)
def decisions_command(count: int, kind: str | None, card: str | None, as_json: bool) -> None:
    """The newest decisions of the scoring flow as a table (oldest first), then its metrics.

    The table: event time (ISO-8601 UTC), transaction, card, amount, decision, score and the top reasons with
    the values the model was served. With --decision or --card the stream is searched back from its newest
    entry. --json prints the matching entries only, for machines."""
    import orjson

    from fraud_platform.decisions_view import newest_decisions, table
    from fraud_platform.lib.redis_server import client_for
    from fraud_platform.scoring.metrics import METRICS_KEY

    client = client_for(_settings())
    events = newest_decisions(client, count, decision=kind, card=card)
    if as_json:
        for event in events:
            click.echo(orjson.dumps(event).decode())
        return
    if events:
        click.echo("\n".join(table(events)))
    else:
        click.echo("no decisions" + (" matching the filters" if kind or card else " yet"))
    metrics = {key.decode(): value.decode() for key, value in client.hgetall(METRICS_KEY).items()}
    click.echo(
        " ".join(f"{key}={value}" for key, value in sorted(metrics.items())) or "no scoring metrics yet"
    )


@main.command(short_help="The authorization API: POST /v1/authorize.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address (not loopback: API key).")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True, help="Port to bind.")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True, help="Server processes.")
def serve(host: str, port: int, workers: int) -> None:
    """The authorization API (docs/api.md): POST /v1/authorize answered by the running scoring flow."""
    from fraud_platform.api.server import serve as serve_api

    serve_api(host, port, workers)


@main.command(short_help="Throughput, latency and quality of the stream's decisions.")
@click.option(
    "--day", type=_DAY, help="Only transactions of this day (YYYY-MM-DD) [default: every decision]."
)
@click.option("--from", "first", type=_DAY, help="Only transactions from this day on (YYYY-MM-DD).")
@click.option("--to", "last", type=_DAY, help="Only transactions up to this day, inclusive (YYYY-MM-DD).")
def report(day: Any, first: Any, last: Any) -> None:
    """How the scoring flow did: throughput, latency, decisions by type, and precision/recall of its
    decisions against the fraud truth in the warehouse (simulated data) or the labels (imported data)."""
    import duckdb

    from fraud_platform.lib.redis_server import client_for
    from fraud_platform.lib.schema import DAY_MS
    from fraud_platform.monitoring.store import table_exists
    from fraud_platform.report import authorization_lines, read_authorizations, stream_report
    from fraud_platform.scoring.decisions import read_decisions

    settings = _settings()
    low, high = _day_range(day, first, last)
    client = client_for(settings)
    events = read_decisions(client)
    if settings.stream_max_length and len(events) >= settings.stream_max_length:
        click.echo(
            f"warning: the decisions stream is trimmed to about {settings.stream_max_length:,} entries "
            f"(FRAUD_PLATFORM_STREAM_MAX_LENGTH): older decisions are in the warehouse (raw.decisions), "
            "not in this report",
            err=True,
        )
    answers = read_authorizations(settings.home)
    if low or high:
        begin = (low - _EPOCH).days * DAY_MS if low else 0
        end = ((high - _EPOCH).days + 1) * DAY_MS if high else 2**62
        events = [event for event in events if begin <= event["event_time"] < end]
        answers = [answer for answer in answers if begin <= answer["event_time"] < end]
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as connection:
        has_truth = table_exists(connection, "fraud_truth", "raw")
        truth_sql = (
            "SELECT transaction_id, is_fraud FROM raw.fraud_truth WHERE is_fraud"
            if has_truth
            else "SELECT transaction_id, true FROM transaction_labels WHERE label = 1"
        )
        truth = dict(connection.execute(truth_sql).fetchall())
    try:
        summary = stream_report(events, truth)
    except ValueError as error:
        raise click.ClickException(str(error)) from error
    source = "fraud truth (simulation)" if has_truth else "labels"
    span = "" if not (low or high) else f" for {_span(low, high)}"
    click.echo(f"stream report{span}, judged against the {source}:")
    for line in summary.lines() + (authorization_lines(answers, events) if answers else []):
        click.echo(f"  {line}")


@main.command(short_help="Materialise and summarise the monitoring group per day.")
@click.option("--day", type=_DAY, help="Monitor one day (YYYY-MM-DD).")
@click.option("--from", "first", type=_DAY, help="First day to monitor (YYYY-MM-DD).")
@click.option("--to", "last", type=_DAY, help="Last day to monitor, inclusive (YYYY-MM-DD).")
def monitor(day: Any, first: Any, last: Any) -> None:
    """Materialise the monitoring group (realised performance, label maturity, drift, skew, MLflow runs) for
    each day [default: every day with live decisions in the warehouse; replays such as a warm-up are left
    out], one Dagster run per day, and summarise the last one."""
    import duckdb

    from fraud_platform.defs.monitoring import MonitoringSettings, snapshot_loads
    from fraud_platform.monitoring.served import decision_days
    from fraud_platform.monitoring.summary import summary_lines
    from fraud_platform.pipeline import instance_for, monitor_days

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per model load otherwise
    settings = _settings()
    if not settings.warehouse_path.exists():
        raise click.ClickException(
            f"no warehouse at {settings.warehouse_path}: run 'fraud-platform load' first"
        )
    instance = instance_for(settings)
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as connection:
        decided = decision_days(connection, snapshot_loads(instance))  # replays (a warm-up) left out
    if day or first or last:
        days = _replay_days(LandingZone(settings.landing_dir), *_day_range(day, first, last))
    else:
        days = decided
    if not days:
        raise click.ClickException(
            "no decisions in the warehouse to monitor: run the scoring flow, then 'fraud-platform load'"
        )
    began = time.perf_counter()
    results = monitor_days(settings, instance, days)
    for monitored, result in zip(days, results, strict=True):
        _, checks = _materialised(result)
        note = "" if monitored in decided else " (no decisions that day)"
        click.echo(f"monitored {monitored}{note} (run {result.run_id}): {checks}")
    click.echo(f"{len(days)} day(s) monitored in {time.perf_counter() - began:.1f} s")
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as connection:
        lines = summary_lines(connection, days[-1], MonitoringSettings().thresholds())
    click.echo(f"monitoring summary for {days[-1]}:")
    for line in lines:
        click.echo(f"  {line}")
