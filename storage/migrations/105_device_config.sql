-- The configuration the platform wants each logger to run (docs/edge.md): one row per device,
-- its version growing with every change. The row is also the outbox of the retained MQTT
-- message: `published_version` < `version` means the broker does not hold it yet, and the API's
-- config publisher keeps sending until it does (a broker restart or a crash between the commit
-- and the publish loses nothing). What the device applied comes back in its retained status
-- (`devices.status->applied_config`).
CREATE TABLE device_configs (
    device_key        integer PRIMARY KEY REFERENCES devices,
    org_id            smallint NOT NULL REFERENCES organizations,
    version           integer NOT NULL CHECK (version > 0),
    body              jsonb NOT NULL,
    published_version integer NOT NULL DEFAULT 0 CHECK (published_version <= version),
    published_at      timestamptz,
    publish_attempts  integer NOT NULL DEFAULT 0,
    last_error        text,
    changed_by        text NOT NULL,
    changed_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX device_configs_pending ON device_configs (device_key) WHERE published_version < version;
