"""The simulator: determinism, schemas, realistic genuine traffic, fraud signatures and delayed labels."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fraud_platform.lib import schema
from fraud_platform.lib.landing import LandingZone
from fraud_platform.lib.simulator import SCENARIOS, SimulatedData, SimulationConfig, simulate

WORLD = SimulationConfig(cards=800, days=90, start=date(2026, 3, 1), seed=7)
# A longer period with more fraud and more unreported fraud, to measure label delays and shares.
LABELLED = SimulationConfig(
    cards=400, days=150, seed=11, fraud_card_share=0.5, unreported_fraud_rate=0.3, false_claim_rate=0.002
)


@pytest.fixture(scope="module")
def world() -> tuple[SimulatedData, list[int]]:
    calls: list[int] = []
    return simulate(WORLD, calls.append), calls


@pytest.fixture(scope="module")
def data(world: tuple[SimulatedData, list[int]]) -> SimulatedData:
    return world[0]


@pytest.fixture(scope="module")
def frame(data: SimulatedData) -> pd.DataFrame:
    """Transactions with their truth and the card's median genuine USD amount."""
    transactions = data.transactions.to_pandas()
    truth = data.fraud_truth.to_pandas()
    assert (truth["transaction_id"].to_numpy() == transactions["transaction_id"].to_numpy()).all()
    transactions["scenario"] = truth["scenario"].to_numpy()
    transactions["is_fraud"] = truth["is_fraud"].to_numpy()
    genuine_usd = transactions[(transactions["scenario"] == "genuine") & (transactions["currency"] == "USD")]
    medians = genuine_usd.groupby("card_id")["amount"].median().rename("card_median")
    return transactions.join(medians, on="card_id")


@pytest.fixture(scope="module")
def labelled() -> SimulatedData:
    return simulate(LABELLED)


def _km(lat1: np.ndarray, lon1: np.ndarray, lat2: np.ndarray, lon2: np.ndarray) -> np.ndarray:
    lat1, lon1, lat2, lon2 = (
        np.radians(np.asarray(value, dtype=float)) for value in (lat1, lon1, lat2, lon2)
    )
    a = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    return 2 * 6371.0 * np.arcsin(np.sqrt(a))


def _start(config: SimulationConfig) -> pd.Timestamp:
    return pd.Timestamp(datetime.combine(config.start, datetime.min.time(), UTC))


# ------------------------------------------------------------------------------------ determinism, schema


def test_same_config_gives_identical_tables_and_another_seed_does_not() -> None:
    config = SimulationConfig(cards=300, days=20, seed=3)
    first, again = simulate(config), simulate(config)
    other = simulate(SimulationConfig(cards=300, days=20, seed=4))
    for name in ("transactions", "cards", "merchants", "chargebacks", "investigations", "fraud_truth"):
        assert getattr(first, name).equals(getattr(again, name)), name
    assert not first.transactions.equals(other.transactions)
    assert not first.cards.equals(other.cards)


def test_tables_have_exactly_the_platform_schemas(data: SimulatedData) -> None:
    assert data.transactions.schema.equals(schema.TRANSACTIONS)
    assert set(data.context()) == set(schema.CONTEXT_TABLES) - {"decisions"}  # decisions come from the stream
    for name, table in data.context().items():
        assert table.schema.equals(schema.CONTEXT_TABLES[name]), name
    assert data.cards.num_rows == WORLD.cards
    assert data.merchants.num_rows == WORLD.merchant_count == 200


def test_every_transaction_passes_the_event_validation(data: SimulatedData) -> None:
    for row in data.transactions.to_pylist():
        parsed = schema.parse_transaction(row)
        assert parsed.amount == row["amount"]


def test_ids_are_unique_and_transaction_ids_follow_time(data: SimulatedData) -> None:
    ids = {
        "transactions": ("transaction_id", "tx"),
        "cards": ("card_id", "c"),
        "merchants": ("merchant_id", "m"),
        "chargebacks": ("chargeback_id", "cb"),
        "investigations": ("investigation_id", "inv"),
    }
    for table_name, (column, prefix) in ids.items():
        values = getattr(data, table_name).column(column).to_pylist()
        assert values, table_name
        assert len(set(values)) == len(values), table_name
        assert all(value.startswith(prefix) and value[len(prefix) :].isdigit() for value in values), (
            table_name
        )
        assert len({len(value) for value in values}) == 1, f"{table_name} ids are not fixed width"
    assert data.cards.column("card_id")[0].as_py() == "c0000001"
    assert data.merchants.column("merchant_id")[0].as_py() == "m000001"
    transaction_ids = data.transactions.column("transaction_id").to_pylist()
    assert transaction_ids == sorted(transaction_ids)
    times = data.transactions.column("timestamp").cast(pa.int64()).to_numpy()
    assert (np.diff(times) >= 0).all()
    assert data.fraud_truth.column("transaction_id").equals(data.transactions.column("transaction_id"))


