"""Tests of the import of a user's transaction file: real files in tmp_path and a real landing zone."""

from __future__ import annotations

import csv
import gzip
import random
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fraud_platform.lib.importer import ImportFileError, ImportRejected, import_file, parse_column_map
from fraud_platform.lib.landing import LandingError, LandingZone
from fraud_platform.lib.schema import EVENT_FIELDS

DAY1 = datetime(2024, 3, 1, tzinfo=UTC)
DAY2 = datetime(2024, 3, 2, tzinfo=UTC)
HEADER = [*EVENT_FIELDS, "fraud"]


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def at(day: datetime, hour: int) -> datetime:
    return day.replace(hour=hour)


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def good_row(transaction_id: str, hour: int = 10, fraud: str = "0") -> list[object]:
    """A valid row in HEADER's columns."""
    return [
        transaction_id,
        "c1",
        "m1",
        "12.5",
        "EUR",
        at(DAY1, hour).isoformat(),
        "",
        "",
        "pos",
        "5411",
        fraud,
    ]


def listing(root: Path) -> list[str]:
    """Every path under root (directories too), to prove that nothing changed."""
    return sorted(str(path.relative_to(root)) for path in root.rglob("*")) if root.exists() else []


def landed(landing: LandingZone, batch_id: str, table: str = "transactions") -> pa.Table:
    directory = landing.batches_dir / batch_id
    if table == "transactions":
        return pa.concat_tables(
            pq.read_table(path) for path in sorted(directory.glob("transactions/*.parquet"))
        )
    return pq.read_table(directory / f"{table}.parquet")


