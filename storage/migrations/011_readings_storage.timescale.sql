-- TimescaleDB: readings become a hypertable with one-day chunks (a day of a large fleet's
-- readings plus its indexes fits in memory while it is written), compressed after 7 days
-- segmented by device (a lot's history is read device by device), with a 5-minute continuous
-- aggregate for dashboards and long reports.
--
-- Retention: raw readings are GDP records; they are kept 6 years (EU GDP guidelines ask for at
-- least 5) and then dropped chunk by chunk; the 5-minute aggregate is kept. Change the interval
-- with remove_retention_policy / add_retention_policy to match your regulator.
SELECT create_hypertable('readings', 't', chunk_time_interval => INTERVAL '1 day',
                         migrate_data => true);

ALTER TABLE readings SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'device_key',
    timescaledb.compress_orderby = 't'
);
SELECT add_compression_policy('readings', INTERVAL '7 days');

-- Real-time aggregation: a dispatcher's chart must include the minutes the refresh policy has not
-- materialised yet, so queries add the newest raw readings to the materialised buckets.
CREATE MATERIALIZED VIEW readings_5m WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT device_key,
       shipment_key,
       time_bucket(INTERVAL '5 minutes', t) AS bucket,
       avg(c) AS avg_c,
       min(c) AS min_c,
       max(c) AS max_c,
       count(*) AS n
FROM readings
GROUP BY device_key, shipment_key, time_bucket(INTERVAL '5 minutes', t)
WITH NO DATA;

-- Back-filled batches can be up to ingest_max_past_days (400) old: refresh that far back (only
-- invalidated buckets are recomputed, so the wide window costs little).
SELECT add_continuous_aggregate_policy('readings_5m',
    start_offset => INTERVAL '400 days',
    end_offset => INTERVAL '5 minutes',
    schedule_interval => INTERVAL '5 minutes');

SELECT add_retention_policy('readings', INTERVAL '6 years');
