"""Charts of a monitored day, as matplotlib figures (for MLflow) and as PNG markdown (for the Dagster UI)."""

import base64
import io
from collections.abc import Sequence

from matplotlib.figure import Figure

from fraud_platform.monitoring.drift import DAY_CONSTANT_FEATURES, FeatureDrift
from fraud_platform.monitoring.performance import MaturityPoint

_TOP = 15


def psi_chart(drifts: Sequence[FeatureDrift], day: str, warn: float, error: float) -> Figure:
    """The largest PSIs of the day as horizontal bars, with the warn and error lines."""
    top = sorted(drifts, key=lambda drift: drift.psi)[-_TOP:]
    figure = Figure(figsize=(6.5, 4.5))
    axes = figure.add_subplot()
    colours = [
        "tab:gray"
        if d.feature in DAY_CONSTANT_FEATURES
        else "tab:red"
        if d.psi >= error
        else "tab:orange"
        if d.psi >= warn
        else "tab:blue"
        for d in top
    ]
    names = [f"{d.feature} (not judged)" if d.feature in DAY_CONSTANT_FEATURES else d.feature for d in top]
    axes.barh(names, [drift.psi for drift in top], color=colours)
    axes.axvline(warn, color="tab:orange", linestyle="--", linewidth=1, label=f"warn {warn}")
    axes.axvline(error, color="tab:red", linestyle="--", linewidth=1, label=f"error {error}")
    axes.set(
        xlabel="population stability index", title=f"Drift vs the model's reference, {day} (top {len(top)})"
    )
    axes.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    return figure


def performance_chart(days: Sequence[str], series: dict[str, Sequence[float]], day: str) -> Figure:
    """Realised metrics (precision, recall, labelled share) over the monitored days up to `day`."""
    figure = Figure(figsize=(6.5, 3.8))
    axes = figure.add_subplot()
    for name, values in series.items():
        axes.plot(list(days), list(values), marker="o", label=name)
    axes.set(
        ylim=(-0.02, 1.02), ylabel="share", title=f"Realised performance up to {day} (labels as known now)"
    )
    axes.tick_params(axis="x", labelrotation=45, labelsize="small")
    axes.legend(fontsize="small")
    figure.tight_layout()
    return figure


def maturity_chart(points: Sequence[MaturityPoint], day: str) -> Figure:
    """Share of the day's transactions labelled, by days since the day ended."""
    figure = Figure(figsize=(6.5, 3.5))
    axes = figure.add_subplot()
    ages = [p.age_days for p in points]
    frauds = [p.frauds_known / p.transactions if p.transactions else 0.0 for p in points]
    axes.step(ages, [p.labelled_share for p in points], where="post", marker="o", label="labelled")
    axes.step(ages, frauds, where="post", marker=".", label="labelled fraud")
    axes.set_xlim(-0.5, max([*ages, 1]) + 0.5)
    axes.set(
        ylim=(-0.02, 1.02), xlabel="days after the day ended", ylabel="share of the day's transactions",
        title=f"Label maturity of {day}",
    )  # fmt: skip
    axes.legend(fontsize="small")
    figure.tight_layout()
    return figure


def png_markdown(figure: Figure, title: str) -> str:
    """The figure as a PNG image in a markdown data URI (the Dagster UI shows it in the metadata)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=72)
    return f"![{title}](data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()})"