def test_every_timestamp_is_inside_the_period(data: SimulatedData) -> None:
    start, end = _start(WORLD), _start(WORLD) + pd.Timedelta(days=WORLD.days)
    assert WORLD.end == end.to_pydatetime()
    columns = [
        data.transactions.column("timestamp"),
        data.chargebacks.column("reported_at"),
        data.investigations.column("opened_at"),
        data.investigations.column("closed_at").drop_null(),
    ]
    for column in columns:
        series = column.to_pandas()
        assert series.min() >= start and series.max() < end
    # Genuine traffic covers the whole period, including its first and last hours (all time zones).
    hours = data.transactions.column("timestamp").to_pandas().dt.floor("h")
    assert hours.nunique() == WORLD.days * 24
    open_dates = data.cards.column("account_open_date").to_pandas()
    assert (open_dates < WORLD.start).all() and (open_dates > WORLD.start - timedelta(days=3_660)).all()


def test_transactions_reference_known_cards_and_carry_their_merchant(data: SimulatedData) -> None:
    transactions = data.transactions.to_pandas()
    merchants = data.merchants.to_pandas().set_index("merchant_id")
    assert transactions["card_id"].isin(data.cards.column("card_id").to_pylist()).all()
    assert transactions["merchant_id"].isin(merchants.index).all()
    merchant = merchants.loc[transactions["merchant_id"]].reset_index(drop=True)
    assert (transactions["mcc"] == merchant["mcc"]).all()
    assert (transactions["channel"] == merchant["channel"]).all()
    located = transactions["channel"] != "ecom"
    assert transactions.loc[located, ["lat", "lon"]].notna().all().all()
    assert transactions.loc[~located, ["lat", "lon"]].isna().all().all()
    assert np.allclose(transactions.loc[located, "lat"], merchant.loc[located, "lat"])
    assert (transactions.loc[~located, "currency"] == "USD").all()
    assert merchants.loc[merchants["channel"] == "ecom", ["lat", "lon"]].isna().all().all()
    assert (merchants.loc[merchants["channel"] == "atm", "mcc"] == "6011").all()


def test_progress_reports_every_transaction_in_a_few_calls(world: tuple[SimulatedData, list[int]]) -> None:
    data, calls = world
    assert 2 <= len(calls) <= 20
    assert all(count >= 0 for count in calls)
    assert sum(calls) == data.transactions.num_rows


# ------------------------------------------------------------------------------------ genuine traffic


def test_genuine_spending_follows_category_and_home(frame: pd.DataFrame, data: SimulatedData) -> None:
    genuine = frame[frame["scenario"] == "genuine"]
    per_card_day = len(genuine) / WORLD.cards / WORLD.days
    assert 0.8 < per_card_day < 3.0
    medians = genuine[genuine["currency"] == "USD"].groupby("mcc")["amount"].median()
    assert medians["5944"] > medians["5732"] > medians["5411"] > medians["5814"]
    usd_cash = genuine.loc[(genuine["mcc"] == "6011") & (genuine["currency"] == "USD"), "amount"]
    assert len(usd_cash) and (usd_cash % 20 == 0).all()
    # Most card-present purchases are near home; a few are travel, some of it abroad.
    cards = data.cards.to_pandas().set_index("card_id")
    present = genuine[genuine["channel"] != "ecom"]
    home = cards.loc[present["card_id"]]
    distance = _km(present["lat"], present["lon"], home["home_lat"], home["home_lon"])
    assert 0.85 < (distance < 100).mean() < 0.999
    assert 0.0005 < (genuine["currency"] != "USD").mean() < 0.05
    assert 0.15 < (genuine["channel"] == "ecom").mean() < 0.45
    # Weekend days are busier than Mondays, and nights (US time) are quiet.
    weekday = genuine["timestamp"].dt.tz_convert("America/Chicago").dt.dayofweek.value_counts()
    assert weekday[5] > 1.1 * weekday[0]
    local_hour = genuine["timestamp"].dt.tz_convert("America/Chicago").dt.hour.value_counts()
    assert local_hour[4] < 0.3 * local_hour[14]


# ------------------------------------------------------------------------------------------- fraud


