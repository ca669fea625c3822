-- Merchant features as of the end of each day: volume and fraud rate over 30 and 90 days, counting only
-- chargebacks reported by that day (a claim reported tomorrow is not known today); and short-window risk over
-- 1, 7 and 30 days lagged by the label delay (var merchant_risk_delay_days): the transactions of the days
-- (as_of - delay - w, as_of - delay] and those of them with a chargeback reported by as_of. Compromised
-- terminals show up within days; the lag keeps the rate from being diluted by days whose claims cannot be in.
{% set delay = var('merchant_risk_delay_days') | int %}
{% set lagged_windows = [1, 7, 30] %}
with daily as (
    select merchant_id, event_date, count(*) as txn_count, sum(amount) as amount_sum
    from {{ ref('stg_transactions') }}
    group by merchant_id, event_date
),

spine as (
    {{ entity_spine('merchant_id', 'daily') }}
),

volume as (
    select
        spine.merchant_id,
        spine.as_of_date,
        {% for days in [30, 90] %}
        sum(coalesce(daily.txn_count, 0)) over last_{{ days }} as txn_count_{{ days }}d,
        sum(coalesce(daily.amount_sum, 0)) over last_{{ days }} as amount_sum_{{ days }}d,
        {% endfor %}
        {% for days in lagged_windows %}
        coalesce(sum(daily.txn_count) over lagged_{{ days }}, 0) as txn_count_{{ days }}d_lagged{{ "," if not loop.last }}
        {% endfor %}
    from spine
    left join daily on daily.merchant_id = spine.merchant_id and daily.event_date = spine.as_of_date
    window
        {% for days in [30, 90] %}
        last_{{ days }} as (partition by spine.merchant_id order by spine.as_of_date rows between {{ days - 1 }} preceding and current row),
        {% endfor %}
        {% for days in lagged_windows %}
        lagged_{{ days }} as (partition by spine.merchant_id order by spine.as_of_date rows between {{ delay + days - 1 }} preceding and {{ delay }} preceding){{ "," if not loop.last }}
        {% endfor %}
),

reported_frauds as (
    select txn.merchant_id, txn.event_date, cb.reported_date
    from {{ ref('stg_chargebacks') }} as cb
    join {{ ref('stg_transactions') }} as txn using (transaction_id)
),

known_frauds as (
    select
        spine.merchant_id,
        spine.as_of_date,
        count(*) filter (where fraud.event_date > spine.as_of_date - 30) as fraud_count_30d,
        count(*) filter (where fraud.event_date > spine.as_of_date - 90) as fraud_count_90d,
        {% for days in lagged_windows %}
        count(*) filter (
            where fraud.event_date > spine.as_of_date - {{ delay + days }}
            and fraud.event_date <= spine.as_of_date - {{ delay }}
        ) as fraud_count_{{ days }}d_lagged{{ "," if not loop.last }}
        {% endfor %}
    from spine
    join reported_frauds as fraud
        on fraud.merchant_id = spine.merchant_id
        and fraud.reported_date <= spine.as_of_date
        and fraud.event_date > spine.as_of_date - {{ [90, delay + lagged_windows | max] | max }}
    group by spine.merchant_id, spine.as_of_date
)

select
    volume.merchant_id,
    volume.as_of_date,
    volume.txn_count_30d,
    volume.amount_sum_30d,
    volume.txn_count_90d,
    volume.amount_sum_90d,
    coalesce(known_frauds.fraud_count_30d, 0) as fraud_count_30d,
    coalesce(known_frauds.fraud_count_90d, 0) as fraud_count_90d,
    coalesce(known_frauds.fraud_count_30d, 0) / nullif(volume.txn_count_30d, 0) as fraud_rate_30d,
    coalesce(known_frauds.fraud_count_90d, 0) / nullif(volume.txn_count_90d, 0) as fraud_rate_90d,
    {% for days in lagged_windows %}
    volume.txn_count_{{ days }}d_lagged,
    coalesce(known_frauds.fraud_count_{{ days }}d_lagged, 0) as fraud_count_{{ days }}d_lagged,
    coalesce(known_frauds.fraud_count_{{ days }}d_lagged, 0) / nullif(volume.txn_count_{{ days }}d_lagged, 0)
        as fraud_rate_{{ days }}d_lagged{{ "," if not loop.last }}
    {% endfor %}
from volume
left join known_frauds
    on known_frauds.merchant_id = volume.merchant_id and known_frauds.as_of_date = volume.as_of_date
