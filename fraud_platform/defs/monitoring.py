"""Monitoring in production: realised performance, label maturity, drift and skew of each day of decisions.

Every asset is partitioned by `decision_day` (the UTC day of the decided transactions; a day becomes a
partition when it is monitored, so only days with decisions appear) and judges live decisions only: replays
of history served with a later snapshot are left out (`fraud_platform.monitoring.live`). It stores its numbers in
the warehouse (schema `monitoring`, one day replaced at a time) and shows them as metadata: numbers Dagster
plots across partitions, a markdown table and a chart. Asset checks judge drift, skew and realised
performance with WARN and ERROR thresholds (`MonitoringSettings`); `monitoring/mlflow_runs` logs the same
figures to MLflow, one run per day and model version. `monitoring_retrain_sensor` requests `train_model`
when a drift or performance check fails at ERROR, naming the reason in the run's tags.
"""

from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, date, datetime
from pathlib import Path

import dagster as dg
from dagster_duckdb import DuckDBResource

from fraud_platform.defs.batch import LABELS_ASSET
from fraud_platform.defs.training import (
    DATASET_ASSET,
    MODEL_ASSET,
    MlflowResource,
    TrainingSettings,
    training_job,
)
from fraud_platform.features.vector import MODEL_FEATURES
from fraud_platform.monitoring import charts, judge
from fraud_platform.monitoring.drift import DAY_CONSTANT_FEATURES, FeatureDrift, feature_drift, matrix_drift
from fraud_platform.monitoring.live import SnapshotLoad, define_live_decisions, replayed_count
from fraud_platform.monitoring.performance import (
    MaturityPoint,
    combined,
    label_maturity,
    realised_performance,
)
from fraud_platform.monitoring.served import reference_features, served_day
from fraud_platform.monitoring.skew import measure_skew
from fraud_platform.monitoring.store import replace_day
from fraud_platform.monitoring.summary import (
    SCORE,
    drift_rows,
    maturity_points,
    performance_history,
    performance_records,
    skew_row,
    summary_lines,
)
from fraud_platform.monitoring.tracking import log_day, validation_metrics
from fraud_platform.training import registry
from fraud_platform.training.model import score

GROUP = "monitoring"
PERFORMANCE = dg.AssetKey(["monitoring", "realised_performance"])
MATURITY = dg.AssetKey(["monitoring", "label_maturity"])
DRIFT = dg.AssetKey(["monitoring", "drift"])
SKEW = dg.AssetKey(["monitoring", "skew"])
MLFLOW_RUNS = dg.AssetKey(["monitoring", "mlflow_runs"])
DECISIONS_ASSET = dg.AssetKey(["raw", "decisions"])
ONLINE_ASSET = dg.AssetKey(["online", "batch_features"])
DECISION_DAYS = dg.DynamicPartitionsDefinition(name="decision_day")
_LOADS_READ = 10_000  # online loads looked at to tell live decisions from replays (newest first)
RETRAIN_REASON_TAG = "fraud_platform/retrain_reason"
# Failing at ERROR, these request retraining. Skew does only with `retrain_on_skew` (off by default: a new
# model would be trained on the offline values and served the same wrong ones, so skew is a serving bug to
# fix, not a reason to retrain; the check still fails and shows in the UI).
RETRAIN_CHECKS = (
    dg.AssetCheckKey(DRIFT, "feature_psi"),
    dg.AssetCheckKey(DRIFT, "score_psi"),
    dg.AssetCheckKey(PERFORMANCE, "realised_vs_validation"),
)
SKEW_CHECK = dg.AssetCheckKey(SKEW, "skew_rate")
_SEVERITY = {judge.WARN: dg.AssetCheckSeverity.WARN, judge.ERROR: dg.AssetCheckSeverity.ERROR}
_HISTORY_DAYS = 60
_PERFORMANCE_COLUMNS = (
    "decisions",
    "labelled_share",
    "alert_rate",
    "decline_precision",
    "review_precision",
    "alert_recall",
    "fraud_amount_caught",
    "fraud_amount_missed",
)
_TABLE_ROWS = 15