def test_every_scenario_is_present_in_a_plausible_fraud_rate(frame: pd.DataFrame) -> None:
    fraud = frame[frame["is_fraud"]]
    assert set(frame["scenario"]) == {"genuine", *SCENARIOS}
    assert (frame["is_fraud"] == (frame["scenario"] != "genuine")).all()
    assert 0.001 < len(fraud) / len(frame) < 0.02
    shares = fraud["scenario"].value_counts(normalize=True)
    cards = fraud.groupby("scenario")["card_id"].nunique()
    for scenario in SCENARIOS:
        assert shares[scenario] > 0.03, scenario
        assert cards[scenario] >= 8, scenario
    # Each fraud card is the victim of one scenario, about fraud_card_share of all cards.
    assert (fraud.groupby("card_id")["scenario"].nunique() == 1).all()
    assert abs(fraud["card_id"].nunique() / WORLD.cards - WORLD.fraud_card_share) < 0.03


def test_card_testing_is_a_burst_of_tiny_online_charges_at_distinct_merchants(frame: pd.DataFrame) -> None:
    testing = frame[frame["scenario"] == "card_testing"]
    followed = 0
    for _, rows in testing.groupby("card_id"):
        tiny = rows[rows["amount"] <= 5.0]
        assert 5 <= len(tiny) <= 20
        assert tiny["merchant_id"].is_unique
        assert (tiny["channel"] == "ecom").all()
        assert tiny["timestamp"].max() - tiny["timestamp"].min() <= pd.Timedelta(minutes=15)
        large = rows[rows["amount"] > 5.0]
        assert len(large) <= 1
        if len(large):
            followed += 1
            assert large["timestamp"].iloc[0] > tiny["timestamp"].max()
            assert large["amount"].iloc[0] >= 50
    assert followed >= 1


def test_impossible_travel_is_far_from_the_previous_genuine_purchase_within_an_hour(
    frame: pd.DataFrame,
) -> None:
    located = frame[(frame["channel"] != "ecom") & (frame["scenario"] == "genuine")]
    travel = frame[frame["scenario"] == "impossible_travel"]
    assert (travel["channel"] != "ecom").all()
    earlier = located[["card_id", "timestamp", "lat", "lon"]].assign(previous_time=located["timestamp"])
    previous = pd.merge_asof(
        travel.sort_values("timestamp"),
        earlier.sort_values("timestamp"),
        on="timestamp",
        by="card_id",
        direction="backward",
        suffixes=("", "_previous"),
    )
    assert previous["previous_time"].notna().all()
    assert ((previous["timestamp"] - previous["previous_time"]) <= pd.Timedelta(minutes=60)).all()
    distance = _km(previous["lat"], previous["lon"], previous["lat_previous"], previous["lon_previous"])
    assert (distance > 1_000).all()
    assert travel.groupby("card_id").size().between(1, 4).all()


def test_account_takeover_spends_big_online_at_merchants_new_to_the_card(frame: pd.DataFrame) -> None:
    genuine = frame[frame["scenario"] == "genuine"]
    takeover = frame[frame["scenario"] == "account_takeover"]
    assert (takeover["channel"] == "ecom").all()
    for card, rows in takeover.groupby("card_id"):
        history = genuine[(genuine["card_id"] == card) & (genuine["timestamp"] < rows["timestamp"].max())]
        assert not rows["merchant_id"].isin(history["merchant_id"]).any()
        assert rows["timestamp"].max() - rows["timestamp"].min() <= pd.Timedelta(hours=4)
        assert 1 <= len(rows) <= 5
        assert (rows["amount"] >= 3 * rows["card_median"]).all()


def _greedy_cover(visited: list[set[str]]) -> int:
    """How many merchants it takes to include one merchant of every set (greedy)."""
    uncovered, chosen = [merchants for merchants in visited if merchants], 0
    while uncovered:
        counts = pd.Series([merchant for merchants in uncovered for merchant in merchants]).value_counts()
        uncovered = [merchants for merchants in uncovered if counts.index[0] not in merchants]
        chosen += 1
    return chosen


