-- Transactions with the derived columns every downstream model uses.
select
    transaction_id,
    card_id,
    merchant_id,
    amount,
    currency,
    "timestamp" as event_time,
    {{ utc_date('"timestamp"') }} as event_date,
    {{ utc_hour('"timestamp"') }} < 6 as is_night,
    channel = 'ecom' as is_ecom,
    lat,
    lon,
    channel,
    mcc,
    batch_id
from {{ source('raw', 'transactions') }}
