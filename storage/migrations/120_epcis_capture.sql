-- EPCIS 2.0 documents captured from partners' systems: each accepted document as it arrived
-- (bytes and SHA-256, append-only), the key of every event it held (eventID, or the hash of the
-- event when it has none) so a repeated event is applied once, the SSCCs (logistic units) a
-- shipment travels as, and every shipping/receiving movement with the shipment's actual times.
CREATE TABLE epcis_captures (
    id             bigserial PRIMARY KEY,
    org_id         smallint NOT NULL REFERENCES organizations,
    sha256         text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    body           bytea NOT NULL,
    size_bytes     integer NOT NULL,
    events         integer NOT NULL,
    new_events     integer NOT NULL,
    movements      integer NOT NULL,
    readings       integer NOT NULL,
    stored         integer NOT NULL,
    duplicates     integer NOT NULL,
    refused        integer NOT NULL,
    captured_by    text NOT NULL,
    captured_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (org_id, sha256)
);
CREATE INDEX epcis_captures_org ON epcis_captures (org_id, id);

-- The row is written last in the capture's transaction, with its outcome; then it is a record.
CREATE TRIGGER epcis_captures_append_only BEFORE UPDATE OR DELETE ON epcis_captures
    FOR EACH ROW EXECUTE FUNCTION coldchain_append_only();
CREATE TRIGGER epcis_captures_no_truncate BEFORE TRUNCATE ON epcis_captures
    FOR EACH STATEMENT EXECUTE FUNCTION coldchain_append_only();

CREATE TABLE epcis_events (
    org_id      smallint NOT NULL REFERENCES organizations,
    event_key   text NOT NULL CHECK (length(event_key) BETWEEN 1 AND 2048),
    capture_id  bigint NOT NULL REFERENCES epcis_captures DEFERRABLE INITIALLY DEFERRED,
    position    integer NOT NULL,
    type        text NOT NULL,
    biz_step    text,
    event_time  timestamptz NOT NULL,
    PRIMARY KEY (org_id, event_key)
);
CREATE INDEX epcis_events_capture ON epcis_events (capture_id, position);

-- A logistic unit (SSCC) belongs to one shipment of one organization.
CREATE TABLE shipment_units (
    org_id        smallint NOT NULL REFERENCES organizations,
    sscc          char(18) NOT NULL CHECK (sscc ~ '^[0-9]{18}$'),
    shipment_key  integer NOT NULL REFERENCES shipments ON DELETE CASCADE,
    capture_id    bigint REFERENCES epcis_captures DEFERRABLE INITIALLY DEFERRED,
    PRIMARY KEY (org_id, sscc)
);
CREATE INDEX shipment_units_shipment ON shipment_units (shipment_key);

CREATE TABLE shipment_movements (
    id            bigserial PRIMARY KEY,
    org_id        smallint NOT NULL REFERENCES organizations,
    shipment_key  integer NOT NULL REFERENCES shipments ON DELETE CASCADE,
    step          text NOT NULL CHECK (step IN ('shipping', 'receiving')),
    at            timestamptz NOT NULL,
    gln           char(13) CHECK (gln ~ '^[0-9]{13}$'),
    ssccs         text[] NOT NULL DEFAULT '{}',
    capture_id    bigint NOT NULL REFERENCES epcis_captures DEFERRABLE INITIALLY DEFERRED,
    event_key     text NOT NULL
);
CREATE INDEX shipment_movements_shipment ON shipment_movements (shipment_key, at);

-- The leg's actual times: the first shipping and the last receiving event seen.
ALTER TABLE shipments
    ADD COLUMN departed_at timestamptz,
    ADD COLUMN arrived_at timestamptz;
