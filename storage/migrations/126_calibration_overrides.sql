-- QA's signed override of the refusal to assign a logger that is out of calibration: which
-- assignment, the certificate that had lapsed, the reason, who and when. Never edited (the
-- application role may only insert; storage/roles.py).
CREATE TABLE calibration_overrides (
    id             bigserial PRIMARY KEY,
    org_id         smallint NOT NULL REFERENCES organizations,
    assignment_id  bigint NOT NULL UNIQUE REFERENCES device_assignments ON DELETE CASCADE,
    device_key     integer NOT NULL REFERENCES devices,
    shipment_key   integer NOT NULL REFERENCES shipments ON DELETE CASCADE,
    calibration_id bigint REFERENCES device_calibrations,
    status         text NOT NULL CHECK (status IN ('overdue', 'never')),
    reason         text NOT NULL CHECK (length(btrim(reason)) > 0),
    overridden_by  text NOT NULL,
    overridden_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX calibration_overrides_shipment ON calibration_overrides (shipment_key);
