"""The landing zone: where transactions and context tables arrive before the warehouse loads them.

A landing batch is one directory, published by one atomic rename, so a reader sees a whole batch or none
of it, never half a file set::

    <landing>/batches/<batch_id>/manifest.json
    <landing>/batches/<batch_id>/transactions/day=YYYY-MM-DD.parquet
    <landing>/batches/<batch_id>/<context table>.parquet      (cards, merchants, chargebacks, ...)

Batches are written by the simulator, by the import of a user's file and (later) by the stream's
feature logging. A batch id is never reused: writing an existing batch is an error, so nothing already
landed is overwritten.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fraud_platform.lib.schema import CONTEXT_TABLES, DAY_MS, TRANSACTIONS

_BATCH_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MANIFEST = "manifest.json"


class LandingError(RuntimeError):
    """A landing batch cannot be written or read; the message says which batch and why."""


@dataclass(frozen=True)
class BatchManifest:
    """What a published batch holds: its source, rows per day and rows per context table."""

    batch_id: str
    source: str
    created_at: str
    days: dict[str, int]
    tables: dict[str, int]
    parameters: dict[str, Any]

    @property
    def transactions(self) -> int:
        """Number of transactions in the batch."""
        return sum(self.days.values())


@dataclass(frozen=True)
class BatchHorizon:
    """The batches one reader saw: every batch stamped before `created_at`, and of those stamped at that
    second, the ones in `batch_ids` (stamps have one-second resolution). A run given a horizon reads only
    those batches, whatever landed between the moment it was requested and the moment it runs."""

    created_at: str
    batch_ids: tuple[str, ...]

    @classmethod
    def of(cls, batches: list[BatchManifest]) -> BatchHorizon:
        """The horizon of these batches (at least one)."""
        newest = max(datetime.fromisoformat(manifest.created_at) for manifest in batches)
        return cls(
            newest.isoformat(),
            tuple(
                sorted(
                    manifest.batch_id
                    for manifest in batches
                    if datetime.fromisoformat(manifest.created_at) == newest
                )
            ),
        )

    def covers(self, manifest: BatchManifest) -> bool:
        """True when the reader saw this batch."""
        created, newest = datetime.fromisoformat(manifest.created_at), datetime.fromisoformat(self.created_at)
        return created < newest or (created == newest and manifest.batch_id in self.batch_ids)

    def to_json(self) -> str:
        """The horizon as a run tag's value."""
        return json.dumps({"created_at": self.created_at, "batch_ids": list(self.batch_ids)})

    @classmethod
    def from_json(cls, text: str) -> BatchHorizon:
        """A horizon from `to_json`'s text; LandingError when it is not one."""
        try:
            state = json.loads(text)
            return cls(str(state["created_at"]), tuple(str(batch) for batch in state["batch_ids"]))
        except (ValueError, TypeError, KeyError) as error:
            raise LandingError(f"not a batch horizon: {text!r} ({error})") from None


