"""Import of a user's own transaction file (CSV or parquet) into the landing zone.

Every row is validated with `schema.parse_transaction`, the function the stream uses, so a row that lands is
exactly an event the stream would accept (strict ASCII decimals, printable ids, 1990 to a day after now for
timestamps: a file is history, so the stream's window around the wall clock does not apply). Rows that fail,
that repeat a transaction id of the file or that are already landed go to a reject CSV with their source row
number and the reason: nothing is silently dropped (loaded + rejected == rows in the file). The good rows, the
context tables (given, or derived from the transactions) and the chargebacks implied by an optional
fraud-label column are published by one `LandingZone.write_batch` call, so either all of them land or none
does.

Whole-file problems are one error, not a reject per row: timestamps without a zone when no `timezone` is
given (ImportFileError), and a file whose rows are rejected (invalid or repeated, not counting rows already
landed) beyond `max_reject_share`, or entirely (ImportRejected: counts per reason and sample rows, nothing
lands and no reject file is written).
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from itertools import count, repeat
from operator import attrgetter
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from fraud_platform.config import DEFAULT_MAX_REJECT_SHARE
from fraud_platform.lib.landing import LandingError, LandingZone, conform
from fraud_platform.lib.schema import (
    CARDS,
    CHARGEBACKS,
    CURRENCIES,
    DAY_MS,
    EVENT_FIELDS,
    MERCHANTS,
    REQUIRED_FIELDS,
    TIMESTAMP,
    TIMESTAMP_RANGE,
    TRANSACTIONS,
    InvalidTransaction,
    Transaction,
    parse_timestamp_ms,
    parse_transaction,
)

# Column roles besides the schema fields: a 0/1 fraud label and the date its chargeback/claim was reported.
LABEL = "label"
CHARGEBACK_DATE = "chargeback_date"
LABEL_ROLES = (LABEL, CHARGEBACK_DATE)
COLUMN_ROLES = (*EVENT_FIELDS, *LABEL_ROLES)

CHARGEBACK_REASON = "imported_label"
CSV_SUFFIXES = (".csv", ".csv.gz", ".txt")
PARQUET_SUFFIXES = (".parquet", ".pq")

_DELIMITERS = (",", ";", "\t", "|")
_ZONED = r"[T ]\d\d:\d\d(:\d\d(\.\d+)?)?\s*(Z|[+-]\d\d(:?\d\d)?)$"  # an ISO-8601 time with its zone
_LABEL_VALUES = {"1": True, "true": True, "0": False, "false": False}
_PROGRESS_CALLS = 10
_MIN_CHUNK_ROWS = 1_000
_ROW = "_row"  # 0-based data row of a validated transaction in the source file
_REPORTED_AT = "_reported_at"  # when its fraud label became known; null for rows not labelled fraud
_MAX_LISTED_COLUMNS = 40
ALREADY_LANDED = "transaction_id already landed"
_SAMPLE_REJECTS = 5
_LISTED_REASONS = 10
_REASON_DETAIL = re.compile(r"(?:, got |, first at |: ).*", re.DOTALL)


class ImportFileError(ValueError):
    """The file cannot be imported at all (not a table, unreadable, bad mapping or arguments)."""


class ImportRejected(ImportFileError):
    """Too many of the file's rows were rejected; the message has counts per reason and sample rows, and its
    last line the verdict."""


@dataclass(frozen=True)
class ImportResult:
    """What one import did: the batch, row counts, where the rejects are and which tables were derived."""

    batch_id: str
    loaded: int
    rejected: int
    reject_file: Path | None
    days: dict[str, int]
    derived_tables: tuple[str, ...]


def parse_column_map(pairs: Sequence[str]) -> dict[str, str]:
    """Parse ["source=target", ...] into {source: target}; target is a schema field or a label role."""
    mapping: dict[str, str] = {}
    for pair in pairs:
        source, separator, target = pair.rpartition("=")
        target = target.strip()
        if not separator or not source:
            raise ImportFileError(f"column mapping {pair!r} must look like SOURCE=TARGET")
        _check_role(target, f"column mapping {pair!r}")
        if source in mapping:
            raise ImportFileError(f"column mapping {pair!r}: column {source!r} is already mapped")
        mapping[source] = target
    return mapping


def import_file(
    path: Path,
    landing: LandingZone,
    *,
    column_map: Mapping[str, str] | None = None,
    label_column: str | None = None,
    chargeback_date_column: str | None = None,
    cards_file: Path | None = None,
    merchants_file: Path | None = None,
    reject_dir: Path,
    batch_id: str | None = None,
    default_currency: str | None = None,
    timezone: str | None = None,
    max_reject_share: float = DEFAULT_MAX_REJECT_SHARE,
    progress: Callable[[int], None] | None = None,
) -> ImportResult:
    """Validate a CSV or parquet transaction file and land its good rows as one batch.

    `column_map` maps file columns to schema fields or to the roles "label" / "chargeback_date" (the same as
    `label_column` / `chargeback_date_column`); a file column already named like a schema field is used as
    is. `default_currency` fills the currency of rows that have none (no column, or an empty cell).
    `timezone` (an IANA name such as "UTC" or "Europe/Paris") is the zone of timestamps written without one;
    there is no default: such timestamps without it are one ImportFileError for the file.

    Labels: a row labelled 1 (or true) becomes a chargeback reported at its chargeback date (a date without a
    time counts from the end of that day, UTC). Without a chargeback-date column the label is taken as known
    at the transaction's own timestamp, which is optimistic for point-in-time training. Rows labelled 0
    produce nothing: the platform's label-maturity rule labels them.

    Context: `cards_file` / `merchants_file` are landed as given; otherwise cards and merchants are derived
    from the loaded transactions (locations from POS coordinates only) and named in `derived_tables`.

    The batch id defaults to one derived from the file name and content hash, so importing the same file again
    is refused (LandingError) before any row is validated. Rejected rows are written to
    `<reject_dir>/<batch_id>.rejects.csv` before the batch is published. When every row was landed before,
    nothing lands (loaded 0, `nothing_new`). Raises ImportRejected when rows other than already landed ones
    are rejected beyond `max_reject_share` (0 to 1) of the file or when no row is loaded, and ImportFileError
    for other whole-file problems.
    """
    path = Path(path)
    reject_dir = Path(reject_dir)
    table = _read_table(path, empty_as_null=False)
    if table.num_rows == 0:
        raise ImportFileError(f"{path}: no data rows, only a header")
    currency = _check_currency(default_currency)
    zone = _zone(timezone)
    if not 0 <= max_reject_share <= 1:
        raise ImportFileError(f"the maximum reject share must be between 0 and 1, got {max_reject_share:g}")
    roles = _resolve_roles(path, table.column_names, column_map or {}, label_column, chargeback_date_column)
    _require_fields(path, table.column_names, roles, currency)
    if zone is None:
        _require_zones(path, table.column(roles["timestamp"]))
    given = {
        name: _read_context(Path(file), schema, name)
        for name, file, schema in (("cards", cards_file, CARDS), ("merchants", merchants_file, MERCHANTS))
        if file is not None
    }
    digest = _sha256(path)
    batch_id = _default_batch_id(path, digest) if batch_id is None else batch_id
    reject_path = _reject_path(reject_dir, batch_id)
    if landing.has_batch(batch_id):
        raise LandingError(f"batch {batch_id!r} is already landed (was {path.name} imported before?)")

    valid, rejects = _validate(table, roles, currency, zone, progress)
    loaded, repeats = _drop_repeats(valid, landing.transaction_ids())
    rejects = sorted(rejects + repeats)
    _check_rejects(path, table, rejects, loaded.num_rows, max_reject_share)

    derived = _derive_context(loaded, given, labelled=LABEL in roles) if loaded.num_rows else {}
    parameters = {
        "file": path.name,
        "sha256": digest,
        "column_map": {source: role for role, source in roles.items()},
        "default_currency": currency,
        "cards_file": None if cards_file is None else Path(cards_file).name,
        "merchants_file": None if merchants_file is None else Path(merchants_file).name,
        "rows": table.num_rows,
        "loaded": loaded.num_rows,
        "rejected": len(rejects),
        "reject_file": str(reject_path) if rejects else None,
    }
    pending = _write_rejects(table, rejects, reject_path) if rejects else None
    manifest = None
    try:
        if loaded.num_rows:
            manifest = landing.write_batch(
                batch_id,
                loaded.select(TRANSACTIONS.names),
                {**given, **derived},
                source="import",
                parameters=parameters,
            )
        if pending is None:
            reject_path.unlink(missing_ok=True)  # a stale file of an earlier attempt that landed nothing
        else:
            os.replace(pending, reject_path)
    finally:
        if pending is not None:
            pending.unlink(missing_ok=True)
    return ImportResult(
        batch_id=batch_id,
        loaded=loaded.num_rows,
        rejected=len(rejects),
        reject_file=reject_path if rejects else None,
        days=manifest.days if manifest else {},
        derived_tables=tuple(derived),
    )


def _check_role(role: str, where: str) -> None:
    if role not in COLUMN_ROLES:
        raise ImportFileError(
            f"{where}: {role!r} is not a column role; expected one of {', '.join(COLUMN_ROLES)}"
        )


def _zone(name: str | None) -> tzinfo | None:
    if name is None:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ImportFileError(
            f"time zone {name!r} is not an IANA zone name (e.g. UTC, Europe/Paris, America/New_York)"
        ) from None


def _require_zones(path: Path, timestamps: pa.ChunkedArray) -> None:
    """One error for the file when its timestamps have no zone: the first has none and no other has one
    (rather than a reject per row). In a file that does give zones, a row without one is a row reject."""
    valid = timestamps.drop_null()
    if pa.types.is_string(valid.type):
        valid = valid.filter(pc.not_equal(pc.utf8_trim_whitespace(valid), ""))
    first = valid[0].as_py() if len(valid) else None
    try:
        naive = isinstance(first, datetime) and first.tzinfo is None
        naive = naive or (isinstance(first, str) and datetime.fromisoformat(first.strip()).tzinfo is None)
    except ValueError:  # not ISO-8601 (epoch ms, or bad): the row checks say which
        naive = False
    if naive and pa.types.is_string(valid.type):
        naive = not pc.any(pc.match_substring_regex(pc.utf8_trim_whitespace(valid), _ZONED)).as_py()
    if naive:
        raise ImportFileError(
            f"{path}: timestamps have no time zone (first: {str(first)!r:.40}); give the zone they are in with "
            "--timezone ZONE (e.g. --timezone UTC), or write them with an offset"
        )


def _reason_kind(reason: str) -> str:
    """A reject reason without the row's own value, so equal problems count together."""
    return _REASON_DETAIL.sub("", reason)


