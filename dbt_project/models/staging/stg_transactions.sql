-- Transactions with typed, derived columns every downstream model uses.
select
    transaction_id,
    card_id,
    merchant_id,
    amount,
    currency,
    "timestamp" as event_time,
    cast(timezone('UTC', "timestamp") as date) as event_date,
    lat,
    lon,
    channel,
    mcc,
    batch_id
from {{ source('raw', 'transactions') }}