def read_rejects(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


@pytest.fixture
def landing(tmp_path: Path) -> LandingZone:
    return LandingZone(tmp_path / "landing")


@pytest.fixture
def reject_dir(tmp_path: Path) -> Path:
    return tmp_path / "rejects"


def test_mapped_csv_with_epoch_ms_loads_fully_with_derived_context(
    tmp_path: Path, landing: LandingZone, reject_dir: Path
) -> None:
    header = ["TxId", "Card", "Shop", "Amt", "Ccy", "EventMs", "Lat", "Lon", "Chan", "MCC"]
    rows = [
        ["t1", "c1", "m1", "10.50", "eur", ms(at(DAY1, 10)), "48.1", "11.5", "POS", "5411"],
        ["t2", "c1", "m1", "20", "EUR", ms(at(DAY1, 12)), "48.3", "11.7", "pos", "5411"],
        ["t3", "c1", "m2", "5", "EUR", ms(at(DAY2, 9)), "", "", "ecom", "5999"],
        ["t4", "c2", "m2", "7.25", "USD", ms(at(DAY2, 10)), "40.0", "-74.0", "atm", "6011"],
        ["t5", "c2", "m1", "3", "USD", ms(at(DAY2, 11)), "41.0", "-73.0", "pos", "5812"],
        ["t6", "c1", "m1", "1", "EUR", ms(at(DAY2, 12)), "48.5", "11.9", "pos", "5411"],
    ]
    path = write_csv(tmp_path / "export.csv", header, rows)
    mapping = parse_column_map(
        [f"{source}={target}" for source, target in zip(header, EVENT_FIELDS, strict=True)]
    )
    increments: list[int] = []

    result = import_file(path, landing, column_map=mapping, reject_dir=reject_dir, progress=increments.append)

    assert (result.loaded, result.rejected, result.reject_file) == (6, 0, None)
    assert result.days == {"2024-03-01": 2, "2024-03-02": 4}
    assert result.derived_tables == ("cards", "merchants")
    assert sum(increments) == 6
    assert not reject_dir.exists()
    transactions = landed(landing, result.batch_id).sort_by("transaction_id").to_pylist()
    assert transactions[0] == {
        "transaction_id": "t1",
        "card_id": "c1",
        "merchant_id": "m1",
        "amount": 10.5,
        "currency": "EUR",
        "timestamp": at(DAY1, 10),
        "lat": 48.1,
        "lon": 11.5,
        "channel": "pos",
        "mcc": "5411",
    }
    assert [row["amount"] for row in transactions] == [10.5, 20.0, 5.0, 7.25, 3.0, 1.0]
    assert [row["timestamp"] for row in transactions] == [
        datetime.fromtimestamp(row[5] / 1000, UTC) for row in rows
    ]
    assert (transactions[2]["lat"], transactions[2]["lon"]) == (None, None)
    cards = {row.pop("card_id"): row for row in landed(landing, result.batch_id, "cards").to_pylist()}
    assert cards["c1"] == {"home_lat": 48.3, "home_lon": 11.7, "account_open_date": DAY1.date()}
    assert cards["c2"] == {
        "home_lat": 41.0,
        "home_lon": -73.0,
        "account_open_date": DAY2.date(),
    }  # ATM not home
    merchants = {
        row.pop("merchant_id"): row for row in landed(landing, result.batch_id, "merchants").to_pylist()
    }
    assert merchants["m1"]["mcc"] == "5411" and merchants["m1"]["channel"] == "pos"
    assert merchants["m1"]["lat"] == pytest.approx(48.2) and merchants["m1"]["lon"] == pytest.approx(11.6)
    assert merchants["m2"] == {"mcc": "5999", "channel": "atm", "lat": None, "lon": None}  # ties: smallest
    manifest = landing.manifest(result.batch_id)
    assert manifest.source == "import"
    assert manifest.parameters["file"] == "export.csv"
    assert manifest.parameters["column_map"]["Amt"] == "amount"
    assert (manifest.parameters["rows"], manifest.parameters["loaded"], manifest.parameters["rejected"]) == (
        6,
        6,
        0,
    )


def test_parquet_with_native_types_and_default_currency(
    tmp_path: Path, landing: LandingZone, reject_dir: Path
) -> None:
    table = pa.table(
        {
            "transaction_id": pa.array([101, 102, 103], pa.int64()),
            "card_id": ["c1", "c1", "c2"],
            "merchant_id": ["m1", "m2", "m2"],
            "amount": [9.99, 100.0, float("nan")],
            "timestamp": pa.array([at(DAY1, 8), at(DAY2, 9), at(DAY2, 10)], pa.timestamp("ms", tz="UTC")),
            "lat": pa.array([52.5, None, None], pa.float64()),
            "lon": pa.array([13.4, None, None], pa.float64()),
            "mcc": pa.array([742, 5999, 5999], pa.int64()),
        }
    )
    path = tmp_path / "native.parquet"
    pq.write_table(table, path)

    result = import_file(path, landing, reject_dir=reject_dir, default_currency="gbp", max_reject_share=1)

    assert (result.loaded, result.rejected) == (2, 1)
    rows = landed(landing, result.batch_id).sort_by("transaction_id").to_pylist()
    assert [(row["transaction_id"], row["currency"], row["mcc"]) for row in rows] == [
        ("101", "GBP", "0742"),
        ("102", "GBP", "5999"),
    ]
    assert rows[0]["timestamp"] == at(DAY1, 8) and rows[0]["lat"] == 52.5
    [reject] = read_rejects(result.reject_file)
    assert reject["row"] == "3" and "'amount'" in reject["reason"] and reject["transaction_id"] == "103"


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz", ".txt", ".parquet"])
def test_every_supported_format_lands_the_same_rows(
    tmp_path: Path, landing: LandingZone, reject_dir: Path, suffix: str
) -> None:
    rows = [good_row("a", 9), good_row("b", 11)]
    path = tmp_path / f"file{suffix}"
    if suffix == ".csv.gz":
        with gzip.open(path, "wt", newline="") as file:
            csv.writer(file).writerows([HEADER, *rows])
    elif suffix == ".txt":
        with path.open("w", newline="") as file:
            csv.writer(file, delimiter="\t").writerows([HEADER, *rows])
    elif suffix == ".parquet":
        pq.write_table(pa.table({name: [str(row[i]) for row in rows] for i, name in enumerate(HEADER)}), path)
    else:
        write_csv(path, HEADER, rows)

    result = import_file(path, landing, reject_dir=reject_dir)

    assert (result.loaded, result.rejected) == (2, 0)
    assert landed(landing, result.batch_id).column("transaction_id").to_pylist() == ["a", "b"]


BAD_ROWS: list[tuple[list[object], str]] = [
    (["x2", "", "m1", "1", "EUR", at(DAY1, 1).isoformat(), "", "", "", "", "0"], "'card_id'"),
    (["x3", "c1", "m1", "abc", "EUR", at(DAY1, 1).isoformat(), "", "", "", "", "0"], "'amount'"),
    (["x4", "c1", "m1", "-5", "EUR", at(DAY1, 1).isoformat(), "", "", "", "", "0"], "'amount'"),
    (["x5", "c1", "m1", "NaN", "EUR", at(DAY1, 1).isoformat(), "", "", "", "", "0"], "'amount'"),
    (["x6", "c1", "m1", "1", "EUR", "1", "", "", "", "", "0"], "'timestamp'"),
    (["x7", "c1", "m1", "1", "EUR", "2024-03-01T10:00:00", "", "", "", "", "0"], "'timestamp'"),
    (["x8", "c1", "m1", "1", "XYZ", at(DAY1, 1).isoformat(), "", "", "", "", "0"], "'currency'"),
    (["x9", "c1", "m1", "1", "EUR", at(DAY1, 1).isoformat(), "", "", "", "54a1", "0"], "'mcc'"),
    (["x10", "c1", "m1", "1", "EUR", at(DAY1, 1).isoformat(), "", "", "phone", "", "0"], "'channel'"),
    (["x11", "c1", "m1", "1", "EUR", at(DAY1, 1).isoformat(), "10.0", "", "", "", "0"], "'lon'"),
    (["x12", "c1", "m1", "1_000", "EUR", at(DAY1, 1).isoformat(), "", "", "", "", "0"], "'amount'"),
    (["x13", "c\x001", "m1", "1", "EUR", at(DAY1, 1).isoformat(), "", "", "", "", "0"], "printable"),
    (["x14", "c1", "m1", "1", "EUR", "2099-01-01T00:00:00Z", "", "", "", "", "0"], "a day after now"),
]


def test_bad_rows_go_to_the_reject_file_with_row_and_reason(
    tmp_path: Path, landing: LandingZone, reject_dir: Path
) -> None:
    first = import_file(
        write_csv(tmp_path / "old.csv", HEADER, [good_row("old1")]), landing, reject_dir=reject_dir
    )
    rows = [good_row("g1")] + [row for row, _ in BAD_ROWS] + [good_row("g2")]
    expected = {index + 2: fragment for index, (_, fragment) in enumerate(BAD_ROWS)}
    rows.append(good_row("g1"))  # row 13
    expected[len(rows)] = "duplicate transaction_id in file, first at row 1"
    rows.append(good_row("old1"))
    expected[len(rows)] = "already landed"
    rows.append(good_row("x15", fraud="maybe"))
    expected[len(rows)] = "'fraud'"
    rows.append(good_row("g3", 12, fraud="true"))
    path = write_csv(tmp_path / "mixed.csv", HEADER, rows)

    result = import_file(path, landing, label_column="fraud", reject_dir=reject_dir, max_reject_share=1)

    assert (result.loaded, result.rejected) == (3, len(expected))
    assert result.loaded + result.rejected == len(rows)
    assert result.reject_file == reject_dir / f"{result.batch_id}.rejects.csv"
    rejects = read_rejects(result.reject_file)
    assert list(rejects[0]) == ["row", "reason", *HEADER]
    assert [int(reject["row"]) for reject in rejects] == sorted(expected)
    for reject in rejects:
        row_number = int(reject["row"])
        assert expected[row_number] in reject["reason"]
        assert [reject[name] for name in HEADER] == [str(value) for value in rows[row_number - 1]]
    assert sorted(landed(landing, result.batch_id).column("transaction_id").to_pylist()) == ["g1", "g2", "g3"]
    assert landed(landing, result.batch_id, "chargebacks").column("transaction_id").to_pylist() == ["g3"]
    assert landed(landing, first.batch_id).column("transaction_id").to_pylist() == ["old1"]


def test_labels_become_chargebacks_reported_at_their_dates(
    tmp_path: Path, landing: LandingZone, reject_dir: Path
) -> None:
    header = [*EVENT_FIELDS, "is_fraud", "claim_date"]
    base = good_row("_")[:-1]
    claims = {
        "a": ("1", "2024-03-10"),
        "b": ("1", "2024-03-05T08:30:00+02:00"),
        "c": ("0", ""),
        "d": ("TRUE", str(ms(datetime(2024, 4, 1, 12, tzinfo=UTC)))),
        "e": ("1", ""),
        "f": ("1", "2023-12-31"),
        "g": ("0", "soon"),
    }
    rows = [[transaction_id, *base[1:], *claim] for transaction_id, claim in claims.items()]
    path = write_csv(tmp_path / "labelled.csv", header, rows)

    result = import_file(
        path,
        landing,
        label_column="is_fraud",
        chargeback_date_column="claim_date",
        reject_dir=reject_dir,
        max_reject_share=1,
    )

    assert (result.loaded, result.rejected) == (4, 3)
    assert result.derived_tables == ("cards", "merchants", "chargebacks")
    chargebacks = landed(landing, result.batch_id, "chargebacks").sort_by("transaction_id").to_pylist()
    assert [(row["chargeback_id"], row["reported_at"]) for row in chargebacks] == [
        ("label-a", datetime(2024, 3, 11, tzinfo=UTC)),  # a date alone counts from the end of that day
        ("label-b", datetime(2024, 3, 5, 6, 30, tzinfo=UTC)),
        ("label-d", datetime(2024, 4, 1, 12, tzinfo=UTC)),
    ]
    assert {(row["card_id"], row["amount"], row["reason"]) for row in chargebacks} == {
        ("c1", 12.5, "imported_label")
    }
    rejects = {reject["transaction_id"]: reject["reason"] for reject in read_rejects(result.reject_file)}
    assert set(rejects) == {"e", "f", "g"}
    assert all("'claim_date'" in reason for reason in rejects.values())
    assert "empty" in rejects["e"] and "before" in rejects["f"]


def test_label_without_report_date_is_known_at_the_transaction_time(
    tmp_path: Path, landing: LandingZone, reject_dir: Path
) -> None:
    path = write_csv(tmp_path / "labels.csv", HEADER, [good_row("a", 7, "1"), good_row("b", 8, "0")])

    result = import_file(path, landing, column_map={"fraud": "label"}, reject_dir=reject_dir)

    chargebacks = landed(landing, result.batch_id, "chargebacks").to_pylist()
    assert [(row["transaction_id"], row["reported_at"]) for row in chargebacks] == [("a", at(DAY1, 7))]


NOT_TABLES = {
    "random.csv": random.Random(0).randbytes(4096),
    "text.parquet": b"transaction_id,amount\nt1,5\n",
    "empty.csv": b"",
    "header_only.csv": b"transaction_id,card_id,merchant_id,amount,currency,timestamp\n",
    "data.json": b'[{"transaction_id": "t1"}]',
    "json_inside.csv": b'{"transaction_id": "t1", "amount": [1, 2]}\n',
}


@pytest.mark.parametrize("name", [*NOT_TABLES, "a_directory.csv", "missing.csv"])
def test_a_file_that_is_not_a_table_is_refused_and_nothing_changes(
    tmp_path: Path, landing: LandingZone, reject_dir: Path, name: str
) -> None:
    import_file(write_csv(tmp_path / "earlier.csv", HEADER, [good_row("t0")]), landing, reject_dir=reject_dir)
    path = tmp_path / name
    if name in NOT_TABLES:
        path.write_bytes(NOT_TABLES[name])
    elif name == "a_directory.csv":
        path.mkdir()
    before = listing(landing.root), listing(reject_dir)

    with pytest.raises(ImportFileError, match=name):
        import_file(path, landing, reject_dir=reject_dir)

    assert (listing(landing.root), listing(reject_dir)) == before


def test_missing_required_columns_are_listed_with_the_file_columns(
    tmp_path: Path, landing: LandingZone, reject_dir: Path
) -> None:
    path = write_csv(tmp_path / "partial.csv", ["id", "amount", "when"], [["t1", "5", "x"]])

    with pytest.raises(ImportFileError) as raised:
        import_file(path, landing, column_map={"id": "transaction_id"}, reject_dir=reject_dir)

    message = str(raised.value)
    assert "partial.csv" in message
    assert "card_id, merchant_id, currency, timestamp" in message
    assert "'id', 'amount', 'when'" in message
    assert listing(landing.root) == []


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"column_map": {"nope": "card_id"}}, "'nope' not in the file"),
        ({"column_map": {"card_id": "merchant_id"}}, r"missing required column\(s\) card_id"),
        ({"column_map": {"amount": "price"}}, "'price' is not a column role"),
        ({"label_column": "amount"}, "more than one role"),
        ({"chargeback_date_column": "fraud"}, "needs a label column"),
        ({"default_currency": "ZZZ"}, "'ZZZ'"),
        ({"batch_id": "../escape"}, "path separators"),
    ],
)
def test_bad_mappings_and_arguments_are_whole_file_errors(
    tmp_path: Path, landing: LandingZone, reject_dir: Path, options: dict[str, object], fragment: str
) -> None:
    path = write_csv(tmp_path / "plain.csv", HEADER, [good_row("t1")])

    with pytest.raises(ImportFileError, match=fragment):
        import_file(path, landing, reject_dir=reject_dir, **options)

    assert listing(landing.root) == [] and listing(reject_dir) == []


