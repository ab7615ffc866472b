-- TimescaleDB: readings become a hypertable with one-day chunks (a day of a large fleet's
-- readings plus its indexes fits in memory while it is written), compressed after 7 days
-- segmented by device (a lot's history is read device by device).
--
-- Retention: raw readings are GDP records; they are kept 6 years (EU GDP guidelines ask for at
-- least 5) and then dropped chunk by chunk; the aggregates are kept. Change the interval
-- with remove_retention_policy / add_retention_policy to match your regulator.
SELECT create_hypertable('readings', 't', chunk_time_interval => INTERVAL '1 day',
                         migrate_data => true);

ALTER TABLE readings SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'device_key',
    timescaledb.compress_orderby = 't'
);
SELECT add_compression_policy('readings', INTERVAL '7 days');

-- The continuous aggregates (readings_5m, readings_1h) are made in 090_readings_rollups: a
-- fresh database gets them only there, so no refresh job of an older form can run while 090
-- replaces it.

SELECT add_retention_policy('readings', INTERVAL '6 years');
