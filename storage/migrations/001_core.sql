-- Core registry, telemetry, alerts and audit trail. Every registry and telemetry row carries its
-- organization, and every query is scoped by it.
CREATE EXTENSION IF NOT EXISTS btree_gist;

CREATE TABLE organizations (
    id          smallserial PRIMARY KEY,
    slug        text NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO organizations (slug, name) VALUES ('default', 'Default organization');

-- API keys and user tokens: only a SHA-256 of the 256-bit random token is kept.
CREATE TABLE api_tokens (
    id          bigserial PRIMARY KEY,
    org_id      smallint NOT NULL REFERENCES organizations,
    name        text NOT NULL,
    role        text NOT NULL CHECK (role IN ('admin', 'qa', 'logistics', 'driver', 'erp', 'viewer')),
    token_hash  bytea NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at  timestamptz
);

-- People who sign records (21 CFR Part 11): argon2 password hashes, never the password.
CREATE TABLE users (
    id            bigserial PRIMARY KEY,
    org_id        smallint NOT NULL REFERENCES organizations,
    username      text NOT NULL,
    full_name     text NOT NULL,
    role          text NOT NULL CHECK (role IN ('admin', 'qa', 'logistics', 'driver', 'erp', 'viewer')),
    password_hash text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    disabled_at   timestamptz,
    UNIQUE (org_id, username)
);

-- Device ids are global (they are MQTT topic levels); `key` is the narrow id readings carry.
CREATE TABLE devices (
    key             serial PRIMARY KEY,
    id              text NOT NULL UNIQUE CHECK (id ~ '^[A-Za-z0-9_.-]{1,64}$'),
    org_id          smallint NOT NULL REFERENCES organizations,
    kind            text NOT NULL,
    interval_s      integer NOT NULL CHECK (interval_s BETWEEN 1 AND 86400),
    name            text,
    mqtt_password_hash text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_seen_at    timestamptz,
    last_seq        bigint,
    clock_offset_ms bigint,
    status          jsonb,
    status_at       timestamptz
);
CREATE INDEX devices_org ON devices (org_id);

CREATE TABLE lots (
    org_id      smallint NOT NULL REFERENCES organizations,
    gtin        char(14) NOT NULL CHECK (gtin ~ '^[0-9]{14}$'),
    lot         text NOT NULL CHECK (length(lot) BETWEEN 1 AND 20),
    expiry      date,
    stability_budget_s bigint,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, gtin, lot)
);

-- Custom alarm profiles, versioned; built-in presets live in code and are never rows.
CREATE TABLE alarm_profiles (
    org_id      smallint NOT NULL REFERENCES organizations,
    id          text NOT NULL,
    version     integer NOT NULL,
    body        jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    created_by  text NOT NULL,
    PRIMARY KEY (org_id, id, version)
);

CREATE TABLE shipments (
    key             serial PRIMARY KEY,
    org_id          smallint NOT NULL REFERENCES organizations,
    id              text NOT NULL,
    origin          text,
    destination     text,
    profile_id      text NOT NULL,
    profile_version integer NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (org_id, id)
);

CREATE TABLE shipment_lots (
    shipment_key integer NOT NULL REFERENCES shipments ON DELETE CASCADE,
    org_id       smallint NOT NULL,
    gtin         char(14) NOT NULL,
    lot          text NOT NULL,
    quantity     integer CHECK (quantity >= 0),
    PRIMARY KEY (shipment_key, gtin, lot),
    FOREIGN KEY (org_id, gtin, lot) REFERENCES lots
);
CREATE INDEX shipment_lots_lot ON shipment_lots (org_id, gtin, lot);

-- A logger rides with one shipment at a time: overlapping windows are refused by the database.
CREATE TABLE device_assignments (
    id           bigserial PRIMARY KEY,
    org_id       smallint NOT NULL REFERENCES organizations,
    device_key   integer NOT NULL REFERENCES devices,
    shipment_key integer NOT NULL REFERENCES shipments ON DELETE CASCADE,
    during       tstzrange NOT NULL CHECK (NOT isempty(during)),
    EXCLUDE USING gist (device_key WITH =, during WITH &&)
);
CREATE INDEX device_assignments_shipment ON device_assignments (shipment_key);

-- One row per accepted wire batch: the (device, seq) key is how a redelivery is recognised.
CREATE TABLE batches (
    device_key      integer NOT NULL,
    seq             bigint NOT NULL,
    org_id          smallint NOT NULL,
    received_at     timestamptz NOT NULL,
    sent_at         timestamptz NOT NULL,
    readings        integer NOT NULL,
    clock_offset_ms bigint NOT NULL DEFAULT 0,
    late            boolean NOT NULL DEFAULT false,
    PRIMARY KEY (device_key, seq)
);

-- The readings table stays narrow: every index costs microseconds per row on the hot path.
-- `t` is the corrected time; the device clock reading is t - batches.clock_offset_ms.
-- flags: 1 = late (arrived after newer data), 2 = clock corrected, 4 = door open.
CREATE TABLE readings (
    org_id       smallint NOT NULL,
    device_key   integer NOT NULL,
    shipment_key integer,
    seq          bigint NOT NULL,
    t            timestamptz NOT NULL,
    c            real NOT NULL,
    rh           real,
    flags        smallint NOT NULL DEFAULT 0,
    extras       jsonb
);
CREATE INDEX readings_device_t ON readings (device_key, t);
CREATE INDEX readings_shipment_t ON readings (shipment_key, t) WHERE shipment_key IS NOT NULL;