def test_importing_the_same_file_twice_is_refused_and_the_first_batch_stays(
    tmp_path: Path, landing: LandingZone, reject_dir: Path
) -> None:
    path = write_csv(
        tmp_path / "once.csv", HEADER, [good_row("t1"), good_row("t2"), good_row("t3", fraud="x")]
    )
    first = import_file(path, landing, label_column="fraud", reject_dir=reject_dir, max_reject_share=1)
    before = listing(landing.root), first.reject_file.read_bytes()

    with pytest.raises(LandingError, match="already landed"):
        import_file(path, landing, reject_dir=reject_dir, label_column="fraud")

    assert (listing(landing.root), first.reject_file.read_bytes()) == before
    assert landing.manifest(first.batch_id).transactions == 2

    with pytest.raises(ImportRejected, match="nothing imported: every row rejected"):
        import_file(path, landing, label_column="fraud", reject_dir=reject_dir, batch_id="again")
    assert listing(landing.root) == before[0] and not (reject_dir / "again.rejects.csv").exists()

    nothing_new = write_csv(tmp_path / "twice.csv", HEADER, [good_row("t1"), good_row("t2")])
    again = import_file(nothing_new, landing, reject_dir=reject_dir, batch_id="again")
    assert (again.loaded, again.rejected, again.days) == (0, 2, {})  # every row landed before: nothing new
    assert listing(landing.root) == before[0]
    reasons = [reject["reason"] for reject in read_rejects(again.reject_file)]
    assert reasons == ["transaction_id already landed"] * 2


