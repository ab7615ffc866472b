-- What a reading may carry beside temperature and humidity (docs/wire-format.md): the position
-- of a gateway with GPS (WGS 84 degrees, for the map) and the peak shock since the last reading
-- (g). NULL when not reported, which is most readings: a NULL costs one bit of the row's null
-- map, and ingest copies these columns only for batches that carry them. Light ("the box was
-- opened") is flag 8 beside door open (4); see 001_core.sql.
ALTER TABLE readings ADD COLUMN lat double precision;
ALTER TABLE readings ADD COLUMN lon double precision;
ALTER TABLE readings ADD COLUMN shock_g real;
