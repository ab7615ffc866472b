-- Ingest: quarantine for unknown devices, data-loss events for sequence gaps, per-device dead-letter
-- counters, and the optional per-reading extra fields of a batch.

-- Extra per-reading fields (door, light, battery) are kept per batch, as a JSON array aligned with
-- the batch's readings, so the readings table stays fixed-width for binary COPY.
ALTER TABLE batches ADD COLUMN extras jsonb;
CREATE INDEX batches_late ON batches (device_key, received_at) WHERE late;

-- A device's status shows that its batches are being rejected.
ALTER TABLE devices
    ADD COLUMN dead_letter_count bigint NOT NULL DEFAULT 0,
    ADD COLUMN last_dead_letter_at timestamptz,
    ADD COLUMN last_dead_letter_reason text;

CREATE INDEX dead_letters_reason ON dead_letters (reason, received_at);

-- Batches from devices nobody has registered yet: held whole, released into readings by the
-- ingest service once the device appears in the registry (it polls for such devices).
CREATE TABLE quarantine (
    id           bigserial PRIMARY KEY,
    received_at  timestamptz NOT NULL DEFAULT now(),
    topic        text NOT NULL,
    device_id    text NOT NULL,
    seq          bigint,
    payload      bytea NOT NULL,
    payload_size integer NOT NULL,
    released_at  timestamptz
);
CREATE INDEX quarantine_held ON quarantine (device_id, id) WHERE released_at IS NULL;

-- A gap in a device's batch sequence: readings that never arrived (yet). Batches that fill the
-- gap later (out-of-order delivery, a back-filling gateway) count as recovered; the event is
-- resolved when every missing batch has arrived.
CREATE TABLE data_loss_events (
    id           bigserial PRIMARY KEY,
    org_id       smallint NOT NULL,
    device_key   integer NOT NULL REFERENCES devices,
    from_seq     bigint NOT NULL,
    to_seq       bigint NOT NULL CHECK (to_seq >= from_seq),
    missing      bigint NOT NULL,
    recovered    bigint NOT NULL DEFAULT 0,
    detected_at  timestamptz NOT NULL DEFAULT now(),
    resolved_at  timestamptz
);
CREATE INDEX data_loss_events_device ON data_loss_events (device_key, from_seq);
CREATE INDEX data_loss_events_open ON data_loss_events (org_id, detected_at) WHERE resolved_at IS NULL;
