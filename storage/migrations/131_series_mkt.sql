-- Each series' running MKT, kept by the rules runner beside its time outside the labelled range:
-- the accumulator it continues from, and (ln weighted mean of exp(-ΔH/RT), weight, ΔH/R) so a
-- lot's MKT over all its legs is joined from a few rows without reading the readings again.
-- NULL for a series not evaluated since this column came (its next re-evaluation fills it).
ALTER TABLE rule_series_state
    ADD COLUMN mkt_acc jsonb,
    ADD COLUMN mkt_log_mean double precision,
    ADD COLUMN mkt_w_ms double precision,
    ADD COLUMN mkt_dhr_k double precision;
