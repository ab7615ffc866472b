-- TimescaleDB: continuous aggregates that bucketed lot reads (charts, KPIs) use instead of raw
-- readings, with numbers identical to date_bin over the raw rows on plain PostgreSQL. Means come
-- from exact numeric sums (sum_c / n), never an average of averages, so any rollup of the
-- 5-minute buckets gives the same figure as the raw readings.
--
-- readings_5m is recreated (it had no sums); a continuous aggregate cannot gain a column. Its
-- refresh policy goes with it and is added again; back-filled batches can be up to
-- ingest_max_past_days (400) old, so both policies refresh that far back (only invalidated
-- buckets are recomputed). Real-time aggregation adds what the policies have not materialised.
DROP MATERIALIZED VIEW IF EXISTS readings_5m;

CREATE MATERIALIZED VIEW readings_5m WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT device_key,
       shipment_key,
       time_bucket(INTERVAL '5 minutes', t) AS bucket,
       avg(c) AS avg_c,
       sum(c::numeric) AS sum_c,
       min(c) AS min_c,
       max(c) AS max_c,
       count(*) AS n
FROM readings
GROUP BY device_key, shipment_key, time_bucket(INTERVAL '5 minutes', t)
WITH NO DATA;

SELECT add_continuous_aggregate_policy('readings_5m',
    start_offset => INTERVAL '400 days',
    end_offset => INTERVAL '5 minutes',
    schedule_interval => INTERVAL '5 minutes');

-- Hourly rollup of the 5-minute one: a 30-day chart of a 10-logger lot reads 7,200 rows.
CREATE MATERIALIZED VIEW readings_1h WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT device_key,
       shipment_key,
       time_bucket(INTERVAL '1 hour', bucket) AS bucket,
       sum(sum_c) AS sum_c,
       min(min_c) AS min_c,
       max(max_c) AS max_c,
       sum(n)::bigint AS n
FROM readings_5m
GROUP BY device_key, shipment_key, time_bucket(INTERVAL '1 hour', bucket)
WITH NO DATA;

SELECT add_continuous_aggregate_policy('readings_1h',
    start_offset => INTERVAL '400 days',
    end_offset => INTERVAL '1 hour',
    schedule_interval => INTERVAL '15 minutes');
