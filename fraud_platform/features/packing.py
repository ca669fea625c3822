"""Feature vectors packed into bytes for the online store: one Redis value per entity.

A packed vector is the float64 little-endian bytes of the values in declared order, exactly
`numpy.asarray(values, "<f8").tobytes()`: 8 bytes per feature, NaN for a missing value, no header. The
length identifies the layout's size; the order is the feature definition's (`FEATURE_NAMES`).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

from fraud_platform.features.realtime import FEATURE_NAMES

_FLOAT64_LE = np.dtype("<f8")


class VectorLayout:
    """Packs and unpacks vectors of a fixed, ordered list of feature names."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = tuple(names)
        self._struct = struct.Struct(f"<{len(self.names)}d")

    @property
    def size(self) -> int:
        """Bytes of one packed vector."""
        return self._struct.size

    def pack(self, values: Sequence[float]) -> bytes:
        """Bytes of one vector (raises struct.error when the length is not len(names))."""
        return self._struct.pack(*values)

    def unpack(self, data: bytes) -> np.ndarray:
        """One vector as a float64 array; ValueError when the bytes are not this layout's size."""
        if len(data) != self.size:
            raise ValueError(
                f"packed vector has {len(data)} bytes, expected {self.size} ({len(self.names)} features)"
            )
        return np.frombuffer(data, _FLOAT64_LE)


REALTIME_LAYOUT = VectorLayout(FEATURE_NAMES)
