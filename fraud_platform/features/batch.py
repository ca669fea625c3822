"""Batch features: the columns of the dbt daily snapshots that are served online and used for training.

Declared once here; the online load writes them to Redis in this order and the training join reads the same
expressions from the warehouse, so the model sees identical values on both sides.
"""

# Order matters: it is the packed layout in Redis and the column order of the model's batch features.
CARD_BATCH_FEATURES: tuple[str, ...] = (
    *(
        f"{stat}_{days}d"
        for days in (7, 30, 90)
        for stat in ("txn_count", "amount_sum", "amount_mean", "amount_std", "amount_max")
    ),
    "distinct_merchants_30d",
    "ecom_share_30d",
    "night_share_30d",
    "days_since_open",
    "investigations_365d",
    "last_investigation_fraud",
    "chargebacks_known",
)
MERCHANT_BATCH_FEATURES: tuple[str, ...] = (
    "txn_count_30d",
    "amount_sum_30d",
    "txn_count_90d",
    "amount_sum_90d",
    "fraud_count_30d",
    "fraud_count_90d",
    "fraud_rate_30d",
    "fraud_rate_90d",
    # Short-window risk lagged by the label delay (dbt var merchant_risk_delay_days).
    *(f"{stat}_{days}d_lagged" for days in (1, 7, 30) for stat in ("txn_count", "fraud_count", "fraud_rate")),
)
# The last closed investigation's outcome as a number: 1 confirmed fraud, 0 another outcome, NULL none.
_CARD_EXPRESSIONS = {
    "last_investigation_fraud": "CASE WHEN {t}.last_investigation_outcome IS NULL THEN NULL "
    "WHEN {t}.last_investigation_outcome = 'confirmed_fraud' THEN 1 ELSE 0 END",
}


def card_feature_sql(table: str, prefix: str = "") -> str:
    """SELECT-list of the card batch features over `card_daily_features` aliased `table`, as DOUBLE."""
    return ", ".join(
        f"CAST({_CARD_EXPRESSIONS.get(name, '{t}.' + name).format(t=table)} AS DOUBLE) AS {prefix}{name}"
        for name in CARD_BATCH_FEATURES
    )


def merchant_feature_sql(table: str, prefix: str = "") -> str:
    """SELECT-list of the merchant batch features over `merchant_daily_features` aliased `table`, as DOUBLE."""
    return ", ".join(f"CAST({table}.{name} AS DOUBLE) AS {prefix}{name}" for name in MERCHANT_BATCH_FEATURES)