def test_a_failing_publish_lands_nothing_and_leaves_no_reject_file(
    tmp_path: Path, landing: LandingZone, reject_dir: Path
) -> None:
    path = write_csv(tmp_path / "some.csv", HEADER, [good_row("t1"), good_row("t2", fraud="?")])

    with pytest.raises(LandingError, match="batch id"):
        import_file(
            path,
            landing,
            label_column="fraud",
            reject_dir=reject_dir,
            batch_id="not a valid id",
            max_reject_share=1,
        )

    assert landing.batches() == [] and listing(reject_dir) == []


def test_given_context_files_are_landed_as_given(
    tmp_path: Path, landing: LandingZone, reject_dir: Path
) -> None:
    path = write_csv(tmp_path / "tx.csv", HEADER, [good_row("t1")])
    cards = write_csv(
        tmp_path / "cards.csv",
        ["card_id", "home_lat", "home_lon", "account_open_date", "extra"],
        [["c1", "1.5", "", "2020-05-01", "ignored"]],
    )
    merchants = tmp_path / "merchants.parquet"
    pq.write_table(pa.table({"merchant_id": ["m1"], "mcc": ["5411"], "channel": ["pos"]}), merchants)

    result = import_file(path, landing, cards_file=cards, merchants_file=merchants, reject_dir=reject_dir)

    assert result.derived_tables == ()
    assert landed(landing, result.batch_id, "cards").to_pylist() == [
        {"card_id": "c1", "home_lat": 1.5, "home_lon": None, "account_open_date": datetime(2020, 5, 1).date()}
    ]
    assert landed(landing, result.batch_id, "merchants").to_pylist() == [
        {"merchant_id": "m1", "mcc": "5411", "channel": "pos", "lat": None, "lon": None}
    ]


