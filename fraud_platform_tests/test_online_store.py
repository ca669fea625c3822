"""The online store against a real server: packing, defaults, and atomic loads under a concurrent reader."""

import threading
from pathlib import Path

import numpy as np
import pytest
import redis

from fraud_platform.features.batch import CARD_BATCH_FEATURES, MERCHANT_BATCH_FEATURES
from fraud_platform.lib.keys import BATCH_GENERATION_KEY
from fraud_platform.lib.online_store import (
    OnlineStore,
    load_batch_features,
    pack_rows,
    unpack_rows,
)
from fraud_platform.lib.redis_server import LocalRedisServer, free_port

CARDS = [f"card-{index}" for index in range(20_000)]
MERCHANTS = [f"merchant-{index}" for index in range(2_000)]


def _load(client, value: float, **options) -> None:  # type: ignore[no-untyped-def]
    load_batch_features(
        client,
        CARDS,
        np.full((len(CARDS), len(CARD_BATCH_FEATURES)), value),
        MERCHANTS,
        np.full((len(MERCHANTS), len(MERCHANT_BATCH_FEATURES)), value),
        ttl_seconds=600,
        **options,
    )


def test_packing_round_trips_and_bad_values_read_as_missing() -> None:
    matrix = np.array([[1.5, np.nan, -2.0], [0.0, 1e300, 3.25]])
    packed = pack_rows(matrix)
    assert len(packed) == 2 and all(len(value) == 24 for value in packed)
    restored = unpack_rows([*packed, None, b"short"], 3)
    np.testing.assert_array_equal(restored[:2], matrix)
    assert np.isnan(restored[2:]).all()


def test_nothing_loaded_reads_as_missing_not_an_error(redis_server: LocalRedisServer) -> None:
    client = redis_server.client()
    client.delete(BATCH_GENERATION_KEY)
    cards, merchants = OnlineStore(client).batch_features(["a", "b"], ["m"])
    assert cards.shape == (2, len(CARD_BATCH_FEATURES)) and np.isnan(cards).all()
    assert merchants.shape == (1, len(MERCHANT_BATCH_FEATURES)) and np.isnan(merchants).all()


def test_shape_mismatch_is_refused(redis_server: LocalRedisServer) -> None:
    with pytest.raises(ValueError, match="card matrix shape"):
        load_batch_features(
            redis_server.client(), ["a"], np.zeros((1, 3)), [], np.zeros((0, 8)), ttl_seconds=60
        )


def test_a_reader_never_sees_half_a_load_or_two_loads_mixed(redis_server: LocalRedisServer) -> None:
    client = redis_server.client()
    _load(client, 1.0, grace_seconds=0.0)
    rng = np.random.default_rng(3)
    observed: list[set[float]] = []
    loading = threading.Event()
    loading.set()

    def read_while_loading() -> None:
        store = OnlineStore(redis_server.client())
        while loading.is_set():
            cards, merchants = store.batch_features(
                [CARDS[i] for i in rng.integers(0, len(CARDS), 64)],
                [MERCHANTS[i] for i in rng.integers(0, len(MERCHANTS), 16)],
            )
            observed.append(set(np.unique(np.concatenate([cards.ravel(), merchants.ravel()])).tolist()))

    reader = threading.Thread(target=read_while_loading)
    reader.start()
    try:
        for value in (2.0, 3.0, 4.0):
            _load(client, value, grace_seconds=0.2, chunk=500)
    finally:
        loading.clear()
        reader.join()
    assert len(observed) > 10
    assert all(len(values) == 1 for values in observed), [values for values in observed if len(values) != 1][
        :3
    ]
    seen = {value for values in observed for value in values}
    assert seen >= {2.0, 3.0} and seen <= {1.0, 2.0, 3.0, 4.0}  # never NaN: no key of a half load was read
    # Old generations are retired: only the current one's keys remain.
    assert len(list(client.scan_iter(match="batch:*:card:*:card-*", count=10_000))) == len(CARDS)


def test_servers_without_msetex_get_the_same_load(tmp_path: Path) -> None:
    older = LocalRedisServer(
        tmp_path / "older", free_port(), extra_arguments=("--rename-command", "MSETEX", "")
    )
    older.start()
    try:
        client = older.client()
        with pytest.raises(redis.ResponseError, match="unknown command"):
            client.execute_command("MSETEX", 1, "k", "v", "EX", 10)
        _load(client, 5.0, chunk=700)
        cards, merchants = OnlineStore(client).batch_features(CARDS[:3], MERCHANTS[-2:])
        assert (cards == 5.0).all() and (merchants == 5.0).all()
        assert 0 < client.ttl(next(client.scan_iter(match="batch:*:card:*"))) <= 600
    finally:
        older.stop()
