-- One chargeback per transaction: the first report wins (a second claim adds no information).
select
    transaction_id,
    card_id,
    min(reported_at) as reported_at,
    {{ utc_date('min(reported_at)') }} as reported_date,
    count(*) as claims
from {{ source('raw', 'chargebacks') }}
group by transaction_id, card_id
