{# One row per entity and calendar day from the entity's first transaction day on, for dense daily windows.
   `daily` is a relation with `key` and `event_date`. #}
{% macro entity_spine(key, daily) -%}
    select first_days.{{ key }}, calendar.as_of_date
    from (select {{ key }}, min(event_date) as first_day from {{ daily }} group by {{ key }}) as first_days
    join {{ ref('stg_calendar') }} as calendar on calendar.as_of_date >= first_days.first_day
{%- endmacro %}
