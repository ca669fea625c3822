"""Standard metrics on small tables computed by hand: card precision@k with known-compromised and
earlier-detected cards removed, and the fit's prequential folds."""

import numpy as np
import pytest

from fraud_platform.training.evaluation import (
    Scored,
    card_precision_at_k,
    daily_card_precision,
    ranking_metrics,
)
from fraud_platform.training.search import SelectionError, bootstrap_win_share, prequential_folds

NAT = np.datetime64("NaT", "D")


def _scored(rows: list[tuple[str, str, float, int, str | None]]) -> Scored:
    """Rows of (card, day, score, label, day the card's first fraud became known or None)."""
    cards, days, scores, labels, known = zip(*rows, strict=True)
    return Scored(
        scores=np.array(scores, dtype=np.float32),
        labels=np.array(labels, dtype=np.int8),
        amounts=np.full(len(rows), 10.0),
        card_ids=np.array(cards, dtype=object),
        event_days=np.array(days, dtype="datetime64[D]"),
        card_fraud_known_days=np.array([value or NAT for value in known], dtype="datetime64[D]"),
    )


def test_card_precision_at_k_by_the_standard_rule() -> None:
    table = _scored(
        [
            # Day 1: cards ranked by their maximum score: a 0.9 (fraud), k 0.85 (known compromised since day 0:
            # removed), b 0.8 (genuine), c 0.3 (fraud). Top 2 = a, b -> 1 of 2.
            ("a", "2026-03-01", 0.9, 1, "2026-03-05"),
            ("a", "2026-03-01", 0.2, 0, "2026-03-05"),
            ("k", "2026-03-01", 0.85, 1, "2026-02-28"),
            ("b", "2026-03-01", 0.8, 0, None),
            ("c", "2026-03-01", 0.3, 1, "2026-03-02"),
            # Day 2: a was detected on day 1 (removed); c's fraud became known on day 2 itself (still ranked);
            # top 2 = c 0.7 (fraud), d 0.6 (genuine) -> 1 of 2; e (0.1, fraud) is below the top 2.
            ("a", "2026-03-02", 0.99, 1, "2026-03-05"),
            ("c", "2026-03-02", 0.7, 1, "2026-03-02"),
            ("d", "2026-03-02", 0.6, 0, None),
            ("e", "2026-03-02", 0.1, 1, None),
            # Day 3: c is known since day 2 (removed) and was detected on day 2; e 0.5 (fraud) and b 0.4 -> 1/2.
            ("c", "2026-03-03", 0.95, 1, "2026-03-02"),
            ("e", "2026-03-03", 0.5, 1, None),
            ("b", "2026-03-03", 0.4, 0, None),
        ]
    )
    assert card_precision_at_k(table, k=2) == pytest.approx((1 / 2 + 1 / 2 + 1 / 2) / 3)
    assert daily_card_precision(table, k=2).tolist() == [1 / 2, 1 / 2, 1 / 2]  # the days, in order
    # Without the rule (nothing known, nothing detected) day 1 would rank k first: the rule changes the number.
    naive = _scored(
        [
            (c, str(d), s, lab, None)
            for c, d, s, lab in zip(table.card_ids, table.event_days, table.scores, table.labels, strict=True)
        ]
    )
    assert card_precision_at_k(naive, k=2) > card_precision_at_k(table, k=2)
    assert daily_card_precision(naive, k=2)[0] == 1.0  # a and k, both fraudulent


def test_card_precision_divides_by_k_even_when_fewer_cards_remain() -> None:
    table = _scored([("a", "2026-03-01", 0.9, 1, None), ("b", "2026-03-01", 0.8, 0, None)])
    assert card_precision_at_k(table, k=100) == pytest.approx(1 / 100)


def test_ranking_metrics_of_a_one_class_window_are_nan_not_an_error() -> None:
    table = _scored([("a", "2026-03-01", 0.9, 0, None), ("b", "2026-03-01", 0.8, 0, None)])
    metrics = ranking_metrics(table)
    assert np.isnan(metrics["average_precision"]) and metrics["transactions"] == 2


def test_prequential_folds_fit_only_on_days_before_their_block() -> None:
    days = np.repeat(np.arange("2026-03-01", "2026-03-11", dtype="datetime64[D]"), 3)
    validation = days >= np.datetime64("2026-03-05")
    folds = prequential_folds(days, validation, 3)
    assert len(folds) == 3
    covered = np.zeros(len(days), dtype=bool)
    for fold in folds:
        assert days[fold.fit].max() < days[fold.validate].min()
        assert not (covered & fold.validate).any()
        covered |= fold.validate
    assert (covered == validation).all()  # every validation day validated once
    with pytest.raises(SelectionError, match="no development day before"):
        prequential_folds(days, np.ones(len(days), dtype=bool), 3)


def test_the_bootstrap_credits_a_real_gain_not_a_tie_or_noise() -> None:
    rng = np.random.default_rng(1)
    labels = (rng.random(4_000) < 0.05).astype(np.int8)
    cards = np.arange(4_000) // 4  # four transactions per card: resampled together
    incumbent = rng.random(4_000) + 0.5 * labels
    better = incumbent + 1.0 * labels
    one_card = incumbent.copy()
    frauds = np.flatnonzero(labels)
    one_card[frauds[np.argmin(incumbent[frauds])]] += (
        10.0  # the worst-ranked fraud to the top: one card's gain
    )
    assert bootstrap_win_share(labels, better, incumbent, cards, seed=7) == 1.0
    assert bootstrap_win_share(labels, incumbent, incumbent, cards, seed=7) == 0.0  # a tie is no gain
    assert 0.5 < bootstrap_win_share(labels, one_card, incumbent, cards, seed=7) < 0.95  # in ~63 % of draws
