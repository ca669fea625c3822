select merchant_id, mcc, channel, lat, lon
from {{ source('raw', 'merchants') }}
