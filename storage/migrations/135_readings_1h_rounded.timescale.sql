-- TimescaleDB: the hourly rollup also keeps each row's figures as a bucketed read returns them:
-- the mean of the exact sums, the minimum and the maximum, rounded to 3 decimals, as float8.
-- They are computed once when the policy materialises the hour, no longer on every read: for a
-- 30-day hourly chart of a 10-logger lot (7,200 rows) the numeric rounding was most of the query.
-- The sums stay beside them for buckets wider than an hour, and the expressions are the ones the
-- raw date_bin read uses on plain PostgreSQL, so both engines keep giving the same numbers.
--
-- A continuous aggregate cannot gain a column, so readings_1h is made again (its refresh policy
-- goes with it and is added again). Until the policy's first run materialises it, reads of it are
-- computed in real time from readings_5m: the same numbers, only slower.
DROP MATERIALIZED VIEW IF EXISTS readings_1h;

CREATE MATERIALIZED VIEW readings_1h WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT device_key,
       shipment_key,
       time_bucket(INTERVAL '1 hour', bucket) AS bucket,
       sum(sum_c) AS sum_c,
       min(min_c) AS min_c,
       max(max_c) AS max_c,
       sum(n)::bigint AS n,
       round(sum(sum_c) / sum(n), 3)::float8 AS mean_c_3,
       round(min(min_c)::numeric, 3)::float8 AS min_c_3,
       round(max(max_c)::numeric, 3)::float8 AS max_c_3
FROM readings_5m
GROUP BY device_key, shipment_key, time_bucket(INTERVAL '1 hour', bucket)
WITH NO DATA;

SELECT add_continuous_aggregate_policy('readings_1h',
    start_offset => INTERVAL '400 days',
    end_offset => INTERVAL '1 hour',
    schedule_interval => INTERVAL '15 minutes');