def _check_rejects(
    path: Path, table: pa.Table, rejects: list[tuple[int, str]], loaded: int, max_share: float
) -> None:
    """ImportRejected when rows other than already landed ones are rejected beyond `max_share` of the file,
    or when no row loads because of them."""
    counted = [(row, reason) for row, reason in rejects if reason != ALREADY_LANDED]
    if not counted or (loaded and len(counted) <= max_share * table.num_rows):
        return
    kinds = Counter(_reason_kind(reason) for _, reason in counted).most_common()
    lines = [f"{path}: {len(counted):,} of {table.num_rows:,} rows rejected; by reason:"]
    lines += [f"  {number:>10,}  {kind}" for kind, number in kinds[:_LISTED_REASONS]]
    if len(kinds) > _LISTED_REASONS:
        lines.append(f"  and {len(kinds) - _LISTED_REASONS} more reasons")
    lines.append("first rejected rows:")
    sample = table.take(pa.array([row for row, _ in counted[:_SAMPLE_REJECTS]], pa.int64())).to_pylist()
    for (row, reason), values in zip(counted, sample, strict=False):
        cells = ", ".join(f"{name}={value!r:.30}" for name, value in values.items())
        lines.append(f"  row {row + 1}: {reason:.120} | {cells:.200}")
    share = len(counted) / table.num_rows
    lines.append(
        "nothing imported: every row rejected; fix the mapping or the file and import again"
        if not loaded
        else f"nothing imported: {share:.1%} of the rows rejected, more than the allowed {max_share:.1%} "
        "(--max-reject-share); fix the mapping or the file, or allow more"
    )
    raise ImportRejected("\n".join(lines))


