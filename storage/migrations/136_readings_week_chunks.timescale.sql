-- Readings chunks of seven days (TimescaleDB's default) instead of one, for chunks made from now
-- on. A logger read out at the destination delivers weeks at once: with one-day chunks a 37-day
-- Fridge-tag file created 38 chunks inside its COPY, most of the import's time. Seven-day chunks
-- also keep the last one to two weeks uncompressed (compression runs on chunks older than
-- 7 days), where late and read-out data usually lands. A week of a 2,000-logger fleet at one
-- reading a minute is about 20 M rows; a larger fleet sets a shorter interval again
-- (docs/operations.md).
SELECT set_chunk_time_interval('readings', INTERVAL '7 days');
