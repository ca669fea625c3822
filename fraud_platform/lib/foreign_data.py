"""A second data shape, unlike the platform's own simulator: the transaction generator of the Fraud Detection
Handbook (Le Borgne et al., "Reproducible Machine Learning for Credit Card Fraud Detection"), as a user's file.

Customers and terminals sit on a 100 x 100 grid; each customer buys at the terminals within a radius, a
Poisson number of times a day, with normally distributed amounts around its own mean. The output is what a
team would export from such a system: integer ids, naive timestamps (no zone), no coordinates, no channel, no
MCC, a 0/1 fraud column and the day a claim arrived. Three fraud scenarios, none of them the platform's own:

1. any amount above 220 is fraud (a trivial rule a model must learn);
2. compromised terminals: every day two terminals are compromised and all their transactions of the next
   28 days are fraudulent (the terminal's recent fraud rate is the signal);
3. compromised customers: every day three customers are compromised and a third of their transactions of the
   next 14 days have their amounts multiplied by 5 (the card's spending history is the signal).

Claims arrive 1 to 30 days after the fraud. `write_csv` writes the file `fraud-platform import` reads with
`--timezone UTC --label-column TX_FRAUD --chargeback-date-column CLAIM_DATE` and the column map below.
"""

from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

COLUMN_MAP = {
    "TRANSACTION_ID": "transaction_id",
    "CUSTOMER_ID": "card_id",
    "TERMINAL_ID": "merchant_id",
    "TX_AMOUNT": "amount",
    "TX_DATETIME": "timestamp",
}
LABEL_COLUMN = "TX_FRAUD"
CLAIM_COLUMN = "CLAIM_DATE"


@dataclass(frozen=True)
class HandbookConfig:
    """Size and seed of a generated dataset."""

    customers: int = 2_000
    terminals: int = 4_000
    days: int = 120
    start: date = date(2026, 1, 1)
    radius: float = 5.0
    seed: int = 3


def generate(config: HandbookConfig = HandbookConfig()) -> pd.DataFrame:
    """The transactions, sorted by time, with the fraud label and the claim date of each fraud."""
    rng = np.random.default_rng(config.seed)
    customer_xy = rng.uniform(0, 100, (config.customers, 2))
    terminal_xy = rng.uniform(0, 100, (config.terminals, 2))
    mean_amount = rng.uniform(5, 100, config.customers)
    rate = rng.uniform(0, 4, config.customers)
    rows = []
    for customer in range(config.customers):
        distances = np.hypot(*(terminal_xy - customer_xy[customer]).T)
        nearby = np.flatnonzero(distances < config.radius)
        if not len(nearby):
            continue
        counts = rng.poisson(rate[customer], config.days)
        total = int(counts.sum())
        day = np.repeat(np.arange(config.days), counts)
        seconds = np.clip(rng.normal(43_200, 20_000, total), 0, 86_399).astype(np.int64)
        amounts = np.abs(rng.normal(mean_amount[customer], mean_amount[customer] / 2, total))
        rows.append(
            pd.DataFrame(
                {
                    "CUSTOMER_ID": customer,
                    "TERMINAL_ID": rng.choice(nearby, total),
                    "day": day,
                    "seconds": day * 86_400 + seconds,
                    "TX_AMOUNT": np.round(amounts, 2),
                }
            )
        )
    frame = pd.concat(rows).sort_values(["seconds", "CUSTOMER_ID"], kind="stable").reset_index(drop=True)
    fraud = frame["TX_AMOUNT"].to_numpy() > 220
    for day in range(config.days):
        terminals = rng.choice(config.terminals, 2, replace=False)
        window = (frame["day"] >= day) & (frame["day"] < day + 28) & frame["TERMINAL_ID"].isin(terminals)
        fraud |= window.to_numpy()
        customers = rng.choice(config.customers, 3, replace=False)
        spree = (frame["day"] >= day) & (frame["day"] < day + 14) & frame["CUSTOMER_ID"].isin(customers)
        chosen = spree.to_numpy() & (rng.random(len(frame)) < 1 / 3)
        frame.loc[chosen, "TX_AMOUNT"] = (frame.loc[chosen, "TX_AMOUNT"] * 5).round(2)
        fraud |= chosen
    timestamps = pd.Timestamp(config.start) + pd.to_timedelta(frame["seconds"], unit="s")
    claim_days = rng.integers(1, 31, len(frame))
    return pd.DataFrame(
        {
            "TRANSACTION_ID": np.arange(len(frame)),
            "TX_DATETIME": timestamps.dt.strftime("%Y-%m-%d %H:%M:%S"),
            "CUSTOMER_ID": frame["CUSTOMER_ID"],
            "TERMINAL_ID": frame["TERMINAL_ID"],
            "TX_AMOUNT": frame["TX_AMOUNT"],
            LABEL_COLUMN: fraud.astype(int),
            CLAIM_COLUMN: np.where(
                fraud, (timestamps + pd.to_timedelta(claim_days, unit="D")).dt.strftime("%Y-%m-%d"), ""
            ),
        }
    )


def write_csv(path: Path, config: HandbookConfig = HandbookConfig()) -> pd.DataFrame:
    """Generate and write the CSV a user would bring; return the frame."""
    frame = generate(config)
    frame.to_csv(path, index=False)
    return frame


def import_arguments(path: Path) -> list[str]:
    """`fraud-platform import` arguments for the written file (naive timestamps read as UTC)."""
    return [
        "import",
        str(path),
        *(argument for source, target in COLUMN_MAP.items() for argument in ("--map", f"{source}={target}")),
        *("--label-column", LABEL_COLUMN, "--chargeback-date-column", CLAIM_COLUMN),
        *("--currency", "EUR", "--timezone", "UTC"),
    ]