def _check_currency(currency: str | None) -> str | None:
    if currency is None:
        return None
    code = currency.strip().upper()
    if code not in CURRENCIES:
        raise ImportFileError(f"default currency {currency!r} is not a known ISO 4217 code")
    return code


def _columns_text(names: Sequence[str]) -> str:
    listed = ", ".join(repr(name) for name in names[:_MAX_LISTED_COLUMNS])
    more = len(names) - _MAX_LISTED_COLUMNS
    return f"{listed} and {more} more" if more > 0 else listed


def _resolve_roles(
    path: Path,
    names: Sequence[str],
    column_map: Mapping[str, str],
    label_column: str | None,
    chargeback_date_column: str | None,
) -> dict[str, str]:
    """Role (schema field or label role) -> file column, checked against the file's columns."""
    pairs = [*column_map.items(), (label_column, LABEL), (chargeback_date_column, CHARGEBACK_DATE)]
    roles: dict[str, str] = {}
    for source, role in pairs:
        if source is None:
            continue
        _check_role(role, f"{path}: mapping of column {source!r}")
        if roles.get(role, source) != source:
            raise ImportFileError(f"{path}: both {roles[role]!r} and {source!r} are mapped to {role!r}")
        roles[role] = source
    for field in EVENT_FIELDS:
        if field not in roles and field in names and field not in column_map:
            roles[field] = field
    absent = [source for source in roles.values() if source not in names]
    if absent:
        raise ImportFileError(
            f"{path}: mapped column(s) {_columns_text(absent)} not in the file; it has {_columns_text(names)}"
        )
    reused = [source for source, uses in Counter(roles.values()).items() if uses > 1]
    if reused:
        raise ImportFileError(f"{path}: column(s) {_columns_text(reused)} mapped to more than one role")
    if CHARGEBACK_DATE in roles and LABEL not in roles:
        raise ImportFileError(f"{path}: a chargeback date column needs a label column")
    return roles


