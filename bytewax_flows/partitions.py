"""Sinks of one partition, for outputs written in one place: the decisions and the feature log.

Every item goes to the worker that holds the partition, whatever its key (across processes, pickled). The
partition's `snapshot` runs at the end of every epoch, after the epoch's last `write_batch` (with or without
recovery; Bytewax 0.21): the decisions sinks confirm their writes in flight there, so a recovered flow never
resumes after a decision Redis did not take, and the feature log hands over what it has not landed.
"""

from __future__ import annotations

from typing import ClassVar, TypeVar

from bytewax.outputs import FixedPartitionedSink

X = TypeVar("X")
S = TypeVar("S")


class OnePartitionSink(FixedPartitionedSink[X, S]):
    """A sink whose only partition is `PART`; subclasses build it (`build_part`)."""

    PART: ClassVar[str]

    def list_parts(self) -> list[str]:
        """The one partition (any worker may hold it)."""
        return [self.PART]

    def part_fn(self, item_key: str) -> int:
        """Every item goes to the one partition."""
        return 0