def test_a_bad_context_file_is_a_whole_file_error(
    tmp_path: Path, landing: LandingZone, reject_dir: Path
) -> None:
    path = write_csv(tmp_path / "tx.csv", HEADER, [good_row("t1")])
    cards = write_csv(tmp_path / "cards.csv", ["home_lat"], [["1.0"]])

    with pytest.raises(ImportFileError, match=r"cards\.csv.*card_id"):
        import_file(path, landing, cards_file=cards, reject_dir=reject_dir)

    assert listing(landing.root) == []


@pytest.mark.parametrize(
    ("pairs", "fragment"),
    [
        (["amount"], "'amount'"),
        (["=amount"], "'=amount'"),
        (["x=price"], "'x=price'"),
        (["a=amount", "a=lat"], "'a=lat'"),
    ],
)
def test_parse_column_map_names_the_bad_pair(pairs: list[str], fragment: str) -> None:
    with pytest.raises(ImportFileError, match=fragment):
        parse_column_map(pairs)


def test_parse_column_map_accepts_schema_fields_and_label_roles() -> None:
    assert parse_column_map(["Time=timestamp", "a=b=card_id", "Class= label", "Claimed=chargeback_date"]) == {
        "Time": "timestamp",
        "a=b": "card_id",
        "Class": "label",
        "Claimed": "chargeback_date",
    }