def _require_fields(path: Path, names: Sequence[str], roles: Mapping[str, str], currency: str | None) -> None:
    missing = [
        field for field in REQUIRED_FIELDS if field not in roles and not (field == "currency" and currency)
    ]
    if missing:
        raise ImportFileError(
            f"{path}: missing required column(s) {', '.join(missing)} (map file columns to them); "
            f"the file has {_columns_text(names)}"
        )


def _read_table(path: Path, *, empty_as_null: bool) -> pa.Table:
    """Read a CSV (every column as text) or parquet file; ImportFileError if it is not a readable table."""
    name = path.name.lower()
    if not path.is_file():
        raise ImportFileError(f"{path}: {'is a directory' if path.is_dir() else 'no such file'}, not a table")
    if not name.endswith(CSV_SUFFIXES + PARQUET_SUFFIXES):
        raise ImportFileError(
            f"{path}: unknown file type; expected {', '.join(CSV_SUFFIXES + PARQUET_SUFFIXES)}"
        )
    try:
        table = _read_csv(path, empty_as_null) if name.endswith(CSV_SUFFIXES) else pq.read_table(path)
    except (pa.ArrowException, OSError, ValueError) as error:
        raise ImportFileError(f"{path}: not a readable table: {error!s:.200}") from None
    repeated = [column for column, uses in Counter(table.column_names).items() if uses > 1]
    if repeated:
        raise ImportFileError(f"{path}: repeated column name(s) {_columns_text(repeated)}")
    return table