def conform(table: pa.Table, schema: pa.Schema, name: str) -> pa.Table:
    """Select and cast the columns of `schema` from `table`; raise LandingError naming a bad column."""
    missing = [field.name for field in schema if field.name not in table.column_names]
    required_missing = [name_ for name_ in missing if not schema.field(name_).nullable]
    if required_missing:
        raise LandingError(f"{name}: missing required column(s) {', '.join(required_missing)}")
    columns = []
    for field in schema:
        if field.name in missing:
            columns.append(pa.nulls(table.num_rows, field.type))
            continue
        column = table.column(field.name)
        try:
            columns.append(column.cast(field.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
            raise LandingError(
                f"{name}: column {field.name!r} cannot be read as {field.type}: {error}"
            ) from None
        if not field.nullable and columns[-1].null_count:
            raise LandingError(f"{name}: column {field.name!r} has {columns[-1].null_count} empty value(s)")
    return pa.Table.from_arrays(columns, schema=schema)


class LandingZone:
    """Read and write access to the landing zone under one root directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.batches_dir = self.root / "batches"
        self.staging_dir = self.root / ".staging"
        self.spool_dir = self.root / ".spool"  # the stream's feature log parts named by recovery snapshots

    def write_batch(
        self,
        batch_id: str,
        transactions: pa.Table,
        context: dict[str, pa.Table] | None = None,
        *,
        source: str,
        parameters: dict[str, Any] | None = None,
    ) -> BatchManifest:
        """Publish transactions (split into one parquet file per UTC day) and context tables as one batch."""
        if not _BATCH_ID.match(batch_id):
            raise LandingError(f"batch id {batch_id!r} must be 1-128 letters, digits, '.', '_' or '-'")
        final = self.batches_dir / batch_id
        if self.has_batch(batch_id):
            raise LandingError(
                f"batch {batch_id!r} is already in the landing zone at {final}; nothing written"
            )
        context = context or {}
        unknown = sorted(set(context) - set(CONTEXT_TABLES))
        if unknown:
            raise LandingError(
                f"unknown context table(s) {', '.join(unknown)}; known: {sorted(CONTEXT_TABLES)}"
            )
        transactions = conform(transactions, TRANSACTIONS, "transactions")
        conformed = {name: conform(table, CONTEXT_TABLES[name], name) for name, table in context.items()}

        self.staging_dir.mkdir(parents=True, exist_ok=True)
        staging = self.staging_dir / f"{batch_id}.{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            (staging / "transactions").mkdir(parents=True)
            days = _write_days(transactions, staging / "transactions")
            for name, table in conformed.items():
                pq.write_table(table, staging / f"{name}.parquet")
            manifest = BatchManifest(
                batch_id=batch_id,
                source=source,
                created_at=datetime.now(UTC).isoformat(timespec="seconds"),
                days=days,
                tables={name: table.num_rows for name, table in conformed.items()},
                parameters=parameters or {},
            )
            (staging / MANIFEST).write_text(json.dumps(manifest.__dict__, indent=2, sort_keys=True))
            self.batches_dir.mkdir(parents=True, exist_ok=True)
            os.rename(staging, final)
        except OSError as error:
            raise LandingError(
                f"batch {batch_id!r} could not be written: {error}; nothing published"
            ) from error
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return manifest

    def has_batch(self, batch_id: str) -> bool:
        """True when a batch with this id has been published."""
        return (self.batches_dir / batch_id).is_dir()

    def batches(self) -> list[BatchManifest]:
        """Every published batch, oldest first."""
        if not self.batches_dir.is_dir():
            return []
        manifests = [self.manifest(path.name) for path in self.batches_dir.iterdir() if path.is_dir()]
        return sorted(manifests, key=lambda manifest: (manifest.created_at, manifest.batch_id))

    def manifest(self, batch_id: str) -> BatchManifest:
        """The manifest of one published batch."""
        path = self.batches_dir / batch_id / MANIFEST
        try:
            return BatchManifest(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as error:
            raise LandingError(f"batch {batch_id!r}: unreadable manifest {path}: {error}") from None

    def days(self) -> list[str]:
        """Every day (YYYY-MM-DD) that has transactions in some batch, sorted."""
        return sorted({day for manifest in self.batches() for day in manifest.days})

    def transaction_files(self, day: str | None = None, *, exclude_source: str | None = None) -> list[Path]:
        """Parquet files holding the transactions of one day (or of all days), in batch order; batches from
        `exclude_source` (e.g. the stream's own feature log) left out."""
        pattern = f"day={day}.parquet" if day else "day=*.parquet"
        return [
            path
            for manifest in self.batches()
            if manifest.source != exclude_source
            for path in sorted((self.batches_dir / manifest.batch_id / "transactions").glob(pattern))
        ]

    def context_files(self, table: str, horizon: BatchHorizon | None = None) -> list[Path]:
        """Parquet files of one context table across batches (those `horizon` covers; None: all), oldest
        batch first."""
        if table not in CONTEXT_TABLES:
            raise LandingError(f"unknown context table {table!r}; known: {sorted(CONTEXT_TABLES)}")
        files = [
            self.batches_dir / manifest.batch_id / f"{table}.parquet"
            for manifest in self.batches()
            if horizon is None or horizon.covers(manifest)
        ]
        return [path for path in files if path.is_file()]

    def transaction_ids(self) -> pa.ChunkedArray:
        """All transaction ids already landed (used to refuse duplicates on import)."""
        files = self.transaction_files()
        if not files:
            return pa.chunked_array([], pa.string())
        return pa.chunked_array(
            [pq.read_table(path, columns=["transaction_id"]).column(0).combine_chunks() for path in files],
            pa.string(),
        )


def _write_days(transactions: pa.Table, directory: Path) -> dict[str, int]:
    """Write one parquet file per UTC day, rows sorted by time; return rows per day."""
    if transactions.num_rows == 0:
        return {}
    transactions = transactions.sort_by([("timestamp", "ascending"), ("transaction_id", "ascending")])
    millis = pc.cast(transactions.column("timestamp"), pa.int64()).to_numpy() // 1000
    day_numbers = millis // DAY_MS
    boundaries = np.flatnonzero(np.diff(day_numbers)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(day_numbers)]])
    rows: dict[str, int] = {}
    for start, end in zip(starts, ends, strict=True):
        day = date.fromordinal(date(1970, 1, 1).toordinal() + int(day_numbers[start])).isoformat()
        pq.write_table(transactions.slice(start, end - start), directory / f"day={day}.parquet")
        rows[day] = int(end - start)
    return rows
