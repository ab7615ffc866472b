-- Logger export files read out at the end of a trip: the original bytes as uploaded (with their
-- SHA-256 and the file's own signature fields), the results the device printed, the platform's
-- evaluation of the same readings beside them, and the differences between the two. Readings of a
-- file go to the readings table through the ingest writer, as one batch whose seq is -id.
CREATE TABLE logger_files (
    id             bigserial PRIMARY KEY,
    org_id         smallint NOT NULL REFERENCES organizations,
    sha256         text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    filename       text,
    format         text NOT NULL,
    model          text NOT NULL,
    serial         text,
    device_key     integer REFERENCES devices,
    shipment_key   integer REFERENCES shipments,
    content        bytea NOT NULL,
    size_bytes     integer NOT NULL,
    signature      jsonb NOT NULL DEFAULT '{}',
    readings       integer NOT NULL,
    stored         integer NOT NULL,
    duplicates     integer NOT NULL,
    missing        integer NOT NULL,
    first_t        timestamptz,
    last_t         timestamptz,
    device_report  jsonb NOT NULL,
    platform_report jsonb,
    discrepancies  jsonb NOT NULL DEFAULT '[]',
    uploaded_by    text NOT NULL,
    uploaded_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (org_id, sha256)
);
CREATE INDEX logger_files_device ON logger_files (device_key, first_t);

-- Daily records of summary-keeping loggers (Fridge-tag), as the device printed them: shown as
-- daily summaries, never turned into readings.
CREATE TABLE logger_file_days (
    file_id     bigint NOT NULL REFERENCES logger_files ON DELETE CASCADE,
    org_id      smallint NOT NULL,
    device_key  integer REFERENCES devices,
    day         date NOT NULL,
    min_c       real,
    min_at      timestamptz,
    max_c       real,
    max_at      timestamptz,
    mean_c      real,
    alarms      jsonb NOT NULL DEFAULT '[]',
    sensor_timeout_min integer,
    events      integer,
    PRIMARY KEY (file_id, day)
);
CREATE INDEX logger_file_days_device ON logger_file_days (device_key, day);

-- Saved column mappings for the generic CSV importer, per organization and name.
CREATE TABLE logger_file_mappings (
    org_id      smallint NOT NULL REFERENCES organizations,
    name        text NOT NULL CHECK (name ~ '^[A-Za-z0-9_.-]{1,64}$'),
    mapping     jsonb NOT NULL,
    saved_by    text NOT NULL,
    saved_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, name)
);
