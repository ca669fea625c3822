-- Every day from the first to the last transaction in the warehouse: the days snapshots are taken as of.
select cast(unnest(generate_series(min(event_date), max(event_date), interval 1 day)) as date) as as_of_date
from {{ ref('stg_transactions') }}