class MonitoringSettings(dg.ConfigurableResource):
    """Thresholds of the monitoring checks and the sizes of the samples (see docs/monitoring.md)."""

    psi_warn: float = 0.1
    psi_error: float = 0.25
    min_served_rows: int = 200
    skew_warn_rate: float = 0.0
    skew_error_rate: float = 0.01
    performance_margin_warn: float = 0.05
    performance_margin_error: float = 0.15
    min_labelled_share: float = 0.9
    min_judged_count: int = 30
    skew_sample_size: int = 500
    reference_rows: int = 20_000
    retrain_on_skew: bool = False

    def retrain_checks(self) -> tuple[dg.AssetCheckKey, ...]:
        """The checks whose ERROR failures request retraining."""
        return (*RETRAIN_CHECKS, SKEW_CHECK) if self.retrain_on_skew else RETRAIN_CHECKS

    def thresholds(self) -> judge.Thresholds:
        """The check thresholds (validated)."""
        return judge.Thresholds(
            psi_warn=self.psi_warn,
            psi_error=self.psi_error,
            min_served_rows=self.min_served_rows,
            skew_warn_rate=self.skew_warn_rate,
            skew_error_rate=self.skew_error_rate,
            performance_margin_warn=self.performance_margin_warn,
            performance_margin_error=self.performance_margin_error,
            min_labelled_share=self.min_labelled_share,
            min_judged_count=self.min_judged_count,
        )


def build_monitoring_resources() -> dict[str, dg.ConfigurableResource]:
    """The monitoring group's own resource: the default thresholds and sample sizes."""
    return {"monitoring": MonitoringSettings()}


def snapshot_loads(instance: dg.DagsterInstance) -> list[SnapshotLoad]:
    """The online loads recorded in the instance: when, and which day's snapshot (oldest first)."""
    records = instance.fetch_materializations(ONLINE_ASSET, limit=_LOADS_READ).records
    loads = []
    for record in records:
        snapshot = getattr(record.asset_materialization.metadata.get("snapshot_date"), "value", "None")
        if snapshot != "None":
            loaded_at = datetime.fromtimestamp(record.timestamp, UTC)
            loads.append(SnapshotLoad(loaded_at, date.fromisoformat(snapshot)))
    return sorted(loads, key=lambda load: load.loaded_at)


def _check(name: str, verdict: judge.Verdict, day: str) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=name,
        passed=verdict.passed,
        severity=_SEVERITY.get(verdict.severity, dg.AssetCheckSeverity.WARN),
        metadata={"reason": dg.MetadataValue.text(verdict.reason), "day": dg.MetadataValue.text(day)},
    )


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> dg.MetadataValue:
    def cell(value: object) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return dg.MetadataValue.md("\n".join(lines))


def _number(value: float) -> dg.MetadataValue:
    return dg.MetadataValue.float(float(value))


