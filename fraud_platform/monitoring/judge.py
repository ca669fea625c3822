"""Thresholds and verdicts: when drift, skew or realised performance deserve a warning or an error.

Pure functions over the measurements; the Dagster asset checks turn a verdict into a check result with
its severity, and the retraining sensor reads the ERROR verdicts' reasons from the instance.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fraud_platform.monitoring.drift import DAY_CONSTANT_FEATURES, FeatureDrift
from fraud_platform.monitoring.performance import RealisedPerformance
from fraud_platform.monitoring.skew import SkewResult

OK, WARN, ERROR = "OK", "WARN", "ERROR"
# Realised metric -> the contract's validation metric it is held against.
JUDGED_METRICS = {"decline_precision": "decline_precision", "alert_recall": "alert_recall"}
# What each judged ratio counts over (a RealisedPerformance field): too few of them and one case moves it far.
_DENOMINATORS = {"decline_precision": "declines", "alert_recall": "frauds_known"}
_LISTED = 3


@dataclass(frozen=True)
class Thresholds:
    """Warn and error levels (see docs/monitoring.md)."""

    psi_warn: float = 0.1
    psi_error: float = 0.25
    min_served_rows: int = 200  # drift is not judged on fewer served decisions (PSI is noisy there)
    skew_warn_rate: float = 0.0  # any mismatching transaction warns
    skew_error_rate: float = 0.01
    performance_margin_warn: float = 0.05  # below the validation value by this much (absolute)
    performance_margin_error: float = 0.15
    min_labelled_share: float = 0.9  # performance is judged only on days this mature
    min_judged_count: int = (
        30  # a ratio is judged only over this many declines (precision) or frauds (recall)
    )

    def __post_init__(self) -> None:
        for name, warn, error in (
            ("psi", self.psi_warn, self.psi_error),
            ("skew_rate", self.skew_warn_rate, self.skew_error_rate),
            ("performance_margin", self.performance_margin_warn, self.performance_margin_error),
        ):
            if not 0 <= warn <= error:
                raise ValueError(f"{name}: need 0 <= warn ({warn}) <= error ({error})")
        if not 0 <= self.min_labelled_share <= 1:
            raise ValueError(f"min_labelled_share must lie in [0, 1], got {self.min_labelled_share}")


@dataclass(frozen=True)
class Verdict:
    """OK, WARN or ERROR with a sentence a person can act on."""

    severity: str
    reason: str

    @property
    def passed(self) -> bool:
        """True when nothing crossed a threshold."""
        return self.severity == OK


def _level(value: float, warn: float, error: float, *, strict_warn: bool = False) -> str:
    if value >= error:
        return ERROR
    if value > warn if strict_warn else value >= warn:
        return WARN
    return OK


def judge_drift(
    drifts: Sequence[FeatureDrift], day: str, thresholds: Thresholds, what: str = "drift"
) -> Verdict:
    """The worst PSI among `drifts` against the thresholds; the reason names every feature at the verdict's
    level (at ERROR only those over the error threshold: a warning-level shift beside them is not the cause).

    Features constant within a day (DAY_CONSTANT_FEATURES) are not judged."""
    judged = [
        drift
        for drift in drifts
        if drift.served_rows >= thresholds.min_served_rows and drift.feature not in DAY_CONSTANT_FEATURES
    ]
    if not judged:
        return Verdict(
            OK, f"{what}: not judged on {day}, fewer than {thresholds.min_served_rows} served rows"
        )
    worst = sorted(judged, key=lambda drift: drift.psi, reverse=True)
    severity = _level(worst[0].psi, thresholds.psi_warn, thresholds.psi_error)
    if severity == OK:
        return Verdict(
            OK, f"{what}: max PSI({worst[0].feature})={worst[0].psi:.3f} < {thresholds.psi_warn} on {day}"
        )
    limit = thresholds.psi_error if severity == ERROR else thresholds.psi_warn
    over = [drift for drift in worst if drift.psi >= limit]
    listed = ", ".join(f"PSI({drift.feature})={drift.psi:.2f}" for drift in over[:_LISTED])
    more = f" and {len(over) - _LISTED} more" if len(over) > _LISTED else ""
    return Verdict(severity, f"{what}: {listed}{more} (max >= {limit}) on {day}")


def judge_skew(skew: SkewResult, thresholds: Thresholds) -> Verdict:
    """The share of sampled transactions whose served vector differs from the offline one."""
    rate = skew.mismatch_rate
    severity = _level(rate, thresholds.skew_warn_rate, thresholds.skew_error_rate, strict_warn=True)
    worst = sorted(((count, name) for name, count in skew.mismatches.items() if count), reverse=True)
    features = ", ".join(f"{name} ({count})" for count, name in worst[:_LISTED])
    detail = f": {features}" if features else ""
    return Verdict(
        severity,
        f"skew: {skew.mismatching_transactions} of {skew.compared} sampled transactions differ "
        f"({rate:.1%}){detail} on {skew.day}",
    )


def judge_performance(
    records: Sequence[RealisedPerformance],
    validation: Mapping[str, Mapping[str, float]],
    thresholds: Thresholds,
) -> Verdict:
    """Realised decline precision and alert recall of each model version against its validation values.

    `validation` maps model version -> its contract's validation metrics (versions without any, e.g. the
    rules baseline, are not judged); a version whose decisions are less labelled than
    `min_labelled_share` is not judged yet, nor a ratio over fewer than `min_judged_count` declines (precision)
    or known frauds (recall): with four frauds a day, one more caught moves recall by 25 points.
    """
    findings: list[tuple[str, str]] = []
    notes: list[str] = []
    for record in records:
        ratios = record.ratios()
        expected = validation.get(record.model_version)
        if not expected:
            notes.append(f"version {record.model_version} has no validation metrics")
            continue
        if not ratios["labelled_share"] >= thresholds.min_labelled_share:
            notes.append(
                f"version {record.model_version} {ratios['labelled_share']:.0%} labelled "
                f"(judged from {thresholds.min_labelled_share:.0%})"
            )
            continue
        for realised_name, validation_name in JUDGED_METRICS.items():
            realised, target = ratios[realised_name], expected.get(validation_name)
            if target is None or realised != realised:  # NaN: no such decision
                continue
            count = getattr(record, _DENOMINATORS[realised_name])
            if count < thresholds.min_judged_count:
                notes.append(
                    f"{realised_name} of version {record.model_version} over {count} "
                    f"{_DENOMINATORS[realised_name].replace('_', ' ')} (judged from {thresholds.min_judged_count})"
                )
                continue
            severity = _level(
                target - realised, thresholds.performance_margin_warn, thresholds.performance_margin_error
            )
            if severity != OK:
                findings.append(
                    (
                        severity,
                        f"{realised_name}={realised:.2f} vs validation {target:.2f} "
                        f"(version {record.model_version})",
                    )
                )
    day = records[0].day if records else "-"
    if not findings:
        detail = f" ({'; '.join(notes)})" if notes else ""
        return Verdict(OK, f"performance: nothing below validation on {day}{detail}")
    severity = ERROR if any(level == ERROR for level, _ in findings) else WARN
    return Verdict(severity, f"performance: {', '.join(text for _, text in findings)} on {day}")