CREATE TABLE dead_letters (
    id          bigserial PRIMARY KEY,
    received_at timestamptz NOT NULL DEFAULT now(),
    topic       text NOT NULL,
    device_id   text,
    org_id      smallint,
    reason      text NOT NULL,
    detail      text NOT NULL,
    payload     bytea NOT NULL,
    payload_size integer NOT NULL
);
CREATE INDEX dead_letters_device ON dead_letters (device_id, received_at);

CREATE TABLE alerts (
    id              bigserial PRIMARY KEY,
    org_id          smallint NOT NULL REFERENCES organizations,
    episode_key     text NOT NULL,
    kind            text NOT NULL,
    severity        text NOT NULL CHECK (severity IN ('warning', 'alarm', 'critical')),
    state           text NOT NULL CHECK (state IN ('open', 'acknowledged', 'resolved', 'closed')),
    device_key      integer REFERENCES devices,
    shipment_key    integer REFERENCES shipments,
    limit_id        text,
    profile_id      text,
    profile_version integer,
    message         text NOT NULL,
    started_at      timestamptz,
    ended_at        timestamptz,
    peak_c          real,
    opened_at       timestamptz NOT NULL DEFAULT now(),
    acknowledged_at timestamptz,
    acknowledged_by text,
    resolved_at     timestamptz,
    resolved_by     text,
    closed_at       timestamptz,
    closed_by       text,
    disposition     text CHECK (disposition IN ('release', 'quarantine', 'reject')),
    assignee        text,
    UNIQUE (org_id, episode_key)
);
CREATE INDEX alerts_open ON alerts (org_id, state) WHERE state <> 'closed';
CREATE INDEX alerts_shipment ON alerts (shipment_key);

-- Every transition of an alert: who, when, why.
CREATE TABLE alert_events (
    id          bigserial PRIMARY KEY,
    alert_id    bigint NOT NULL REFERENCES alerts ON DELETE CASCADE,
    at          timestamptz NOT NULL DEFAULT now(),
    actor       text NOT NULL,
    action      text NOT NULL,
    from_state  text,
    to_state    text,
    comment     text
);
CREATE INDEX alert_events_alert ON alert_events (alert_id, id);

-- Append-only, hash-chained audit trail (21 CFR Part 11 §11.10(e)): each row's hash covers the
-- previous row's hash, so an edit or a deletion anywhere breaks the chain from there on.
CREATE TABLE audit_trail (
    id          bigserial PRIMARY KEY,
    org_id      smallint NOT NULL REFERENCES organizations,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor       text NOT NULL,
    action      text NOT NULL,
    entity      text NOT NULL,
    entity_key  text NOT NULL,
    old_value   jsonb,
    new_value   jsonb,
    reason      text,
    prev_hash   bytea NOT NULL,
    hash        bytea NOT NULL
);
CREATE INDEX audit_trail_entity ON audit_trail (org_id, entity, entity_key);

CREATE TABLE audit_heads (
    org_id  smallint PRIMARY KEY REFERENCES organizations,
    hash    bytea NOT NULL
);

CREATE FUNCTION audit_append(
    p_org smallint, p_actor text, p_action text, p_entity text, p_key text,
    p_old jsonb, p_new jsonb, p_reason text
) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_prev bytea;
    v_at timestamptz := clock_timestamp();
    v_hash bytea;
    v_id bigint;
BEGIN
    INSERT INTO audit_heads (org_id, hash) VALUES (p_org, '\x'::bytea) ON CONFLICT DO NOTHING;
    SELECT hash INTO v_prev FROM audit_heads WHERE org_id = p_org FOR UPDATE;
    v_hash := sha256(v_prev || convert_to(concat_ws(E'\x1f', p_org::text, to_char(v_at AT TIME ZONE 'UTC',
        'YYYY-MM-DD"T"HH24:MI:SS.US'), p_actor, p_action, p_entity, p_key,
        coalesce(p_old::text, ''), coalesce(p_new::text, ''), coalesce(p_reason, '')), 'UTF8'));
    INSERT INTO audit_trail (org_id, at, actor, action, entity, entity_key, old_value, new_value,
                             reason, prev_hash, hash)
    VALUES (p_org, v_at, p_actor, p_action, p_entity, p_key, p_old, p_new, p_reason, v_prev, v_hash)
    RETURNING id INTO v_id;
    UPDATE audit_heads SET hash = v_hash WHERE org_id = p_org;
    RETURN v_id;
END $$;

CREATE FUNCTION audit_trail_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_trail is append-only';
END $$;
CREATE TRIGGER audit_trail_no_update BEFORE UPDATE OR DELETE ON audit_trail
    FOR EACH ROW EXECUTE FUNCTION audit_trail_is_append_only();

-- Durable work for the rules engine: ingest adds a row per (device, shipment) it wrote, in the
-- same transaction as the readings, then NOTIFY rules; a rules worker takes rows with
-- FOR UPDATE SKIP LOCKED, so a crash of either side loses no evaluation.
CREATE TABLE rule_queue (
    id            bigserial PRIMARY KEY,
    org_id        smallint NOT NULL,
    device_key    integer NOT NULL,
    shipment_key  integer,
    from_t        timestamptz NOT NULL,
    to_t          timestamptz NOT NULL,
    late          boolean NOT NULL DEFAULT false,
    enqueued_at   timestamptz NOT NULL DEFAULT now()
);