@dg.asset(
    key=PERFORMANCE,
    group_name=GROUP,
    kinds={"duckdb", "mlflow"},
    partitions_def=DECISION_DAYS,
    deps=[DECISIONS_ASSET, LABELS_ASSET],
    check_specs=[
        dg.AssetCheckSpec(
            "realised_vs_validation",
            asset=PERFORMANCE,
            description="Realised decline precision and alert recall of each model version are not below its "
            "validation values by more than the margins (judged on days labelled enough).",
        )
    ],
    description="Realised performance of the day's decisions per model version, with the labels known now: "
    "precision of declines and reviews, recall, fraud amount caught and missed, alert rate, labelled share.",
)
def monitoring_realised_performance(
    context: dg.AssetExecutionContext,
    warehouse: DuckDBResource,
    mlflow: MlflowResource,
    monitoring: MonitoringSettings,
) -> dg.MaterializeResult:
    """Judge the day's decisions against the labels and the models' validation metrics."""
    day = context.partition_key
    with warehouse.get_connection() as connection:
        define_live_decisions(connection, snapshot_loads(context.instance))
        replayed = replayed_count(connection, day)
        records = realised_performance(connection, day)
        replace_day(connection, "realised_performance", day, [record.row() for record in records])
        chart = charts.performance_chart(*performance_history(connection, day, _HISTORY_DAYS), day)
    client = mlflow.client()
    verdict = judge.judge_performance(
        records,
        {record.model_version: validation_metrics(client, record.model_version) for record in records},
        monitoring.thresholds(),
    )
    overall = combined(records, day)
    metadata: dict[str, dg.MetadataValue] = {
        "decisions": dg.MetadataValue.int(overall.decisions),
        "replayed_left_out": dg.MetadataValue.int(replayed),
        **{name: _number(value) for name, value in overall.ratios().items()},
        "fraud_amount_caught": _number(overall.fraud_amount_caught),
        "fraud_amount_missed": _number(overall.fraud_amount_missed),
        "labels_as_of": dg.MetadataValue.text(overall.labels_as_of or "-"),
        "by_model_version": _md_table(
            ["model", *_PERFORMANCE_COLUMNS],
            [[r.model_version, *(r.row()[name] for name in _PERFORMANCE_COLUMNS)] for r in records],
        ),
        "chart": dg.MetadataValue.md(charts.png_markdown(chart, "realised performance")),
    }
    return dg.MaterializeResult(
        metadata=metadata, check_results=[_check("realised_vs_validation", verdict, day)]
    )


@dg.asset(
    key=MATURITY,
    group_name=GROUP,
    kinds={"duckdb"},
    partitions_def=DECISION_DAYS,
    deps=[LABELS_ASSET],
    description="Label maturity curve of the day: the share of its transactions labelled k days after it "
    "ended (frauds as chargebacks arrive, genuine ones at the maturity window): how far to trust the day.",
)
def monitoring_label_maturity(
    context: dg.AssetExecutionContext, warehouse: DuckDBResource, training_settings: TrainingSettings
) -> dg.MaterializeResult:
    """The day's label maturity curve up to the maturity window (or as far as the labels reach)."""
    day = context.partition_key
    with warehouse.get_connection() as connection:
        points = label_maturity(connection, day, training_settings.label_maturity_days + 1)
        rows = [{**asdict(point), "labelled_share": point.labelled_share} for point in points]
        replace_day(connection, "label_maturity", day, rows)
    now = points[-1]
    return dg.MaterializeResult(
        metadata={
            "transactions": dg.MetadataValue.int(now.transactions),
            "age_days": dg.MetadataValue.int(now.age_days),
            "labelled_share": _number(now.labelled_share),
            "frauds_known": dg.MetadataValue.int(now.frauds_known),
            "curve": _md_table(
                ["days after", "labelled", "share", "frauds known"],
                [
                    [p.age_days, p.labelled, f"{p.labelled_share:.1%}", p.frauds_known]
                    for p in _sparse(points)
                ],
            ),
            "chart": dg.MetadataValue.md(
                charts.png_markdown(charts.maturity_chart(points, day), "label maturity")
            ),
        }
    )


def _sparse(points: list[MaturityPoint]) -> list[MaturityPoint]:
    """The points where the labelled count changed (and the first and last)."""
    return [
        point
        for index, point in enumerate(points)
        if index in (0, len(points) - 1) or point.labelled != points[index - 1].labelled
    ]


