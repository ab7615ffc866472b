-- Rules engine state that must survive a restart: the engine's carried state per series
-- (one logger on one shipment), so any rules worker resumes exactly where the last one stopped.
CREATE TABLE rule_series_state (
    shipment_key    integer NOT NULL REFERENCES shipments ON DELETE CASCADE,
    device_key      integer NOT NULL REFERENCES devices,
    org_id          smallint NOT NULL,
    profile_id      text NOT NULL,
    profile_version integer NOT NULL,
    state           jsonb NOT NULL,
    last_ms         bigint,
    evaluations     bigint NOT NULL DEFAULT 0,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (shipment_key, device_key)
);

-- The alarm profile a product travels under unless its shipment names one.
CREATE TABLE product_profiles (
    org_id      smallint NOT NULL REFERENCES organizations,
    gtin        char(14) NOT NULL CHECK (gtin ~ '^[0-9]{14}$'),
    profile_id  text NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, gtin)
);

-- The fast lane. Ingest records each queued range's extremes; a series' state records whether it
-- is at rest and how close to its limits a reading must come to matter now. Work that cannot
-- change an alert waits for the bulk pass without being read at all.
ALTER TABLE rule_queue
    ADD COLUMN min_c real, ADD COLUMN max_c real, ADD COLUMN min_rh real, ADD COLUMN max_rh real;
ALTER TABLE rule_series_state
    ADD COLUMN at_rest boolean NOT NULL DEFAULT false,
    ADD COLUMN hot_high_c real, ADD COLUMN hot_low_c real,
    ADD COLUMN hot_high_rh real, ADD COLUMN hot_low_rh real;