def _read_csv(path: Path, empty_as_null: bool) -> pa.Table:
    """Every column as text (no type inference, so validation sees raw values); the delimiter is sniffed."""
    with pa.input_stream(str(path), compression="detect") as stream:
        header = stream.read(1 << 16).split(b"\n", 1)[0]
    parse = pcsv.ParseOptions(
        delimiter=max(_DELIMITERS, key=lambda delimiter: header.count(delimiter.encode()))
    )
    with pcsv.open_csv(path, parse_options=parse) as reader:
        names = reader.schema.names
    convert = pcsv.ConvertOptions(
        column_types=dict.fromkeys(names, pa.string()), strings_can_be_null=empty_as_null, null_values=[""]
    )
    return pcsv.read_csv(path, parse_options=parse, convert_options=convert)


def _read_context(path: Path, schema: pa.Schema, name: str) -> pa.Table:
    table = _read_table(path, empty_as_null=True)
    try:
        return conform(table, schema, name)
    except LandingError as error:
        raise ImportFileError(f"{path}: {error}") from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _default_batch_id(path: Path, digest: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", path.name).strip("-")[:80]
    return "-".join(part for part in ("import", name, digest[:16]) if part)


def _reject_path(reject_dir: Path, batch_id: str) -> Path:
    path = reject_dir / f"{batch_id}.rejects.csv"
    if not batch_id or path.parent != reject_dir:
        raise ImportFileError(f"batch id {batch_id!r} must be a non-empty name without path separators")
    return path


def _validate(
    table: pa.Table,
    roles: Mapping[str, str],
    currency: str | None,
    zone: tzinfo | None,
    progress: Callable[[int], None] | None,
) -> tuple[pa.Table, list[tuple[int, str]]]:
    """Parse every row, chunk by chunk: the valid rows as a table, the others as (row index, reason)."""
    latest_ms = int(datetime.now(UTC).timestamp() * 1000) + DAY_MS
    fields = [field for field in EVENT_FIELDS if field in roles]
    label_column, date_column = roles.get(LABEL), roles.get(CHARGEBACK_DATE)
    step = max(_MIN_CHUNK_ROWS, -(-table.num_rows // _PROGRESS_CALLS))
    parts: list[pa.Table] = []
    rejects: list[tuple[int, str]] = []
    for start in range(0, table.num_rows, step):
        chunk = table.slice(start, step)
        columns = {field: chunk.column(roles[field]).to_pylist() for field in fields}
        if currency:
            cells = columns.get("currency", repeat(None, chunk.num_rows))
            columns["currency"] = [currency if value is None or value == "" else value for value in cells]
        names = list(columns)
        labels = chunk.column(label_column).to_pylist() if label_column is not None else repeat(None)
        claims = chunk.column(date_column).to_pylist() if date_column is not None else repeat(None)
        transactions: list[Transaction] = []
        rows: list[int] = []
        reported: list[int | None] = []
        for index, values, label, claim in zip(
            count(start), zip(*columns.values(), strict=True), labels, claims
        ):
            try:
                transaction = parse_transaction(dict(zip(names, values, strict=True)), naive_zone=zone)
                if transaction.timestamp_ms > latest_ms:
                    raise InvalidTransaction("field 'timestamp' is more than a day after now")
                fraud = label_column is not None and _is_fraud(label, label_column)
                reported_ms = _reported_ms(transaction, fraud, claim, date_column)
            except InvalidTransaction as error:
                rejects.append((index, str(error)))
                continue
            transactions.append(transaction)
            rows.append(index)
            reported.append(reported_ms)
        parts.append(_transactions_table(transactions, rows, reported))
        if progress is not None:
            progress(chunk.num_rows)
    return pa.concat_tables(parts).combine_chunks(), rejects


def _is_fraud(value: Any, column: str) -> bool:
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and (fraud := _LABEL_VALUES.get(value.strip().lower())) is not None:
        return fraud
    raise InvalidTransaction(f"column {column!r} (label) must be 0/1/true/false, got {value!r:.20}")


def _reported_ms(transaction: Transaction, fraud: bool, claim: Any, column: str | None) -> int | None:
    """When the row's fraud label became known (epoch ms), or None for a row not labelled fraud.

    A chargeback date given for a row is checked even when the row is not labelled fraud.
    """
    if column is None:
        return transaction.timestamp_ms if fraud else None
    if claim is None or claim == "":
        if fraud:
            raise InvalidTransaction(f"column {column!r} (chargeback date) is empty for a row labelled fraud")
        return None
    millis = _claim_ms(claim, column)
    if millis < transaction.timestamp_ms:
        raise InvalidTransaction(f"column {column!r} (chargeback date) is before the transaction's timestamp")
    return millis if fraud else None


def _claim_ms(value: Any, column: str) -> int:
    """Epoch ms of a chargeback date; a date without a time counts from the end of that day (UTC)."""
    day = value if isinstance(value, date) and not isinstance(value, datetime) else None
    if isinstance(value, str):
        try:
            day = date.fromisoformat(value.strip())
        except ValueError:
            day = None
    try:
        if day is not None:
            return parse_timestamp_ms(datetime.combine(day + timedelta(days=1), time(), UTC))
        return parse_timestamp_ms(value)
    except (ValueError, OverflowError):
        raise InvalidTransaction(
            f"column {column!r} (chargeback date) must be a date, ISO-8601 time with a zone or epoch ms "
            f"within {TIMESTAMP_RANGE}, got {value!r:.40}"
        ) from None


def _timestamps(millis: Sequence[int | None]) -> pa.Array:
    return pc.multiply(pa.array(millis, pa.int64()), 1000).cast(TIMESTAMP)


def _transactions_table(
    transactions: list[Transaction], rows: list[int], reported: list[int | None]
) -> pa.Table:
    """Transactions in the schema's columns plus their source row and label report time."""
    columns = {
        field.name: (
            _timestamps([transaction.timestamp_ms for transaction in transactions])
            if field.name == "timestamp"
            else pa.array(list(map(attrgetter(field.name), transactions)), field.type)
        )
        for field in TRANSACTIONS
    }
    return pa.table({**columns, _ROW: pa.array(rows, pa.int64()), _REPORTED_AT: _timestamps(reported)})


def _drop_repeats(valid: pa.Table, landed: pa.ChunkedArray) -> tuple[pa.Table, list[tuple[int, str]]]:
    """Reject rows whose transaction id is already landed or repeats an earlier valid row of the file."""
    ids = valid.column("transaction_id").combine_chunks()
    rows = valid.column(_ROW).to_numpy()
    codes = pc.dictionary_encode(ids).indices.to_numpy(zero_copy_only=False)
    _, first_positions = np.unique(codes, return_index=True)
    first_rows = rows[first_positions[codes]]
    already = pc.is_in(ids, value_set=landed.combine_chunks()).to_numpy(zero_copy_only=False)
    repeated = (first_rows != rows) & ~already
    rejects = [(row, ALREADY_LANDED) for row in rows[already].tolist()]
    rejects += [
        (row, f"duplicate transaction_id in file, first at row {first + 1}")
        for row, first in zip(rows[repeated].tolist(), first_rows[repeated].tolist(), strict=True)
    ]
    return valid.filter(pa.array(~(already | repeated))), rejects


def _write_rejects(table: pa.Table, rejects: list[tuple[int, str]], path: Path) -> Path:
    """Write the reject CSV (row 1-based, reason, original columns) to a temporary file next to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pending = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    originals = table.take(pa.array([index for index, _ in rejects], pa.int64()))
    values = zip(*(column.to_pylist() for column in originals.columns), strict=True)
    try:
        with pending.open("w", newline="", encoding="utf-8") as file:
            writer = csv.writer(file)
            writer.writerow(["row", "reason", *table.column_names])
            writer.writerows(
                [index + 1, reason, *row] for (index, reason), row in zip(rejects, values, strict=True)
            )
    except BaseException:
        pending.unlink(missing_ok=True)
        raise
    return pending


def _derive_context(
    transactions: pa.Table, given: Mapping[str, pa.Table], *, labelled: bool
) -> dict[str, pa.Table]:
    """The context tables not given as files, derived from the loaded transactions."""
    derived = {
        name: derive(transactions)
        for name, derive in (("cards", _derive_cards), ("merchants", _derive_merchants))
        if name not in given
    }
    if labelled:
        derived["chargebacks"] = _chargebacks(transactions)
    return derived


def _median_pos_location(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    """Median lat/lon per key over POS transactions with coordinates."""
    return frame[frame["channel"] == "pos"].groupby(key)[["lat", "lon"]].median()


def _most_frequent(frame: pd.DataFrame, key: str, column: str) -> pd.Series:
    """The most frequent non-empty value of `column` per key; ties go to the smallest value."""
    counts = frame.groupby([key, column]).size().rename("uses").reset_index()
    counts = counts.sort_values([key, "uses", column], ascending=[True, False, True])
    return counts.drop_duplicates(key).set_index(key)[column]


def _to_arrow(frame: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pandas(frame.reset_index(), schema=schema, preserve_index=False)


def _derive_cards(transactions: pa.Table) -> pa.Table:
    """One row per card: account open date = day of its first transaction, home = median POS location."""
    frame = transactions.select(["card_id", "timestamp", "channel", "lat", "lon"]).to_pandas()
    cards = frame.groupby("card_id").agg(first=("timestamp", "min"))
    cards["account_open_date"] = cards.pop("first").dt.date
    return _to_arrow(cards.join(_median_pos_location(frame, "card_id").add_prefix("home_")), CARDS)


def _derive_merchants(transactions: pa.Table) -> pa.Table:
    """One row per merchant: its most frequent mcc and channel, median POS location."""
    frame = transactions.select(["merchant_id", "mcc", "channel", "lat", "lon"]).to_pandas()
    merchants = pd.DataFrame(index=pd.Index(sorted(frame["merchant_id"].unique()), name="merchant_id"))
    merchants = merchants.join(_most_frequent(frame, "merchant_id", "mcc"))
    merchants = merchants.join(_most_frequent(frame, "merchant_id", "channel"))
    return _to_arrow(merchants.join(_median_pos_location(frame, "merchant_id")), MERCHANTS)


def _chargebacks(transactions: pa.Table) -> pa.Table:
    """One chargeback per transaction labelled fraud, reported when its label became known."""
    fraud = transactions.filter(pc.is_valid(transactions.column(_REPORTED_AT)))
    ids = fraud.column("transaction_id")
    return pa.table(
        {
            "chargeback_id": pc.binary_join_element_wise("label-", ids, ""),
            "transaction_id": ids,
            "card_id": fraud.column("card_id"),
            "amount": fraud.column("amount"),
            "reported_at": fraud.column(_REPORTED_AT),
            "reason": pa.array([CHARGEBACK_REASON] * fraud.num_rows, pa.string()),
        },
        schema=CHARGEBACKS,
    )
