{# The UTC calendar day of a TIMESTAMPTZ, whatever the session's time zone. #}
{% macro utc_date(column) -%}
    cast(timezone('UTC', {{ column }}) as date)
{%- endmacro %}

{# The UTC hour (0-23) of a TIMESTAMPTZ. Night is hour < 6, as in fraud_platform.features.on_demand. #}
{% macro utc_hour(column) -%}
    hour(timezone('UTC', {{ column }}))
{%- endmacro %}
