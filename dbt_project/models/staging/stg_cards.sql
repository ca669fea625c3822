select card_id, home_lat, home_lon, account_open_date
from {{ source('raw', 'cards') }}
