-- Calibration certificates per logger (EU GDP: monitoring equipment calibrated at least yearly):
-- when and by which laboratory, until when it holds, the reference points with the logger's
-- offsets, and the certificate PDF as received with its SHA-256.
CREATE TABLE device_calibrations (
    id                 bigserial PRIMARY KEY,
    org_id             smallint NOT NULL REFERENCES organizations,
    device_key         integer NOT NULL REFERENCES devices,
    performed_on       date NOT NULL,
    due_on             date NOT NULL CHECK (due_on > performed_on),
    laboratory         text NOT NULL CHECK (length(btrim(laboratory)) > 0),
    certificate_number text NOT NULL CHECK (length(btrim(certificate_number)) > 0),
    reference_points   jsonb NOT NULL DEFAULT '[]',
    certificate_pdf    bytea,
    certificate_sha256 text,
    recorded_by        text NOT NULL,
    recorded_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (device_key, certificate_number)
);
CREATE INDEX device_calibrations_device ON device_calibrations (device_key, performed_on);
CREATE INDEX device_calibrations_due ON device_calibrations (due_on);