def test_compromised_merchant_victims_share_an_earlier_merchant(frame: pd.DataFrame) -> None:
    genuine = frame[(frame["scenario"] == "genuine") & (frame["channel"] != "ecom")]
    victims = frame[frame["scenario"] == "compromised_merchant"].groupby("card_id")["timestamp"].min()
    assert len(victims) >= 8

    def visited(card: str, when: pd.Timestamp) -> set[str]:
        window = genuine[
            (genuine["card_id"] == card)
            & (genuine["timestamp"] >= when - pd.Timedelta(days=31))
            & (genuine["timestamp"] <= when - pd.Timedelta(days=3))
        ]
        return set(window["merchant_id"])

    victim_sets = [visited(card, when) for card, when in victims.items()]
    assert all(victim_sets), "every victim paid in person somewhere 3-30 days before the fraud"
    # Control: the same number of honest cards, looked at the same moments.
    honest = frame.loc[~frame["is_fraud"], "card_id"].drop_duplicates()
    honest = honest[~honest.isin(frame.loc[frame["is_fraud"], "card_id"])]
    control = honest.sample(len(victims), random_state=0)
    control_sets = [visited(card, when) for card, when in zip(control, victims, strict=True)]
    victim_cover, control_cover = _greedy_cover(victim_sets), _greedy_cover(control_sets)
    assert victim_cover <= max(3, len(victims) // 4)
    assert 2 * victim_cover < control_cover


def test_high_amount_is_one_purchase_far_above_the_cards_usual_spend(frame: pd.DataFrame) -> None:
    high = frame[frame["scenario"] == "high_amount"]
    assert high["card_id"].is_unique
    assert high["mcc"].isin(["5732", "5944"]).all()
    assert (high["amount"] >= 5 * high["card_median"]).all()
    assert high["amount"].median() > frame.loc[frame["scenario"] == "genuine", "amount"].quantile(0.99)


# -------------------------------------------------------------------------------------------- labels


def _chargebacks_with_truth(data: SimulatedData) -> pd.DataFrame:
    transactions = data.transactions.to_pandas()[["transaction_id", "card_id", "amount", "timestamp"]]
    transactions["scenario"] = data.fraud_truth.column("scenario").to_pandas()
    return data.chargebacks.to_pandas().merge(transactions, on="transaction_id", suffixes=("", "_tx"))


def test_chargebacks_arrive_days_to_months_later_and_only_before_the_end(labelled: SimulatedData) -> None:
    chargebacks = _chargebacks_with_truth(labelled)
    end = _start(LABELLED) + pd.Timedelta(days=LABELLED.days)
    assert len(chargebacks) == labelled.chargebacks.num_rows > 0
    assert (chargebacks["reported_at"] < end).all()
    assert (chargebacks["reported_at"] > chargebacks["timestamp"]).all()
    assert (chargebacks["card_id"] == chargebacks["card_id_tx"]).all()
    assert (chargebacks["amount"] == chargebacks["amount_tx"]).all()
    assert chargebacks["transaction_id"].is_unique
    delay_days = (chargebacks["reported_at"] - chargebacks["timestamp"]).dt.total_seconds() / 86_400
    assert delay_days.min() >= 1 and delay_days.max() <= 150.5
    assert 7 < delay_days.median() < 60
    assert (delay_days > 60).sum() >= 5
    assert set(chargebacks["reason"]) == {"fraud_card_present", "fraud_card_not_present"}
    # Frauds at the end of the period are not known yet.
    fraud = labelled.transactions.filter(labelled.fraud_truth.column("is_fraud")).to_pandas()
    last_week = fraud[fraud["timestamp"] >= end - pd.Timedelta(days=7)]
    assert len(last_week) > 0
    assert last_week["transaction_id"].isin(chargebacks["transaction_id"]).mean() < 0.1


def test_unreported_share_matches_the_config_and_false_claims_exist(labelled: SimulatedData) -> None:
    truth = labelled.fraud_truth.to_pandas()
    truth["timestamp"] = labelled.transactions.column("timestamp").to_pandas()
    truth["claimed"] = truth["transaction_id"].isin(labelled.chargebacks.column("transaction_id").to_pylist())
    # Frauds of the first 60 days have had at least 90 days to be reported (a few percent take longer).
    early = truth[truth["is_fraud"] & (truth["timestamp"] < _start(LABELLED) + pd.Timedelta(days=60))]
    assert len(early) > 200
    assert abs((1 - early["claimed"].mean()) - LABELLED.unreported_fraud_rate) < 0.1
    genuine = truth[~truth["is_fraud"]]
    false_claim_share = genuine["claimed"].mean()
    assert genuine["claimed"].sum() >= 20
    assert 0.2 * LABELLED.false_claim_rate < false_claim_share <= LABELLED.false_claim_rate * 1.5


def test_investigations_follow_chargebacks_and_card_testing_alerts(labelled: SimulatedData) -> None:
    investigations = labelled.investigations.to_pandas()
    chargebacks = _chargebacks_with_truth(labelled)
    end = _start(LABELLED) + pd.Timedelta(days=LABELLED.days)
    assert investigations["transaction_id"].is_unique
    reactive = investigations.merge(chargebacks, on="transaction_id", suffixes=("", "_cb"))
    assert (reactive["opened_at"] >= reactive["reported_at"]).all()
    assert (reactive["card_id"] == reactive["card_id_cb"]).all()
    # Every chargeback is investigated unless it arrived in the last day, when the case may not be open yet.
    uninvestigated = chargebacks[~chargebacks["transaction_id"].isin(investigations["transaction_id"])]
    assert (uninvestigated["reported_at"] > end - pd.Timedelta(days=1)).all()
    closed = investigations["closed_at"].notna()
    assert closed.any() and (~closed).any()
    assert (investigations.loc[closed, "closed_at"] > investigations.loc[closed, "opened_at"]).all()
    assert (investigations["outcome"].notna() == closed).all()
    assert set(investigations["outcome"].dropna()) <= schema.INVESTIGATION_OUTCOMES
    outcomes = reactive[reactive["outcome"].notna()]
    fraud_outcomes = outcomes.loc[outcomes["scenario"] != "genuine", "outcome"].value_counts(normalize=True)
    claim_outcomes = outcomes.loc[outcomes["scenario"] == "genuine", "outcome"].value_counts(normalize=True)
    assert fraud_outcomes["confirmed_fraud"] > 0.8
    assert claim_outcomes.idxmax() == "not_fraud"
    # Proactive investigations: card-testing bursts nobody reported.
    proactive = investigations[~investigations["transaction_id"].isin(chargebacks["transaction_id"])]
    truth = labelled.fraud_truth.to_pandas().set_index("transaction_id")["scenario"]
    assert len(proactive) >= 1
    assert (truth.loc[proactive["transaction_id"]] == "card_testing").all()


# ----------------------------------------------------------------------------------- config and landing


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("cards", 0),
        ("cards", 2.5),
        ("days", 0),
        ("start", datetime(2026, 1, 1, tzinfo=UTC)),
        ("seed", -1),
        ("merchants", 10),
        ("fraud_card_share", 1.5),
        ("unreported_fraud_rate", -0.1),
        ("false_claim_rate", float("nan")),
        ("median_report_delay_days", 0.0),
        ("scenario_weights", (1.0, 1.0)),
        ("scenario_weights", (0.0, 0.0, 0.0, 0.0, 0.0)),
        ("scenario_weights", (1.0, -1.0, 1.0, 1.0, 1.0)),
    ],
)
def test_invalid_config_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"SimulationConfig\.{field} "):
        SimulationConfig(**{field: value})


