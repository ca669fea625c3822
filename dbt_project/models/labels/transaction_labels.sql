-- Labels as of a moment (var labels_as_of, default the newest transaction): fraud (1) when a chargeback was
-- reported by then; genuine (0) once the transaction is older than the maturity window without one;
-- unlabelled (null) otherwise. label_known_at is when the label became knowable, for point-in-time training.
with as_of as (
    select coalesce(
        {{ "cast('" ~ var('labels_as_of') ~ "' as timestamptz)" if var('labels_as_of') else "null" }},
        max(event_time)
    ) as labels_as_of
    from {{ ref('stg_transactions') }}
),

known_chargebacks as (
    select cb.transaction_id, cb.reported_at
    from {{ ref('stg_chargebacks') }} as cb, as_of
    where cb.reported_at <= as_of.labels_as_of
)

select
    txn.transaction_id,
    txn.card_id,
    txn.merchant_id,
    txn.event_time,
    txn.event_date,
    txn.amount,
    case
        when cb.transaction_id is not null then 1
        when txn.event_time <= as_of.labels_as_of - to_days({{ var('label_maturity_days') }}) then 0
    end as label,
    case
        when cb.transaction_id is not null then cb.reported_at
        when txn.event_time <= as_of.labels_as_of - to_days({{ var('label_maturity_days') }})
            then txn.event_time + to_days({{ var('label_maturity_days') }})
    end as label_known_at,
    as_of.labels_as_of
from {{ ref('stg_transactions') }} as txn
cross join as_of
left join known_chargebacks as cb using (transaction_id)
