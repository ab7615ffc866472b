-- Plain PostgreSQL: readings arrive roughly in time order, so a BRIN index on t (a few pages for
-- millions of rows, next to no cost per inserted row; docs/benchmarks.md has the figures) serves
-- time-range scans across all devices: retention deletes, fleet-wide reports, bucketed queries
-- with date_bin. Device and shipment queries use the two b-tree indexes of 001_core.sql.
CREATE INDEX readings_t_brin ON readings USING brin (t) WITH (pages_per_range = 32, autosummarize = on);