@dg.asset(
    key=DRIFT,
    group_name=GROUP,
    kinds={"duckdb", "mlflow"},
    partitions_def=DECISION_DAYS,
    deps=[DECISIONS_ASSET, DATASET_ASSET, MODEL_ASSET],
    check_specs=[
        dg.AssetCheckSpec(
            "feature_psi",
            asset=DRIFT,
            description="PSI of every model feature (served vs the "
            "champion's training rows) stays below the warn and error thresholds.",
        ),
        dg.AssetCheckSpec(
            "score_psi",
            asset=DRIFT,
            description="PSI of the champion's served scores vs its "
            "scores on its training rows stays below the thresholds.",
        ),
    ],
    description="PSI (and KS for continuous features) of every model feature and of the score: the day's "
    "served vectors (feature log) vs the champion's training data (train split of training.dataset).",
)
def monitoring_drift(
    context: dg.AssetExecutionContext,
    warehouse: DuckDBResource,
    mlflow: MlflowResource,
    monitoring: MonitoringSettings,
) -> dg.MaterializeResult:
    """Compare the day's served features and scores with the champion's reference: its test window (the
    rows its metrics were measured on), or its training rows for a model registered without one."""
    day = context.partition_key
    client = mlflow.client()
    champion = registry.champion_version(client)
    model = registry.load(client, str(champion.version)) if champion else None
    with warehouse.get_connection() as connection:
        define_live_decisions(connection, snapshot_loads(context.instance))
        replayed = replayed_count(connection, day)
        reference = reference_features(
            connection,
            monitoring.reference_rows,
            model.contract.trained_until if model else "",
            (model.contract.tested_from, model.contract.tested_to) if model else ("", ""),
        )
        served = served_day(connection, day)
        drifts = matrix_drift(MODEL_FEATURES, reference.features, served.features) if len(served) else []
        champion_scores = served.scores[served.model_versions == model.version] if model else []
        score_drift = (
            [feature_drift(SCORE, score(model.booster, reference.features), champion_scores)]
            if model and len(champion_scores)
            else []
        )
        reference_version = model.version if model else "-"
        rows = [
            {**asdict(drift), "day": day, "reference_model_version": reference_version}
            for drift in [*drifts, *score_drift]
        ]
        replace_day(connection, "drift", day, rows)
    thresholds = monitoring.thresholds()
    top = sorted(drifts, key=lambda drift: drift.psi, reverse=True)
    judged = [drift for drift in top if drift.feature not in DAY_CONSTANT_FEATURES]
    metadata: dict[str, dg.MetadataValue] = {
        "served_rows": dg.MetadataValue.int(len(served)),
        "replayed_left_out": dg.MetadataValue.int(replayed),
        "reference": dg.MetadataValue.text(reference.description),
        "reference_rows": dg.MetadataValue.int(len(reference.features)),
        "reference_model_version": dg.MetadataValue.text(reference_version),
        "other_feature_definitions": dg.MetadataValue.int(served.other_definitions),
        "max_psi": _number(judged[0].psi if judged else float("nan")),
        "max_psi_feature": dg.MetadataValue.text(judged[0].feature if judged else "-"),
        "score_psi": _number(score_drift[0].psi if score_drift else float("nan")),
        "top_features": _md_table(
            ["feature", "PSI", "KS", "missing served", "missing reference"],
            [
                [d.feature, d.psi, d.ks, d.served_missing_share, d.reference_missing_share]
                for d in [*score_drift, *top[:_TABLE_ROWS]]
            ],
        ),
    }
    if drifts:
        chart = charts.psi_chart(drifts, day, thresholds.psi_warn, thresholds.psi_error)
        metadata["chart"] = dg.MetadataValue.md(charts.png_markdown(chart, "PSI by feature"))
    return dg.MaterializeResult(
        metadata=metadata,
        check_results=[
            _check("feature_psi", judge.judge_drift(drifts, day, thresholds), day),
            _check("score_psi", judge.judge_drift(score_drift, day, thresholds, "score drift"), day),
        ],
    )