def test_fraud_free_world_has_no_fraud_and_only_false_claims() -> None:
    data = simulate(SimulationConfig(cards=200, days=30, fraud_card_share=0.0, false_claim_rate=0.01))
    assert not any(data.fraud_truth.column("is_fraud").to_pylist())
    assert data.chargebacks.num_rows > 0
    assert set(data.chargebacks.column("transaction_id").to_pylist()) <= set(
        data.transactions.column("transaction_id").to_pylist()
    )


def test_the_smallest_merchant_count_still_supports_every_scenario() -> None:
    data = simulate(SimulationConfig(cards=300, days=20, merchants=100, fraud_card_share=0.3, seed=5))
    merchants = data.merchants.to_pandas()
    assert len(merchants) == 100
    online = set(merchants.loc[merchants["channel"] == "ecom", "mcc"])
    assert {"5732", "5944", "5815", "5816"} <= online
    scenarios = set(data.fraud_truth.column("scenario").to_pylist())
    assert scenarios == {"genuine", *SCENARIOS}


def test_simulated_batch_lands_and_reads_back(data: SimulatedData, tmp_path) -> None:
    zone = LandingZone(tmp_path)
    manifest = zone.write_batch("sim-test", data.transactions, data.context(), source="simulator")
    assert manifest.transactions == data.transactions.num_rows
    assert len(manifest.days) == WORLD.days
    assert manifest.tables == {name: table.num_rows for name, table in data.context().items()}
    landed = pa.concat_tables(pq.read_table(path) for path in zone.transaction_files())
    assert landed.num_rows == data.transactions.num_rows
    assert landed.column("transaction_id").equals(data.transactions.column("transaction_id"))
    for name, table in data.context().items():
        (path,) = zone.context_files(name)
        assert pq.read_table(path).num_rows == table.num_rows, name
