select
    investigation_id,
    card_id,
    transaction_id,
    opened_at,
    {{ utc_date('opened_at') }} as opened_date,
    closed_at,
    {{ utc_date('closed_at') }} as closed_date,
    outcome
from {{ source('raw', 'investigations') }}