@dg.asset(
    key=SKEW,
    group_name=GROUP,
    kinds={"duckdb", "python"},
    partitions_def=DECISION_DAYS,
    deps=[
        DECISIONS_ASSET,
        ONLINE_ASSET,
        dg.AssetKey(["raw", "transactions"]),
        dg.AssetKey(["card_daily_features"]),
        dg.AssetKey(["merchant_daily_features"]),
    ],
    check_specs=[
        dg.AssetCheckSpec(
            "skew_rate",
            asset=SKEW,
            description="Served vectors equal their offline "
            "recomputation: any mismatch warns, a mismatch rate at the error threshold fails.",
        )
    ],
    description="Online/offline skew: a sample of the day's served vectors recomputed offline with the same "
    "feature code (backfill, previous-day snapshots, on-demand), mismatches counted per feature.",
)
def monitoring_skew(
    context: dg.AssetExecutionContext, warehouse: DuckDBResource, monitoring: MonitoringSettings
) -> dg.MaterializeResult:
    """Recompute a sample of the day's served vectors and count the differences."""
    day = context.partition_key
    with warehouse.get_connection() as connection:
        define_live_decisions(connection, snapshot_loads(context.instance))
        skew = measure_skew(connection, served_day(connection, day, limit=monitoring.skew_sample_size))
        summary = {
            "day": day,
            "sampled": skew.sampled,
            "compared": skew.compared,
            "not_in_warehouse": skew.not_in_warehouse,
            "mismatching_transactions": skew.mismatching_transactions,
            "mismatch_rate": skew.mismatch_rate,
            "examples": ", ".join(skew.examples),
            **{f"mismatching_{group}": count for group, count in skew.by_group.items()},
        }
        replace_day(connection, "skew", day, [summary])
        features = [
            {"day": day, "feature": name, "mismatches": count} for name, count in skew.mismatches.items()
        ]
        replace_day(connection, "skew_features", day, features)
    differing = sorted(((count, name) for name, count in skew.mismatches.items() if count), reverse=True)
    return dg.MaterializeResult(
        metadata={
            "sampled": dg.MetadataValue.int(skew.sampled),
            "compared": dg.MetadataValue.int(skew.compared),
            "rows_compared": dg.MetadataValue.text(
                f"{skew.compared} live decisions of {day} (replays and other feature definitions left out): "
                "the served vector against the backfill's recomputation (training uses the served vector "
                "for them unless FRAUD_PLATFORM_TRAIN_ON_SERVED=0)"
            ),
            "not_in_warehouse": dg.MetadataValue.int(skew.not_in_warehouse),
            "mismatching_transactions": dg.MetadataValue.int(skew.mismatching_transactions),
            "mismatch_rate": _number(skew.mismatch_rate),
            "examples": dg.MetadataValue.text(summary["examples"] or "-"),
            **{f"mismatching_{group}": dg.MetadataValue.int(count) for group, count in skew.by_group.items()},
            "features_differing": _md_table(
                ["feature", "mismatching transactions"], [[n, c] for c, n in differing]
            ),
        },
        check_results=[_check("skew_rate", judge.judge_skew(skew, monitoring.thresholds()), day)],
    )


@dg.asset(
    key=MLFLOW_RUNS,
    group_name=GROUP,
    kinds={"mlflow"},
    partitions_def=DECISION_DAYS,
    deps=[PERFORMANCE, MATURITY, DRIFT, SKEW],
    description="The day's monitoring figures in MLflow (experiment fraud-monitoring): one run per model "
    "version that decided that day, tagged model_version, with the realised metrics, PSI/KS per feature, the "
    "skew counts and the charts; the summary a person reads first.",
)
def monitoring_mlflow_runs(
    context: dg.AssetExecutionContext,
    warehouse: DuckDBResource,
    mlflow: MlflowResource,
    monitoring: MonitoringSettings,
) -> dg.MaterializeResult:
    """Log one MLflow run per (day, model version) and summarise the day."""
    day = context.partition_key
    thresholds = monitoring.thresholds()
    with warehouse.get_connection() as connection:
        records = performance_records(connection, day)
        drifts = drift_rows(connection, day)
        skew = skew_row(connection, day) or {}
        lines = summary_lines(connection, day, thresholds)
        figures = {
            "realised_performance.png": charts.performance_chart(
                *performance_history(connection, day, _HISTORY_DAYS), day
            ),
            "label_maturity.png": charts.maturity_chart(maturity_points(connection, day), day),
        }
    shared: dict[str, float] = {
        **{f"psi/{row['feature']}": row["psi"] for row in drifts},
        **{f"ks/{row['feature']}": row["ks"] for row in drifts},
        **{
            f"skew/{key}": float(skew[key])
            for key in ("compared", "mismatching_transactions", "mismatch_rate")
            if key in skew
        },
    }
    features = [
        FeatureDrift(**{name: row[name] for name in FeatureDrift.__dataclass_fields__})
        for row in drifts
        if row["feature"] != SCORE
    ]
    if features:
        figures["psi_by_feature.png"] = charts.psi_chart(
            features, day, thresholds.psi_warn, thresholds.psi_error
        )
    client = mlflow.client()
    run_ids = {
        record.model_version: log_day(
            client,
            None if registry.is_tracking_server(mlflow.tracking_uri) else Path(mlflow.artifact_root),
            day,
            record.model_version,
            {
                **{
                    key: float(value) for key, value in record.row().items() if isinstance(value, int | float)
                },
                **shared,
            },
            figures,
            {"dagster_run_id": context.run.run_id},
        )
        for record in records
    }
    return dg.MaterializeResult(
        metadata={
            "summary": dg.MetadataValue.md("\n".join(f"- {line}" for line in lines)),
            "mlflow_runs": dg.MetadataValue.md(
                "\n".join(f"- model {version}: run `{run_id}`" for version, run_id in run_ids.items()) or "-"
            ),
        }
    )


