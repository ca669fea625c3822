"""Drift between what was served (the feature log) and the champion's reference rows.

The reference is the champion's test window (`monitoring.served.reference_features`: the rows its metrics
were measured on, the newest it knew), or its training rows for a model registered without one.
Population stability index per feature: fixed bins cut at the deciles of the reference values,
plus one bin for missing values (NaN is a value the model sees), proportions floored at `EPSILON` so an
empty bin does not divide by zero. PSI = sum((served - reference) * ln(served / reference)); the usual
reading is < 0.1 stable, 0.1-0.25 moderate shift, >= 0.25 major shift. For continuous features (more than
`CONTINUOUS_MIN_VALUES` distinct reference values) the two-sample Kolmogorov-Smirnov statistic (the largest
gap between the two empirical CDFs of the non-missing values) is reported too.
"""

from dataclasses import dataclass

import numpy as np

BINS = 10
EPSILON = 1e-4
CONTINUOUS_MIN_VALUES = 20
# Constant within a UTC day by definition: a day is all weekend or none, so its PSI against the reference's
# mix of days is large every day. Reported, never judged.
DAY_CONSTANT_FEATURES = frozenset({"is_weekend"})


@dataclass(frozen=True)
class FeatureDrift:
    """Drift of one feature (or the score) on one day."""

    feature: str
    psi: float
    ks: float  # NaN for discrete features or when either side has no value
    served_rows: int
    reference_rows: int
    served_missing_share: float
    reference_missing_share: float


def bin_edges(reference: np.ndarray, bins: int = BINS) -> np.ndarray:
    """The inner bin edges: distinct quantiles of the reference's non-missing values."""
    values = reference[~np.isnan(reference)]
    if values.size == 0:
        return np.empty(0)
    return np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1]))


def _proportions(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Share of values per bin (len(edges) + 1 value bins, then the missing bin)."""
    missing = np.isnan(values)
    counts = np.bincount(np.searchsorted(edges, values[~missing], side="right"), minlength=edges.size + 1)
    return np.append(counts, missing.sum()) / max(values.size, 1)


def psi(reference: np.ndarray, served: np.ndarray, bins: int = BINS) -> float:
    """Population stability index of `served` against `reference` (1-D float arrays, NaN = missing)."""
    if reference.size == 0 or served.size == 0:
        raise ValueError(f"PSI needs values on both sides (reference {reference.size}, served {served.size})")
    edges = bin_edges(reference, bins)
    expected = np.maximum(_proportions(reference, edges), EPSILON)
    actual = np.maximum(_proportions(served, edges), EPSILON)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def ks_statistic(reference: np.ndarray, served: np.ndarray) -> float:
    """Two-sample KS statistic of the non-missing values (NaN when either side has none)."""
    first = np.sort(reference[~np.isnan(reference)])
    second = np.sort(served[~np.isnan(served)])
    if first.size == 0 or second.size == 0:
        return float("nan")
    points = np.concatenate([first, second])
    gap = np.searchsorted(first, points, side="right") / first.size
    gap -= np.searchsorted(second, points, side="right") / second.size
    return float(np.abs(gap).max())


def is_continuous(reference: np.ndarray) -> bool:
    """More than CONTINUOUS_MIN_VALUES distinct non-missing values."""
    return np.unique(reference[~np.isnan(reference)]).size > CONTINUOUS_MIN_VALUES


def feature_drift(name: str, reference: np.ndarray, served: np.ndarray) -> FeatureDrift:
    """PSI (and KS for a continuous feature) of one column."""
    reference = np.asarray(reference, dtype=np.float64)
    served = np.asarray(served, dtype=np.float64)
    return FeatureDrift(
        feature=name,
        psi=psi(reference, served),
        ks=ks_statistic(reference, served) if is_continuous(reference) else float("nan"),
        served_rows=int(served.size),
        reference_rows=int(reference.size),
        served_missing_share=float(np.isnan(served).mean()),
        reference_missing_share=float(np.isnan(reference).mean()),
    )


def matrix_drift(names: tuple[str, ...], reference: np.ndarray, served: np.ndarray) -> list[FeatureDrift]:
    """Drift of every column of two matrices with the same columns (`names`)."""
    if reference.shape[1:] != (len(names),) or served.shape[1:] != (len(names),):
        raise ValueError(
            f"drift needs {len(names)} columns on both sides: reference {reference.shape}, served {served.shape}"
        )
    return [feature_drift(name, reference[:, i], served[:, i]) for i, name in enumerate(names)]
