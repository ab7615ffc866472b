-- Evidence recorded for QA and the ERP: one row per signed bundle the platform made on its own
-- (an excursion's preliminary bundle when it opens, its final one when it closes, a shipment's
-- when the shipment completes). The bundle itself is a file under the data folder, named by its
-- SHA-256: bundles of a long lot reach hundreds of megabytes, which would bloat every backup and
-- the WAL of the telemetry database, while the hash kept here (and the Ed25519 seal inside the
-- file) makes the file tamper-evident wherever it is copied.
CREATE TABLE evidence_records (
    id              bigserial PRIMARY KEY,
    org_id          smallint NOT NULL REFERENCES organizations,
    subject_kind    text NOT NULL CHECK (subject_kind IN ('lot', 'shipment', 'excursion')),
    subject         text NOT NULL,
    stage           text NOT NULL CHECK (stage IN ('preliminary', 'final', 'completed')),
    alert_id        bigint REFERENCES alerts ON DELETE CASCADE,
    shipment_key    integer REFERENCES shipments ON DELETE CASCADE,
    file_name       text NOT NULL,
    size_bytes      bigint NOT NULL CHECK (size_bytes > 0),
    bundle_sha256   text NOT NULL CHECK (bundle_sha256 ~ '^[0-9a-f]{64}$'),
    record_sha256   text NOT NULL CHECK (record_sha256 ~ '^[0-9a-f]{64}$'),
    key_id          text NOT NULL,
    generated_at    timestamptz NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (org_id, subject_kind, subject, stage)
);
CREATE INDEX evidence_records_alert ON evidence_records (alert_id) WHERE alert_id IS NOT NULL;
CREATE INDEX evidence_records_shipment ON evidence_records (shipment_key) WHERE shipment_key IS NOT NULL;
