"""A deterministic simulator of card transactions, fraud and the labels a card issuer learns about it.

The model, stage by stage (one `numpy.random.Generator` seeded from the config drives everything, so the
same config always yields the same tables):

* **Cities.** ~30 real cities with population, UTC offset and currency. Cardholders live in the US cities
  (the issuer is a US bank); every city, including the foreign ones, is a travel destination.
* **Merchants.** A merchant category code (grocery 5411, restaurants 5812, fuel 5541, jewelry 5944, ATM
  6011, ...) with a typical amount, a visit intensity and an e-commerce share. Physical merchants (`pos`,
  or `atm` for 6011) sit in a city with small jitter; e-commerce merchants have no location. Popularity is
  lognormal, so a few merchants take much of the traffic.
* **Cards.** A home city, an account opening date in the ten years before the start, and a spending
  profile: daily transaction rate and amount scale (lognormal), e-commerce share, a day-person or
  night-owl hour profile in local time, six favourite merchants at home and perhaps one trip elsewhere.
* **Genuine traffic** (vectorised over card chunks): Poisson counts per card and day with weekday
  seasonality; the merchant is a favourite, another home (or trip) city merchant by popularity, or an
  e-commerce merchant; the amount is lognormal around the category's typical amount times the card's
  scale; the local time of day is converted to UTC with the city's offset. Foreign merchants charge in
  their own currency; card-present transactions carry the merchant's location, e-commerce ones none.
* **Fraud** is injected as extra transactions, one episode per victim card (cards of different scenarios
  are disjoint): `card_testing` (a burst of tiny e-commerce charges at distinct merchants within minutes,
  often followed by one large purchase), `impossible_travel` (a cloned card used in a city > 1,200 km away
  5-60 minutes after a genuine card-present purchase), `account_takeover` (large e-commerce purchases at
  merchants new to the card within hours), `compromised_merchant` (merchants breached during a window; some
  cards that paid there are defrauded 3-30 days later elsewhere at elevated amounts) and `high_amount` (one
  very large electronics or jewelry purchase).
* **Labels as known at the end of the period.** Cardholders report a fraud episode after a lognormal
  delay (median three weeks, 1-150 days); a share of frauds is never reported and a few genuine
  transactions are claimed anyway. Only chargebacks reported before the end exist. Each opens an
  investigation, closed (with an outcome) days later or still open at the end; the fraud team also opens
  proactive investigations of card-testing bursts nobody reported. `fraud_truth` keeps the full truth.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fraud_platform.lib import schema

SCENARIOS: tuple[str, ...] = (
    "card_testing",
    "impossible_travel",
    "account_takeover",
    "compromised_merchant",
    "high_amount",
)
GENUINE = "genuine"

_CARD_TESTING, _IMPOSSIBLE_TRAVEL, _ACCOUNT_TAKEOVER, _COMPROMISED_MERCHANT, _HIGH_AMOUNT = range(1, 6)

_US = 1_000_000
_MINUTE = 60 * _US
_HOUR = 60 * _MINUTE
_DAY = 24 * _HOUR
# Every fraud episode that starts at a random time ends within this horizon, so it stays inside the period.
_EPISODE_HORIZON = 8 * _HOUR


class _City(NamedTuple):
    name: str
    lat: float
    lon: float
    population_m: float
    utc_offset: int
    currency: str


_CITIES: tuple[_City, ...] = (
    _City("New York", 40.71, -74.01, 19.5, -5, "USD"),
    _City("Los Angeles", 34.05, -118.24, 13.0, -8, "USD"),
    _City("Chicago", 41.88, -87.63, 9.4, -6, "USD"),
    _City("Dallas", 32.78, -96.80, 7.6, -6, "USD"),
    _City("Houston", 29.76, -95.37, 7.1, -6, "USD"),
    _City("Washington", 38.91, -77.04, 6.3, -5, "USD"),
    _City("Philadelphia", 39.95, -75.17, 6.2, -5, "USD"),
    _City("Miami", 25.76, -80.19, 6.1, -5, "USD"),
    _City("Atlanta", 33.75, -84.39, 6.1, -5, "USD"),
    _City("Boston", 42.36, -71.06, 4.9, -5, "USD"),
    _City("Phoenix", 33.45, -112.07, 4.9, -7, "USD"),
    _City("San Francisco", 37.77, -122.42, 4.7, -8, "USD"),
    _City("Seattle", 47.61, -122.33, 4.0, -8, "USD"),
    _City("Minneapolis", 44.98, -93.27, 3.7, -6, "USD"),
    _City("San Diego", 32.72, -117.16, 3.3, -8, "USD"),
    _City("Denver", 39.74, -104.99, 3.0, -7, "USD"),
    _City("Portland", 45.52, -122.68, 2.5, -8, "USD"),
    _City("Las Vegas", 36.17, -115.14, 2.3, -8, "USD"),
    _City("Nashville", 36.16, -86.78, 2.0, -6, "USD"),
    _City("New Orleans", 29.95, -90.07, 1.3, -6, "USD"),
    _City("Honolulu", 21.31, -157.86, 1.0, -10, "USD"),
    _City("Toronto", 43.65, -79.38, 6.2, -5, "CAD"),
    _City("Mexico City", 19.43, -99.13, 21.8, -6, "MXN"),
    _City("London", 51.51, -0.13, 9.5, 0, "GBP"),
    _City("Paris", 48.86, 2.35, 11.0, 1, "EUR"),
    _City("Madrid", 40.42, -3.70, 6.7, 1, "EUR"),
    _City("Tokyo", 35.68, 139.69, 37.4, 9, "JPY"),
    _City("Singapore", 1.35, 103.82, 5.9, 8, "SGD"),
    _City("Sydney", -33.87, 151.21, 5.3, 10, "AUD"),
    _City("Sao Paulo", -23.55, -46.63, 22.0, -3, "BRL"),
    _City("Dubai", 25.20, 55.27, 3.5, 4, "AED"),
)
# Foreign cities draw fewer merchants and trips than their population suggests: the cardholders are American.
_FOREIGN_WEIGHT = 0.12

# Units of each currency per US dollar, and its minor units (decimal places).
_FX: dict[str, tuple[float, int]] = {
    "USD": (1.0, 2),
    "CAD": (1.36, 2),
    "MXN": (17.0, 2),
    "GBP": (0.79, 2),
    "EUR": (0.92, 2),
    "JPY": (150.0, 0),
    "SGD": (1.34, 2),
    "AUD": (1.52, 2),
    "BRL": (5.0, 2),
    "AED": (3.67, 2),
}


class _Category(NamedTuple):
    mcc: str
    merchant_weight: float  # share of merchants
    intensity: float  # visits per merchant, relative
    median_usd: float
    sigma: float  # lognormal spread of amounts
    ecom_share: float  # share of the category's merchants that sell online only


_CATEGORIES: tuple[_Category, ...] = (
    _Category("5411", 0.16, 2.0, 45.0, 0.7, 0.05),  # grocery
    _Category("5812", 0.16, 1.0, 32.0, 0.6, 0.0),  # restaurants
    _Category("5814", 0.10, 1.8, 12.0, 0.5, 0.0),  # fast food
    _Category("5541", 0.07, 1.5, 42.0, 0.4, 0.0),  # fuel
    _Category("5912", 0.06, 1.0, 24.0, 0.8, 0.05),  # pharmacies
    _Category("5311", 0.05, 0.8, 65.0, 0.8, 0.3),  # department stores
    _Category("5651", 0.07, 0.6, 55.0, 0.7, 0.4),  # clothing
    _Category("5732", 0.04, 0.4, 150.0, 1.0, 0.4),  # electronics
    _Category("5944", 0.02, 0.2, 220.0, 0.9, 0.2),  # jewelry
    _Category("4121", 0.04, 1.0, 18.0, 0.5, 0.0),  # taxis
    _Category("4511", 0.02, 0.2, 320.0, 0.6, 0.9),  # airlines
    _Category("7011", 0.03, 0.3, 180.0, 0.6, 0.5),  # hotels
    _Category("5815", 0.05, 1.0, 11.0, 0.6, 1.0),  # digital media
    _Category("5816", 0.03, 0.8, 16.0, 0.8, 1.0),  # digital games
    _Category("5942", 0.03, 0.5, 22.0, 0.6, 0.5),  # books
    _Category("5999", 0.05, 0.8, 35.0, 0.9, 0.3),  # miscellaneous retail
    _Category("6011", 0.05, 0.6, 100.0, 0.6, 0.0),  # ATM cash
)
_ATM_MCC = "6011"
_HIGH_AMOUNT_MCCS = frozenset({"5732", "5944"})
_LARGE_PURCHASE_MCCS = frozenset({"5732", "5944", "5311", "5651", "4511", "7011"})
_DIGITAL_MCCS = frozenset({"5815", "5816"})

_CHANNELS = ("pos", "ecom", "atm")
_POS, _ECOM, _ATM = range(3)
_ECOM_MERCHANT_SHARE = 0.3
# Enough for two physical merchants in every city and every category online and in person.
_MIN_MERCHANTS = 100
_MIN_MERCHANTS_PER_CITY = 2

# Monday .. Sunday activity relative to the mean.
_WEEKDAY_FACTOR = np.array([0.92, 0.95, 0.97, 1.0, 1.12, 1.18, 0.86])
_FAVOURITES = 6
_FAVOURITE_SHARE = 0.55
_CHUNK_CARDS = 2_500
_FAR_KM = 1_200.0

_REASON_CARD_PRESENT = "fraud_card_present"
_REASON_CARD_NOT_PRESENT = "fraud_card_not_present"
_OUTCOMES = ("confirmed_fraud", "inconclusive", "not_fraud")
_FRAUD_OUTCOME_P = (0.9, 0.07, 0.03)
_FALSE_CLAIM_OUTCOME_P = (0.1, 0.2, 0.7)
_PROACTIVE_OUTCOME_P = (0.85, 0.15, 0.0)
# Share of unreported card-testing bursts the fraud team investigates on its own.
_PROACTIVE_SHARE = 0.7


@dataclass(frozen=True)
class SimulationConfig:
    """What to simulate; invalid values raise ValueError naming the field.

    `fraud_card_share` of the cards suffer one fraud episode during the period; `scenario_weights` split
    them between `SCENARIOS` (in that order). `unreported_fraud_rate` of fraud transactions never get a
    chargeback; `false_claim_rate` of genuine ones get one anyway. Reports come a lognormal delay after the
    transaction with median `median_report_delay_days`. `merchants` defaults to max(200, cards // 10).
    """

    cards: int = 5_000
    days: int = 60
    start: date = date(2026, 1, 1)
    seed: int = 42
    merchants: int | None = None
    fraud_card_share: float = 0.1
    unreported_fraud_rate: float = 0.1
    false_claim_rate: float = 0.001
    median_report_delay_days: float = 21.0
    scenario_weights: tuple[float, ...] = (0.15, 0.2, 0.2, 0.25, 0.2)

    def __post_init__(self) -> None:
        _require(
            _is_int(self.cards) and self.cards >= 1, "cards", f"must be an integer >= 1, got {self.cards!r}"
        )
        _require(
            _is_int(self.days) and 1 <= self.days <= 3_660,
            "days",
            f"must be an integer from 1 to 3660, got {self.days!r}",
        )
        _require(
            isinstance(self.start, date) and not isinstance(self.start, datetime),
            "start",
            f"must be a date, got {self.start!r}",
        )
        _require(_is_int(self.seed) and self.seed >= 0, "seed", f"must be an integer >= 0, got {self.seed!r}")
        _require(
            self.merchants is None or (_is_int(self.merchants) and self.merchants >= _MIN_MERCHANTS),
            "merchants",
            f"must be an integer >= {_MIN_MERCHANTS} or None, got {self.merchants!r}",
        )
        for name in ("fraud_card_share", "unreported_fraud_rate", "false_claim_rate"):
            value = getattr(self, name)
            _require(_is_real(value) and 0.0 <= value <= 1.0, name, f"must be within [0, 1], got {value!r}")
        delay = self.median_report_delay_days
        _require(
            _is_real(delay) and 1.0 <= delay <= 150.0,
            "median_report_delay_days",
            f"must be within [1, 150], got {delay!r}",
        )
        weights = self.scenario_weights
        _require(
            isinstance(weights, tuple)
            and len(weights) == len(SCENARIOS)
            and all(_is_real(weight) and weight >= 0 for weight in weights)
            and sum(weights) > 0,
            "scenario_weights",
            f"must be {len(SCENARIOS)} non-negative numbers (one per scenario) with a positive sum, got {weights!r}",
        )

    @property
    def merchant_count(self) -> int:
        """Number of merchants: `merchants`, or max(200, cards // 10) when not given."""
        return self.merchants if self.merchants is not None else max(200, self.cards // 10)

    @property
    def end(self) -> datetime:
        """The end of the simulated period (exclusive), midnight UTC after the last day."""
        return _midnight(self.start) + timedelta(days=self.days)


@dataclass(frozen=True)
class SimulatedData:
    """The simulated world as known at the end of the period, as tables in the platform's schemas."""

    transactions: pa.Table
    cards: pa.Table
    merchants: pa.Table
    chargebacks: pa.Table
    investigations: pa.Table
    fraud_truth: pa.Table

    def context(self) -> dict[str, pa.Table]:
        """The context tables keyed as the landing zone expects them."""
        return {
            "cards": self.cards,
            "merchants": self.merchants,
            "chargebacks": self.chargebacks,
            "investigations": self.investigations,
            "fraud_truth": self.fraud_truth,
        }


def simulate(config: SimulationConfig, progress: Callable[[int], None] | None = None) -> SimulatedData:
    """Simulate cards, merchants, transactions (genuine and fraud), chargebacks and investigations.

    `progress(n)` is called a few times with the number of transactions generated since the last call.
    """
    report = progress or (lambda _count: None)
    rng = np.random.default_rng(config.seed)
    world = _World.create(config, rng)
    genuine = _genuine_traffic(world, rng, report)
    fraud = _inject_fraud(world, genuine, rng)
    report(len(fraud.card))
    rows = _Rows.concat([genuine, fraud])
    rows = rows.take(np.argsort(rows.time, kind="stable"))
    return _assemble(world, rows, rng)


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return (
        isinstance(value, int | float | np.integer | np.floating)
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def _require(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise ValueError(f"SimulationConfig.{field} {message}")


def _midnight(day: date) -> datetime:
    return datetime.combine(day, datetime.min.time(), UTC)


# ---------------------------------------------------------------------------------------------- the world


class _Reference:
    """The city, currency and category tables as numpy arrays."""

    def __init__(self) -> None:
        self.city_lat = np.array([city.lat for city in _CITIES])
        self.city_lon = np.array([city.lon for city in _CITIES])
        self.city_offset = np.array([city.utc_offset for city in _CITIES], dtype=np.int64)
        population = np.array([city.population_m for city in _CITIES])
        domestic = np.array([city.currency == "USD" for city in _CITIES])
        self.home_weight = np.where(domestic, population, 0.0)
        self.visit_weight = np.where(domestic, population, population * _FOREIGN_WEIGHT)
        self.currencies = list(_FX)
        self.city_currency = np.array([self.currencies.index(city.currency) for city in _CITIES])
        self.fx = np.array([_FX[code][0] for code in self.currencies])
        self.minor_units = np.array([_FX[code][1] for code in self.currencies])
        self.mccs = [category.mcc for category in _CATEGORIES]
        self.mcc_weight = np.array([category.merchant_weight for category in _CATEGORIES])
        self.mcc_intensity = np.array([category.intensity for category in _CATEGORIES])
        self.mcc_median = np.array([category.median_usd for category in _CATEGORIES])
        self.mcc_sigma = np.array([category.sigma for category in _CATEGORIES])
        self.mcc_ecom_share = np.array([category.ecom_share for category in _CATEGORIES])
        self.city_km = _haversine_km(
            self.city_lat[:, None], self.city_lon[:, None], self.city_lat[None, :], self.city_lon[None, :]
        )

    def mcc_mask(self, mccs: frozenset[str]) -> np.ndarray:
        """Boolean mask over categories whose code is in `mccs`."""
        return np.array([mcc in mccs for mcc in self.mccs])


def _haversine_km(lat1: np.ndarray, lon1: np.ndarray, lat2: np.ndarray, lon2: np.ndarray) -> np.ndarray:
    lat1, lon1, lat2, lon2 = (np.radians(value) for value in (lat1, lon1, lat2, lon2))
    a = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    return 2 * 6371.0 * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


@dataclass
class _Merchants:
    """Merchant attributes by merchant index, and popularity-weighted sampling within pools.

    Pool `c` holds the physical merchants of city `c`; pool `ecom_pool` (one past the last city) holds the
    e-commerce merchants.
    """

    category: np.ndarray
    channel: np.ndarray
    city: np.ndarray  # -1 for e-commerce merchants
    lat: np.ndarray  # NaN for e-commerce merchants
    lon: np.ndarray
    popularity: np.ndarray
    ecom_pool: int
    _order: np.ndarray
    _cumulative: np.ndarray
    _pool_low: np.ndarray
    _pool_total: np.ndarray
    _pool_last: np.ndarray

    @classmethod
    def create(cls, count: int, ref: _Reference, rng: np.random.Generator) -> _Merchants:
        """Draw `count` merchants: e-commerce ones by category, physical ones by category and city."""
        n_ecom = round(count * _ECOM_MERCHANT_SHARE)
        n_physical = count - n_ecom
        category = np.concatenate(
            [
                _covering_draw(ref.mcc_weight * ref.mcc_ecom_share, n_ecom, 1, rng),
                _covering_draw(ref.mcc_weight * (1 - ref.mcc_ecom_share), n_physical, 1, rng),
            ]
        )
        city_of_physical = _covering_draw(ref.visit_weight, n_physical, _MIN_MERCHANTS_PER_CITY, rng)
        city = np.concatenate([np.full(n_ecom, -1), city_of_physical])
        shuffle = rng.permutation(count)
        category, city = category[shuffle], city[shuffle]
        physical = city >= 0
        atm = np.array(ref.mccs)[category] == _ATM_MCC
        channel = np.where(physical, np.where(atm, _ATM, _POS), _ECOM)
        jitter = rng.normal(0.0, 0.05, (2, count))
        lat = np.where(physical, ref.city_lat[city] + jitter[0], np.nan)
        lon = np.where(physical, ref.city_lon[city] + jitter[1], np.nan)
        popularity = rng.lognormal(0.0, 1.0, count) * ref.mcc_intensity[category]
        cities = len(_CITIES)
        pool = np.where(physical, city, cities)
        # Merchants sorted by pool; a pool is a contiguous run of the cumulative popularity.
        order = np.argsort(pool, kind="stable")
        cumulative = np.cumsum(popularity[order])
        bounds = np.searchsorted(pool[order], np.arange(cities + 2))
        running = np.concatenate([[0.0], cumulative])
        return cls(
            category=category,
            channel=channel,
            city=city,
            lat=lat,
            lon=lon,
            popularity=popularity,
            ecom_pool=cities,
            _order=order,
            _cumulative=cumulative,
            _pool_low=running[bounds[:-1]],
            _pool_total=running[bounds[1:]] - running[bounds[:-1]],
            _pool_last=bounds[1:] - 1,
        )

    def pick(self, pool: np.ndarray, uniform: np.ndarray) -> np.ndarray:
        """One merchant per element of `pool`, chosen by popularity within the pool using `uniform` in [0, 1)."""
        target = self._pool_low[pool] + uniform * self._pool_total[pool]
        position = np.minimum(np.searchsorted(self._cumulative, target, side="right"), self._pool_last[pool])
        return self._order[position]

    def choose(
        self, rng: np.random.Generator, candidates: np.ndarray, size: int, *, replace: bool = True
    ) -> np.ndarray:
        """`size` merchants among `candidates`, by popularity."""
        weights = self.popularity[candidates]
        return rng.choice(candidates, size, replace=replace, p=weights / weights.sum())


def _covering_draw(weights: np.ndarray, size: int, minimum: int, rng: np.random.Generator) -> np.ndarray:
    """`size` indices drawn by `weights`, in random order, each index of positive weight at least `minimum` times."""
    guaranteed = np.repeat(np.flatnonzero(weights > 0), minimum)
    drawn = rng.choice(len(weights), size - len(guaranteed), p=weights / weights.sum())
    return rng.permutation(np.concatenate([guaranteed, drawn]))


@dataclass
class _Cards:
    """Card attributes and spending profiles by card index."""

    home_city: np.ndarray
    home_lat: np.ndarray
    home_lon: np.ndarray
    open_days_before: np.ndarray
    rate: np.ndarray  # genuine transactions per day
    amount_scale: np.ndarray
    ecom_share: np.ndarray
    peak_hour: np.ndarray  # local time
    hour_spread: np.ndarray
    favourites: np.ndarray  # (cards, _FAVOURITES) merchant indices in the home city
    trip_city: np.ndarray
    trip_start: np.ndarray  # day index; -1 without a trip
    trip_end: np.ndarray  # exclusive

    @classmethod
    def create(
        cls, count: int, days: int, ref: _Reference, merchants: _Merchants, rng: np.random.Generator
    ) -> _Cards:
        """Draw `count` cardholders living in US cities and their habits."""
        home = rng.choice(len(_CITIES), count, p=ref.home_weight / ref.home_weight.sum())
        night_owl = rng.random(count) < 0.15
        favourites = merchants.pick(np.repeat(home, _FAVOURITES), rng.random(count * _FAVOURITES))
        has_trip = rng.random(count) < 1.0 - math.exp(-days / 120)
        trip_start = np.where(has_trip, rng.integers(0, max(days - 1, 1), count), -1)
        return cls(
            home_city=home,
            home_lat=ref.city_lat[home] + rng.normal(0.0, 0.08, count),
            home_lon=ref.city_lon[home] + rng.normal(0.0, 0.08, count),
            open_days_before=rng.integers(30, 3_650, count),
            rate=np.clip(rng.lognormal(math.log(1.45), 0.55, count), 0.3, 6.0),
            amount_scale=rng.lognormal(0.0, 0.4, count),
            ecom_share=rng.beta(2.0, 5.0, count),
            peak_hour=np.where(night_owl, rng.normal(21.5, 1.0, count), rng.normal(13.5, 1.5, count)),
            hour_spread=rng.uniform(2.5, 4.0, count),
            favourites=favourites.reshape(count, _FAVOURITES),
            trip_city=_trip_destinations(home, ref, rng),
            trip_start=trip_start,
            trip_end=np.where(has_trip, trip_start + rng.integers(2, 8, count), -1),
        )


def _trip_destinations(home: np.ndarray, ref: _Reference, rng: np.random.Generator) -> np.ndarray:
    """A destination city other than home for every card, by visit weight."""
    p = ref.visit_weight / ref.visit_weight.sum()
    city = rng.choice(len(_CITIES), len(home), p=p)
    clash = city == home
    while clash.any():
        city[clash] = rng.choice(len(_CITIES), int(clash.sum()), p=p)
        clash = city == home
    return city


@dataclass
class _World:
    """Everything drawn before any transaction: reference tables, merchants and cards."""

    config: SimulationConfig
    ref: _Reference
    merchants: _Merchants
    cards: _Cards
    end: int  # microseconds after the start

    @classmethod
    def create(cls, config: SimulationConfig, rng: np.random.Generator) -> _World:
        """Draw the merchants and cards of `config`."""
        ref = _Reference()
        merchants = _Merchants.create(config.merchant_count, ref, rng)
        cards = _Cards.create(config.cards, config.days, ref, merchants, rng)
        return cls(config, ref, merchants, cards, config.days * _DAY)

    def category_merchants(self, mccs: frozenset[str], pool: int) -> np.ndarray:
        """Merchant indices of the given categories in one pool."""
        in_pool = self.merchants.city == (-1 if pool == self.merchants.ecom_pool else pool)
        return np.flatnonzero(self.ref.mcc_mask(mccs)[self.merchants.category] & in_pool)

    def timestamps(self, offsets: np.ndarray, null: np.ndarray | None = None) -> pa.Array:
        """UTC timestamps from microseconds after the start."""
        start = int(_midnight(self.config.start).timestamp()) * _US
        return pa.array(start + offsets.astype(np.int64), type=schema.TIMESTAMP, mask=null)


# ------------------------------------------------------------------------------------------------ rows


@dataclass
class _Rows:
    """Transactions under construction, one element per transaction; amounts in US dollars."""

    card: np.ndarray
    merchant: np.ndarray
    time: np.ndarray  # microseconds after the start
    amount: np.ndarray
    scenario: np.ndarray  # 0 for genuine, else 1 + index in SCENARIOS
    episode: np.ndarray  # fraud episode number, -1 for genuine

    @classmethod
    def concat(cls, parts: list[_Rows]) -> _Rows:
        """All rows of `parts`, in order."""
        return cls(*(np.concatenate([getattr(part, name) for part in parts]) for name in _ROW_FIELDS))

    def take(self, index: np.ndarray) -> _Rows:
        """The rows at `index` (an integer or boolean array)."""
        return _Rows(*(getattr(self, name)[index] for name in _ROW_FIELDS))


_ROW_FIELDS = ("card", "merchant", "time", "amount", "scenario", "episode")


class _Episodes:
    """Collects fraud episodes of one scenario, one card each."""

    def __init__(self, scenario: int) -> None:
        self.scenario = scenario
        self._cards: list[int] = []
        self._merchants: list[np.ndarray] = []
        self._times: list[np.ndarray] = []
        self._amounts: list[np.ndarray] = []

    def add(self, card: int, merchants: np.ndarray, times: np.ndarray, amounts: np.ndarray) -> None:
        """One episode: the card's fraudulent transactions (times in microseconds, amounts in USD)."""
        self._cards.append(card)
        self._merchants.append(merchants.astype(np.int64))
        self._times.append(times.astype(np.int64))
        self._amounts.append(amounts.astype(np.float64))

    def rows(self, first_episode: int) -> _Rows:
        """The collected transactions, episodes numbered from `first_episode`."""
        sizes = np.array([len(merchants) for merchants in self._merchants], dtype=np.int64)
        episodes = np.arange(first_episode, first_episode + len(sizes))
        return _Rows(
            card=np.repeat(np.array(self._cards, dtype=np.int64), sizes),
            merchant=np.concatenate([np.empty(0, np.int64), *self._merchants]),
            time=np.concatenate([np.empty(0, np.int64), *self._times]),
            amount=np.concatenate([np.empty(0, np.float64), *self._amounts]),
            scenario=np.full(int(sizes.sum()), self.scenario, dtype=np.int8),
            episode=np.repeat(episodes, sizes),
        )

    def __len__(self) -> int:
        return len(self._cards)


# -------------------------------------------------------------------------------------- genuine traffic


def _genuine_traffic(world: _World, rng: np.random.Generator, report: Callable[[int], None]) -> _Rows:
    """Genuine transactions of every card, grouped by card (not yet sorted by time)."""
    chunks = []
    for low in range(0, world.config.cards, _CHUNK_CARDS):
        chunk = _genuine_chunk(world, np.arange(low, min(low + _CHUNK_CARDS, world.config.cards)), rng)
        report(len(chunk.card))
        chunks.append(chunk)
    return _Rows.concat(chunks)


def _genuine_chunk(world: _World, card_index: np.ndarray, rng: np.random.Generator) -> _Rows:
    cards, merchants, ref, days = world.cards, world.merchants, world.ref, world.config.days
    # Local days from the day before the start to the day after the end, so that every UTC hour of the
    # period is covered whatever the time zone; transactions outside the period are dropped below.
    local_days = np.arange(-1, days + 1)
    weekday = _WEEKDAY_FACTOR[(world.config.start.weekday() + local_days) % 7]
    counts = rng.poisson(cards.rate[card_index, None] * weekday[None, :]).ravel()
    card = np.repeat(np.repeat(card_index, len(local_days)), counts)
    day = np.repeat(np.tile(local_days, len(card_index)), counts)
    n = len(card)

    travelling = (day >= cards.trip_start[card]) & (day < cards.trip_end[card])
    city = np.where(travelling, cards.trip_city[card], cards.home_city[card])
    ecom = rng.random(n) < cards.ecom_share[card]
    merchant = merchants.pick(np.where(ecom, merchants.ecom_pool, city), rng.random(n))
    favourite = ~ecom & ~travelling & (rng.random(n) < _FAVOURITE_SHARE)
    merchant[favourite] = cards.favourites[
        card[favourite], rng.integers(0, _FAVOURITES, int(favourite.sum()))
    ]

    local_hour = (cards.peak_hour[card] + rng.standard_normal(n) * cards.hour_spread[card]) % 24.0
    time = (day * _DAY - ref.city_offset[city] * _HOUR + local_hour * _HOUR).astype(np.int64)
    category = merchants.category[merchant]
    amount = (
        ref.mcc_median[category]
        * cards.amount_scale[card]
        * np.exp(ref.mcc_sigma[category] * rng.standard_normal(n))
    )
    rows = _Rows(card, merchant, time, amount, np.zeros(n, np.int8), np.full(n, -1, np.int64))
    return rows.take((time >= 0) & (time < world.end))


# -------------------------------------------------------------------------------------------------- fraud


class _GenuineIndex:
    """Per-card access to the genuine rows (which are grouped by card)."""

    def __init__(self, genuine: _Rows, cards: int) -> None:
        self.rows = genuine
        self._bounds = np.searchsorted(genuine.card, np.arange(cards + 1))

    def of(self, card: int) -> slice:
        """The genuine rows of one card."""
        return slice(self._bounds[card], self._bounds[card + 1])

    def median_amount(self, card: int) -> float:
        """The card's median genuine amount in USD (a typical amount when it has no history)."""
        amounts = self.rows.amount[self.of(card)]
        return float(np.median(amounts)) if len(amounts) else 40.0


def _inject_fraud(world: _World, genuine: _Rows, rng: np.random.Generator) -> _Rows:
    """Fraud episodes of every scenario on disjoint sets of cards."""
    config = world.config
    weights = np.array(config.scenario_weights, dtype=float)
    quotas = _split(round(config.fraud_card_share * config.cards), weights / weights.sum())
    index = _GenuineIndex(genuine, config.cards)
    taken = np.zeros(config.cards, dtype=bool)
    compromised = _compromised_merchant(world, index, quotas[_COMPROMISED_MERCHANT - 1], taken, rng)
    victims = iter(rng.permutation(np.flatnonzero(~taken)).tolist())
    collected = [
        _card_testing(world, quotas[_CARD_TESTING - 1], victims, rng),
        _impossible_travel(world, index, quotas[_IMPOSSIBLE_TRAVEL - 1], victims, rng),
        _account_takeover(world, index, quotas[_ACCOUNT_TAKEOVER - 1], victims, rng),
        compromised,
        _high_amount(world, index, quotas[_HIGH_AMOUNT - 1], victims, rng),
    ]
    parts, first = [], 0
    for episodes in collected:
        parts.append(episodes.rows(first))
        first += len(episodes)
    return _Rows.concat(parts)


def _split(total: int, shares: np.ndarray) -> list[int]:
    """`total` split by `shares` with largest remainders, so small totals still reach every share."""
    exact = total * shares
    counts = np.floor(exact).astype(int)
    counts[np.argsort(-(exact - counts), kind="stable")[: total - counts.sum()]] += 1
    return counts.tolist()


def _episode_start(world: _World, rng: np.random.Generator) -> int:
    """A random start for an episode that ends within `_EPISODE_HORIZON`."""
    return int(rng.integers(0, max(world.end - _EPISODE_HORIZON, 1)))


def _card_testing(world: _World, quota: int, victims: Iterator[int], rng: np.random.Generator) -> _Episodes:
    """Bursts of tiny charges at distinct online merchants within minutes, often followed by a large one."""
    episodes = _Episodes(_CARD_TESTING)
    ecom = np.flatnonzero(world.merchants.channel == _ECOM)
    digital = world.ref.mcc_mask(_DIGITAL_MCCS)[world.merchants.category[ecom]]
    tester_weight = world.merchants.popularity[ecom] * np.where(digital, 3.0, 1.0)
    large = world.category_merchants(_LARGE_PURCHASE_MCCS, world.merchants.ecom_pool)
    for card in _until_full(victims, episodes, quota):
        size = int(rng.integers(5, 21))
        merchants = rng.choice(
            ecom, min(size, len(ecom)), replace=False, p=tester_weight / tester_weight.sum()
        )
        gaps = np.clip(rng.exponential(15.0, len(merchants)), 2.0, 45.0) * _US
        times = _episode_start(world, rng) + np.cumsum(gaps)
        amounts = np.round(rng.uniform(0.5, 5.0, len(merchants)), 2)
        if rng.random() < 0.6:
            merchants = np.append(merchants, world.merchants.choose(rng, large, 1))
            times = np.append(times, times[-1] + rng.uniform(10, 120) * _MINUTE)
            amounts = np.append(amounts, max(60.0, rng.lognormal(math.log(350.0), 0.5)))
        episodes.add(card, merchants, times, amounts)
    return episodes


def _impossible_travel(
    world: _World, index: _GenuineIndex, quota: int, victims: Iterator[int], rng: np.random.Generator
) -> _Episodes:
    """A cloned card used in person in a far city 5-60 minutes after a genuine card-present purchase."""
    episodes = _Episodes(_IMPOSSIBLE_TRAVEL)
    merchants, cards, km = world.merchants, world.cards, world.ref.city_km
    for card in _until_full(victims, episodes, quota):
        rows = index.of(card)
        located = np.flatnonzero(
            (merchants.channel[index.rows.merchant[rows]] != _ECOM)
            & (index.rows.time[rows] < world.end - _HOUR)
        )
        if not len(located):
            continue
        anchor = rows.start + int(rng.choice(located))
        seen = [merchants.city[index.rows.merchant[anchor]], cards.home_city[card]]
        if cards.trip_start[card] >= 0:
            seen.append(cards.trip_city[card])
        far = np.flatnonzero((km[seen] > _FAR_KM).all(axis=0))
        if not len(far):
            continue
        city = int(rng.choice(far, p=world.ref.visit_weight[far] / world.ref.visit_weight[far].sum()))
        size = int(rng.integers(1, 5))
        chosen = merchants.pick(np.full(size, city), rng.random(size))
        times = index.rows.time[anchor] + np.sort(rng.uniform(5, 60, size)) * _MINUTE
        amounts = world.ref.mcc_median[merchants.category[chosen]] * rng.lognormal(math.log(2.5), 0.4, size)
        episodes.add(card, chosen, times, amounts)
    return episodes


def _account_takeover(
    world: _World, index: _GenuineIndex, quota: int, victims: Iterator[int], rng: np.random.Generator
) -> _Episodes:
    """Large online purchases at merchants the card never used, within a few hours."""
    episodes = _Episodes(_ACCOUNT_TAKEOVER)
    ecom = np.flatnonzero(world.merchants.channel == _ECOM)
    large = world.category_merchants(_LARGE_PURCHASE_MCCS, world.merchants.ecom_pool)
    for card in _until_full(victims, episodes, quota):
        used = index.rows.merchant[index.of(card)]
        candidates = np.setdiff1d(large, used)
        if not len(candidates):
            candidates = np.setdiff1d(ecom, used)
        if not len(candidates):
            continue
        size = min(int(rng.integers(1, 6)), len(candidates))
        chosen = world.merchants.choose(rng, candidates, size, replace=False)
        times = _episode_start(world, rng) + np.sort(rng.uniform(0, 4, size)) * _HOUR
        base = max(400.0, 4.0 * index.median_amount(card))
        episodes.add(card, chosen, times, base * np.exp(0.5 * np.abs(rng.standard_normal(size))))
    return episodes


def _compromised_merchant(
    world: _World, index: _GenuineIndex, quota: int, taken: np.ndarray, rng: np.random.Generator
) -> _Episodes:
    """Breach merchants one by one until enough of their window's customers are defrauded days later.

    Marks the victim cards in `taken`.
    """
    episodes = _Episodes(_COMPROMISED_MERCHANT)
    if quota == 0:
        return episodes
    merchants = world.merchants
    physical = np.flatnonzero(merchants.channel != _ECOM)
    by_merchant = np.argsort(index.rows.merchant, kind="stable")
    bounds = np.searchsorted(index.rows.merchant[by_merchant], np.arange(len(merchants.channel) + 1))
    for merchant in merchants.choose(rng, physical, len(physical), replace=False):
        if len(episodes) >= quota:
            break
        window_start = rng.uniform(0, max(world.config.days - 12, 1)) * _DAY
        window_end = window_start + rng.uniform(3, 10) * _DAY
        visits = by_merchant[bounds[merchant] : bounds[merchant + 1]]
        visits = visits[(index.rows.time[visits] >= window_start) & (index.rows.time[visits] < window_end)]
        visitors, first = np.unique(index.rows.card[visits], return_index=True)
        defrauded = ~taken[visitors] & (rng.random(len(visitors)) < 0.3)
        for card, visit in zip(visitors[defrauded], visits[first[defrauded]], strict=True):
            start = index.rows.time[visit] + rng.uniform(3, 30) * _DAY
            if start >= world.end - _EPISODE_HORIZON or len(episodes) >= quota:
                continue
            taken[card] = True
            _add_stolen_data_fraud(world, episodes, int(card), int(start), merchants.city[merchant], rng)
    return episodes


def _add_stolen_data_fraud(
    world: _World, episodes: _Episodes, card: int, start: int, breached_city: int, rng: np.random.Generator
) -> None:
    """Spend with stolen card data: online, or in person with a cloned card in another city."""
    merchants, ref = world.merchants, world.ref
    size = int(rng.integers(1, 5))
    other_cities = np.delete(np.arange(len(_CITIES)), breached_city)
    cloned_city = rng.choice(
        other_cities, p=ref.visit_weight[other_cities] / ref.visit_weight[other_cities].sum()
    )
    pools = np.where(rng.random(size) < 0.6, merchants.ecom_pool, cloned_city)
    chosen = merchants.pick(pools, rng.random(size))
    times = start + np.sort(rng.uniform(0, 6, size)) * _HOUR
    category = merchants.category[chosen]
    amounts = (
        ref.mcc_median[category] * world.cards.amount_scale[card] * rng.lognormal(math.log(3.0), 0.5, size)
    )
    episodes.add(card, chosen, times, amounts)


def _high_amount(
    world: _World, index: _GenuineIndex, quota: int, victims: Iterator[int], rng: np.random.Generator
) -> _Episodes:
    """One very large electronics or jewelry purchase, online or in the home city."""
    episodes = _Episodes(_HIGH_AMOUNT)
    for card in _until_full(victims, episodes, quota):
        pool = world.merchants.ecom_pool if rng.random() < 0.5 else int(world.cards.home_city[card])
        candidates = world.category_merchants(_HIGH_AMOUNT_MCCS, pool)
        if not len(candidates):
            candidates = world.category_merchants(_HIGH_AMOUNT_MCCS, world.merchants.ecom_pool)
        amount = max(rng.lognormal(math.log(1_800.0), 0.5), 12.0 * index.median_amount(card))
        episodes.add(
            card,
            world.merchants.choose(rng, candidates, 1),
            np.array([_episode_start(world, rng)]),
            np.array([min(amount, 50_000.0)]),
        )
    return episodes


def _until_full(victims: Iterator[int], episodes: _Episodes, quota: int) -> Iterator[int]:
    """Cards from `victims` while `episodes` holds fewer than `quota` episodes (unsuitable cards are skipped)."""
    while len(episodes) < quota:
        card = next(victims, None)
        if card is None:
            return
        yield card


# -------------------------------------------------------------------------------------------------- labels


@dataclass
class _Chargebacks:
    """Claims reported before the end: transaction rows and report times, in report order."""

    row: np.ndarray
    reported_at: np.ndarray


@dataclass
class _Investigations:
    """Cases opened before the end, in opening order; `closed_at` and `outcome` are -1 while open."""

    row: np.ndarray  # the transaction that started the case
    opened_at: np.ndarray
    closed_at: np.ndarray
    outcome: np.ndarray  # index into _OUTCOMES


def _chargebacks(world: _World, rows: _Rows, rng: np.random.Generator) -> _Chargebacks:
    """Fraud reported per episode after a lognormal delay (unless unreported), plus false claims."""
    config = world.config
    n = len(rows.card)
    fraud = rows.scenario > 0
    episodes = int(rows.episode.max(initial=-1)) + 1
    episode_delay = _report_delays(config.median_report_delay_days, 0.8, episodes, rng)
    # One call per episode; each disputed transaction is filed within hours of it.
    delay = _hours(rng, 0, 12, n)
    delay[fraud] += episode_delay[rows.episode[fraud]]
    draw = rng.random(n)
    claimed = np.where(fraud, draw >= config.unreported_fraud_rate, draw < config.false_claim_rate)
    false_claims = np.flatnonzero(claimed & ~fraud)
    delay[false_claims] = _report_delays(config.median_report_delay_days * 1.3, 0.7, len(false_claims), rng)
    reported_at = rows.time + delay
    row = np.flatnonzero(claimed & (reported_at < world.end))
    row = row[np.argsort(reported_at[row], kind="stable")]
    return _Chargebacks(row, reported_at[row])


def _report_delays(median_days: float, sigma: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """Lognormal reporting delays in microseconds, clipped to [1, 150] days."""
    return (np.clip(rng.lognormal(math.log(median_days), sigma, size), 1.0, 150.0) * _DAY).astype(np.int64)


def _hours(rng: np.random.Generator, low: float, high: float, size: int) -> np.ndarray:
    """Uniform durations between `low` and `high` hours, in microseconds."""
    return (rng.uniform(low, high, size) * _HOUR).astype(np.int64)


def _investigations(
    world: _World, rows: _Rows, chargebacks: _Chargebacks, rng: np.random.Generator
) -> _Investigations:
    """One case per chargeback, opened hours after it, and proactive cases of unreported card testing."""
    claimed_fraud = rows.scenario[chargebacks.row] > 0
    proactive_row, proactive_at = _proactive_cases(rows, chargebacks, rng)
    row = np.concatenate([chargebacks.row, proactive_row])
    opened_at = np.concatenate(
        [chargebacks.reported_at + _hours(rng, 1, 24, len(chargebacks.row)), proactive_at]
    )
    outcome_p = np.concatenate(
        [
            np.where(claimed_fraud[:, None], _FRAUD_OUTCOME_P, _FALSE_CLAIM_OUTCOME_P),
            np.tile(_PROACTIVE_OUTCOME_P, (len(proactive_row), 1)),
        ]
    )
    opened = np.flatnonzero(opened_at < world.end)
    opened = opened[np.argsort(opened_at[opened], kind="stable")]
    row, opened_at, outcome_p = row[opened], opened_at[opened], outcome_p[opened]
    closed_at = opened_at + (rng.lognormal(math.log(10.0), 0.6, len(row)) * _DAY).astype(np.int64)
    closed = closed_at < world.end
    outcome = (rng.random(len(row))[:, None] > np.cumsum(outcome_p, axis=1)).sum(axis=1)
    return _Investigations(
        row=row,
        opened_at=opened_at,
        closed_at=np.where(closed, closed_at, -1),
        outcome=np.where(closed, np.minimum(outcome, len(_OUTCOMES) - 1), -1),
    )


def _proactive_cases(
    rows: _Rows, chargebacks: _Chargebacks, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """First rows of card-testing bursts nobody reported, and when monitoring opens a case on them."""
    testing = np.flatnonzero(rows.scenario == _CARD_TESTING)  # time-sorted, so episodes run first to last
    episodes, first = np.unique(rows.episode[testing], return_index=True)
    last = len(testing) - 1 - np.unique(rows.episode[testing][::-1], return_index=True)[1]
    unreported = ~np.isin(episodes, rows.episode[chargebacks.row])
    flagged = unreported & (rng.random(len(episodes)) < _PROACTIVE_SHARE)
    opened_at = rows.time[testing[last[flagged]]] + _hours(rng, 1, 72, int(flagged.sum()))
    return testing[first[flagged]], opened_at


# -------------------------------------------------------------------------------------------------- tables


class _Ids(NamedTuple):
    cards: pa.Array
    merchants: pa.Array
    transactions: pa.Array


def _assemble(world: _World, rows: _Rows, rng: np.random.Generator) -> SimulatedData:
    """Turn time-sorted rows into the platform's tables, with the labels known at the end."""
    ids = _Ids(
        cards=_ids("c", world.config.cards, 7),
        merchants=_ids("m", len(world.merchants.channel), 6),
        transactions=_ids("tx", len(rows.card), 10),
    )
    amount, currency = _local_amounts(world, rows)
    chargebacks = _chargebacks(world, rows, rng)
    investigations = _investigations(world, rows, chargebacks, rng)
    return SimulatedData(
        transactions=_transaction_table(world, rows, ids, amount, currency),
        cards=_card_table(world, ids),
        merchants=_merchant_table(world, ids),
        chargebacks=_chargeback_table(world, rows, ids, amount, chargebacks),
        investigations=_investigation_table(world, rows, ids, investigations),
        fraud_truth=pa.Table.from_arrays(
            [
                ids.transactions,
                pa.array(rows.scenario > 0),
                pa.array((GENUINE, *SCENARIOS)).take(rows.scenario),
            ],
            schema=schema.FRAUD_TRUTH,
        ),
    )


def _local_amounts(world: _World, rows: _Rows) -> tuple[np.ndarray, np.ndarray]:
    """Amounts in the merchant's currency (ATM cash in whole notes of 20) and the currency indices."""
    merchants, ref = world.merchants, world.ref
    channel = merchants.channel[rows.merchant]
    currency = np.where(channel == _ECOM, 0, ref.city_currency[np.maximum(merchants.city[rows.merchant], 0)])
    usd = np.where(channel == _ATM, np.maximum(np.round(rows.amount / 20.0), 1.0) * 20.0, rows.amount)
    scale = 10.0 ** ref.minor_units[currency]
    amount = np.clip(np.round(usd * ref.fx[currency] * scale) / scale, 1.0 / scale, schema.MAX_AMOUNT)
    return amount, currency


def _transaction_table(
    world: _World, rows: _Rows, ids: _Ids, amount: np.ndarray, currency: np.ndarray
) -> pa.Table:
    merchants = world.merchants
    return pa.Table.from_arrays(
        [
            ids.transactions,
            ids.cards.take(rows.card),
            ids.merchants.take(rows.merchant),
            pa.array(amount),
            pa.array(world.ref.currencies).take(currency),
            world.timestamps(rows.time),
            _nullable_floats(merchants.lat[rows.merchant]),
            _nullable_floats(merchants.lon[rows.merchant]),
            pa.array(_CHANNELS).take(merchants.channel[rows.merchant]),
            pa.array(world.ref.mccs).take(merchants.category[rows.merchant]),
        ],
        schema=schema.TRANSACTIONS,
    )


def _card_table(world: _World, ids: _Ids) -> pa.Table:
    cards = world.cards
    opened = np.datetime64(world.config.start, "D") - cards.open_days_before.astype("timedelta64[D]")
    return pa.Table.from_arrays(
        [ids.cards, pa.array(cards.home_lat), pa.array(cards.home_lon), pa.array(opened)], schema=schema.CARDS
    )


def _merchant_table(world: _World, ids: _Ids) -> pa.Table:
    merchants = world.merchants
    return pa.Table.from_arrays(
        [
            ids.merchants,
            pa.array(world.ref.mccs).take(merchants.category),
            pa.array(_CHANNELS).take(merchants.channel),
            _nullable_floats(merchants.lat),
            _nullable_floats(merchants.lon),
        ],
        schema=schema.MERCHANTS,
    )


def _chargeback_table(
    world: _World, rows: _Rows, ids: _Ids, amount: np.ndarray, chargebacks: _Chargebacks
) -> pa.Table:
    row = chargebacks.row
    card_present = world.merchants.channel[rows.merchant[row]] != _ECOM
    reason = np.where(card_present, _REASON_CARD_PRESENT, _REASON_CARD_NOT_PRESENT)
    return pa.Table.from_arrays(
        [
            _ids("cb", len(row), 8),
            ids.transactions.take(row),
            ids.cards.take(rows.card[row]),
            pa.array(amount[row]),
            world.timestamps(chargebacks.reported_at),
            pa.array(reason.tolist(), pa.string()),
        ],
        schema=schema.CHARGEBACKS,
    )


def _investigation_table(world: _World, rows: _Rows, ids: _Ids, investigations: _Investigations) -> pa.Table:
    still_open = investigations.closed_at < 0
    return pa.Table.from_arrays(
        [
            _ids("inv", len(investigations.row), 8),
            ids.cards.take(rows.card[investigations.row]),
            ids.transactions.take(investigations.row),
            world.timestamps(investigations.opened_at),
            world.timestamps(investigations.closed_at, null=still_open),
            pa.array(_OUTCOMES).take(pa.array(investigations.outcome, mask=still_open)),
        ],
        schema=schema.INVESTIGATIONS,
    )


def _ids(prefix: str, count: int, width: int) -> pa.Array:
    """Sortable ids `prefix` + 1-based zero-padded number, e.g. 'c0000001'."""
    numbers = pc.cast(pa.array(np.arange(1, count + 1)), pa.string())
    padded = pc.utf8_lpad(numbers, width=max(width, len(str(count))), padding="0")
    return pc.binary_join_element_wise(prefix, padded, "")


def _nullable_floats(values: np.ndarray) -> pa.Array:
    return pa.array(values, mask=np.isnan(values))