GOOD_IDS = "pqrs"  # a small pool, so good rows repeat ids
ROWS = st.one_of(st.sampled_from(GOOD_IDS).map(good_row), st.sampled_from([row for row, _ in BAD_ROWS]))


def _iso(stamp: str) -> datetime | None:
    try:
        return datetime.fromisoformat(stamp)
    except ValueError:
        return None


def _refused_for_zones(rows: list[list[object]]) -> bool:
    """Whether the file is refused as a whole: its first timestamp is ISO-8601 without a zone and no row's
    timestamp has one."""
    stamps = [str(row[HEADER.index("timestamp")]).strip() for row in rows]
    parsed = [_iso(stamp) for stamp in stamps if stamp]
    zoned = any(value is not None and value.tzinfo is not None for value in parsed)
    return bool(parsed) and parsed[0] is not None and parsed[0].tzinfo is None and not zoned


@settings(max_examples=25, deadline=None)
@given(rows=st.lists(ROWS, min_size=1, max_size=30))
@example(
    rows=[next(row for row, _ in BAD_ROWS if row[0] == "x7")]
)  # only a naive timestamp: the file's error
def test_every_row_is_either_loaded_or_rejected(rows: list[list[object]]) -> None:
    first_rows: dict[object, int] = {}
    for number, row in enumerate(rows, 1):
        if row[0] in GOOD_IDS:
            first_rows.setdefault(row[0], number)
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        landing = LandingZone(root / "landing")
        path = write_csv(root / "f.csv", HEADER, rows)
        if _refused_for_zones(rows):  # no row gives a zone: one error for the file, nothing landed
            with pytest.raises(ImportFileError, match="timestamps have no time zone"):
                import_file(path, landing, reject_dir=root / "rejects", max_reject_share=1)
            assert listing(landing.root) == []
            return
        if not first_rows:
            with pytest.raises(ImportRejected, match="every row rejected"):
                import_file(path, landing, reject_dir=root / "rejects", max_reject_share=1)
            return
        result = import_file(path, landing, reject_dir=root / "rejects", max_reject_share=1)
        assert result.loaded + result.rejected == len(rows)
        assert result.loaded == len(first_rows)
        rejected = {int(row["row"]) for row in read_rejects(result.reject_file)} if result.rejected else set()
        assert rejected == set(range(1, len(rows) + 1)) - set(first_rows.values())
        ids = landed(landing, result.batch_id).column("transaction_id").to_pylist() if result.loaded else []
        assert sorted(ids) == sorted(first_rows)


def test_naive_timestamps_are_read_in_the_zone_given_or_refused_once(
    tmp_path: Path, landing: LandingZone, reject_dir: Path
) -> None:
    rows = [good_row(f"n{hour}", hour) for hour in range(3)]
    for row in rows:
        row[HEADER.index("timestamp")] = row[HEADER.index("timestamp")].removesuffix("+00:00")  # naive
    rows.insert(0, good_row("empty"))
    rows[0][HEADER.index("timestamp")] = ""  # an empty first cell does not hide the missing zones
    path = write_csv(tmp_path / "naive.csv", HEADER, rows)
    with pytest.raises(ImportFileError, match=r"timestamps have no time zone .*--timezone ZONE") as refused:
        import_file(path, landing, reject_dir=reject_dir)
    assert "\n" not in str(refused.value)  # one line for the file, not a reject per row
    assert listing(landing.root) == [] and not reject_dir.exists()
    with pytest.raises(ImportFileError, match="'Mars/Olympus' is not an IANA zone name"):
        import_file(path, landing, reject_dir=reject_dir, timezone="Mars/Olympus")

    result = import_file(
        path, landing, reject_dir=reject_dir, timezone="America/New_York", max_reject_share=0.25
    )  # UTC-5 in March
    assert (result.loaded, result.rejected) == (3, 1)
    stamps = landed(landing, result.batch_id).sort_by("transaction_id").column("timestamp").to_pylist()
    assert stamps == [at(DAY1, hour + 5) for hour in range(3)]

    table = pa.table(
        {
            "transaction_id": ["p1"],
            "card_id": ["c1"],
            "merchant_id": ["m1"],
            "amount": [3.0],
            "currency": ["EUR"],
            "timestamp": pa.array([datetime(2024, 3, 2, 9)], pa.timestamp("us")),
        }
    )
    parquet = tmp_path / "naive.parquet"
    pq.write_table(table, parquet)
    with pytest.raises(ImportFileError, match="timestamps have no time zone"):
        import_file(parquet, landing, reject_dir=reject_dir)
    result = import_file(parquet, landing, reject_dir=reject_dir, timezone="UTC")
    assert landed(landing, result.batch_id).column("timestamp").to_pylist() == [at(DAY2, 9)]


