-- Card features as of the end of each day (as_of_date): one row per card and day from the card's first
-- transaction to the last day in the warehouse. A transaction on day D is scored with the row of day D - 1,
-- online and in training alike.
with daily as (
    select
        card_id,
        event_date,
        count(*) as txn_count,
        sum(amount) as amount_sum,
        sum(amount * amount) as amount_sq_sum,
        max(amount) as amount_max,
        count(*) filter (where is_ecom) as ecom_count,
        count(*) filter (where is_night) as night_count,
        list(distinct merchant_id) as merchants
    from {{ ref('stg_transactions') }}
    group by card_id, event_date
),

spine as (
    {{ entity_spine('card_id', 'daily') }}
),

dense as (
    select
        spine.card_id,
        spine.as_of_date,
        coalesce(daily.txn_count, 0) as txn_count,
        coalesce(daily.amount_sum, 0) as amount_sum,
        coalesce(daily.amount_sq_sum, 0) as amount_sq_sum,
        daily.amount_max,
        coalesce(daily.ecom_count, 0) as ecom_count,
        coalesce(daily.night_count, 0) as night_count,
        coalesce(daily.merchants, []) as merchants
    from spine
    left join daily on daily.card_id = spine.card_id and daily.event_date = spine.as_of_date
),

windowed as (
    select
        card_id,
        as_of_date,
        {% for days in [7, 30, 90] %}
        sum(txn_count) over last_{{ days }} as txn_count_{{ days }}d,
        sum(amount_sum) over last_{{ days }} as amount_sum_{{ days }}d,
        sum(amount_sq_sum) over last_{{ days }} as amount_sq_sum_{{ days }}d,
        max(amount_max) over last_{{ days }} as amount_max_{{ days }}d,
        {% endfor %}
        sum(ecom_count) over last_30 as ecom_count_30d,
        sum(night_count) over last_30 as night_count_30d,
        len(list_distinct(flatten(list(merchants) over last_30))) as distinct_merchants_30d
    from dense
    window
        {% for days in [7, 30, 90] %}
        last_{{ days }} as (partition by card_id order by as_of_date rows between {{ days - 1 }} preceding and current row){{ "," if not loop.last }}
        {% endfor %}
),

investigations as (
    select
        spine.card_id,
        spine.as_of_date,
        count(*) filter (where inv.opened_date > spine.as_of_date - 365) as investigations_365d,
        arg_max(inv.outcome, inv.closed_at) filter (where inv.closed_date <= spine.as_of_date) as last_outcome
    from spine
    join {{ ref('stg_investigations') }} as inv
        on inv.card_id = spine.card_id and inv.opened_date <= spine.as_of_date
    group by spine.card_id, spine.as_of_date
),

chargebacks as (
    select spine.card_id, spine.as_of_date, count(*) as chargebacks_known
    from spine
    join {{ ref('stg_chargebacks') }} as cb
        on cb.card_id = spine.card_id and cb.reported_date <= spine.as_of_date
    group by spine.card_id, spine.as_of_date
)

select
    windowed.card_id,
    windowed.as_of_date,
    {% for days in [7, 30, 90] %}
    windowed.txn_count_{{ days }}d,
    windowed.amount_sum_{{ days }}d,
    windowed.amount_sum_{{ days }}d / nullif(windowed.txn_count_{{ days }}d, 0) as amount_mean_{{ days }}d,
    case when windowed.txn_count_{{ days }}d > 1 then sqrt(greatest(
        (windowed.amount_sq_sum_{{ days }}d
            - windowed.amount_sum_{{ days }}d * windowed.amount_sum_{{ days }}d / windowed.txn_count_{{ days }}d)
        / (windowed.txn_count_{{ days }}d - 1), 0)) end as amount_std_{{ days }}d,
    windowed.amount_max_{{ days }}d,
    {% endfor %}
    windowed.distinct_merchants_30d,
    windowed.ecom_count_30d / nullif(windowed.txn_count_30d, 0) as ecom_share_30d,
    windowed.night_count_30d / nullif(windowed.txn_count_30d, 0) as night_share_30d,
    windowed.as_of_date - cards.account_open_date as days_since_open,
    coalesce(investigations.investigations_365d, 0) as investigations_365d,
    investigations.last_outcome as last_investigation_outcome,
    coalesce(chargebacks.chargebacks_known, 0) as chargebacks_known
from windowed
left join {{ ref('stg_cards') }} as cards on cards.card_id = windowed.card_id
left join investigations
    on investigations.card_id = windowed.card_id and investigations.as_of_date = windowed.as_of_date
left join chargebacks
    on chargebacks.card_id = windowed.card_id and chargebacks.as_of_date = windowed.as_of_date