MONITORING_ASSETS = [
    monitoring_realised_performance,
    monitoring_label_maturity,
    monitoring_drift,
    monitoring_skew,
    monitoring_mlflow_runs,
]

monitoring_job = dg.define_asset_job(
    "monitor",
    selection=dg.AssetSelection.groups(GROUP),
    description="Monitor one day of decisions: realised performance, label maturity, drift, skew, MLflow runs.",
)

_RECENT_DAYS = 7


@dg.schedule(
    job=monitoring_job,
    cron_schedule="30 3 * * *",
    execution_timezone="UTC",
    description="Every day at 03:30 UTC (after the batch refresh), monitor the newest decision days again: "
    "their labels keep maturing.",
)
def daily_monitoring(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest]:
    """One run per monitored decision day of the last week."""
    days = sorted(context.instance.get_dynamic_partitions(DECISION_DAYS.name))[-_RECENT_DAYS:]  # newest
    stamp = context.scheduled_execution_time.date().isoformat() if context.scheduled_execution_time else "now"
    return [dg.RunRequest(run_key=f"{stamp}-{day}", partition_key=day) for day in days]


@dg.sensor(
    job=training_job,
    minimum_interval_seconds=60,
    description="Retrain when a drift or realised-performance check (and, if configured, skew) fails at ERROR.",
)
def monitoring_retrain_sensor(
    context: dg.SensorEvaluationContext, monitoring: MonitoringSettings
) -> dg.SensorResult:
    """Request `train_model` for the ERROR failures of the retraining checks newer than the cursor.

    Per check and day only the newest evaluation counts (a day that passed when re-run is not a reason);
    the run key is the newest evaluation's storage id, so a request never repeats.
    """
    seen = int(context.cursor or 0)
    newest: dict[tuple[dg.AssetCheckKey, str], tuple[int, bool, str]] = {}
    for key in monitoring.retrain_checks():
        records = context.instance.event_log_storage.get_asset_check_execution_history(key, limit=100)
        for record in records:
            evaluation = record.evaluation
            if record.id <= seen or not isinstance(evaluation, dg.AssetCheckEvaluation):
                continue  # seen already, or only planned (a planned record holds no evaluation)
            day = getattr(evaluation.metadata.get("day"), "value", record.partition or "-")
            failed = not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR
            reason = getattr(evaluation.metadata.get("reason"), "value", key.to_user_string())
            if (key, day) not in newest or record.id > newest[key, day][0]:
                newest[key, day] = (record.id, failed, reason)
    cursor = str(max([seen, *(entry[0] for entry in newest.values())]))
    reasons = sorted((entry for entry in newest.values() if entry[1]), key=lambda entry: entry[0])
    if not reasons:
        return dg.SensorResult(
            skip_reason=f"no check failed at ERROR among {', '.join(k.name for k in monitoring.retrain_checks())}",
            cursor=cursor,
        )
    request = dg.RunRequest(
        run_key=f"monitoring-{reasons[-1][0]}",
        tags={RETRAIN_REASON_TAG: "; ".join(reason for _, _, reason in reasons)[:1_000]},
    )
    return dg.SensorResult(run_requests=[request], cursor=cursor)