def test_zero_amounts_are_accepted_and_negative_ones_rejected(
    tmp_path: Path, landing: LandingZone, reject_dir: Path
) -> None:
    rows = [good_row(f"v{index}") for index in range(4)]
    rows[0][HEADER.index("amount")] = "0"  # an account verification
    rows[1][HEADER.index("amount")] = "0.00"
    rows[2][HEADER.index("amount")] = "-0.01"
    path = write_csv(tmp_path / "verifications.csv", HEADER, rows)
    result = import_file(path, landing, reject_dir=reject_dir, max_reject_share=0.5)
    assert (result.loaded, result.rejected) == (3, 1)
    amounts = dict(
        zip(
            *landed(landing, result.batch_id).select(["transaction_id", "amount"]).to_pydict().values(),
            strict=True,
        )
    )
    assert amounts == {"v0": 0.0, "v1": 0.0, "v3": 12.5}
    [reject] = read_rejects(result.reject_file)
    assert reject["reason"] == "field 'amount' must be >= 0, got -0.01"


def test_a_file_rejected_beyond_the_share_lands_nothing_and_says_why(
    tmp_path: Path, landing: LandingZone, reject_dir: Path
) -> None:
    rows = [good_row(f"g{index}") for index in range(6)] + [row for row, _ in BAD_ROWS[1:3]] * 2
    path = write_csv(tmp_path / "misread.csv", HEADER, rows)
    with pytest.raises(ImportRejected) as raised:
        import_file(path, landing, reject_dir=reject_dir)  # 4 of 10 rejected: more than the default 10 %
    lines = str(raised.value).splitlines()
    assert lines[0] == f"{path}: 4 of 10 rows rejected; by reason:"
    assert lines[1:3] == [
        "           2  field 'amount' must be a number (ASCII digits, optional sign and decimal point)",
        "           2  field 'amount' must be >= 0",
    ]
    assert lines[3] == "first rejected rows:" and lines[4].startswith(
        "  row 7: field 'amount' must be a number"
    )
    assert "transaction_id='x3'" in lines[4]
    assert lines[-1].startswith(
        "nothing imported: 40.0% of the rows rejected, more than the allowed 10.0% (--max-reject-share)"
    )
    assert listing(landing.root) == [] and not reject_dir.exists()
    assert import_file(path, landing, reject_dir=reject_dir, max_reject_share=0.4).loaded == 6  # allowed


def test_a_file_whose_every_row_is_rejected_fails_with_counts_per_reason(
    tmp_path: Path, landing: LandingZone, reject_dir: Path
) -> None:
    rows = [good_row(f"z{index}") for index in range(1_000)]
    for row in rows:
        row[HEADER.index("amount")] = "1.234,50"  # a decimal comma: the file needs another reading
    path = write_csv(tmp_path / "commas.csv", HEADER, rows)
    with pytest.raises(ImportRejected) as raised:
        import_file(path, landing, reject_dir=reject_dir, max_reject_share=1)
    message = str(raised.value)
    assert "1,000 of 1,000 rows rejected; by reason:" in message
    assert "1,000  field 'amount' must be a number (ASCII digits, optional sign and decimal point)" in message
    assert message.count("  row ") == 5  # a few sample rows, not a reject file of every row
    assert message.splitlines()[-1].startswith("nothing imported: every row rejected")
    assert not reject_dir.exists() and listing(landing.root) == []
