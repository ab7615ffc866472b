-- Identity (21 CFR Part 11 subpart C): people log in with e-mail and password and may hold
-- several roles; machines use API keys with an expiry; QA's e-signatures are rows of their own,
-- bound to the SHA-256 of the record they sign.

-- People: the e-mail is the login and is unique across organizations (one login, one person).
ALTER TABLE users RENAME COLUMN username TO email;
ALTER TABLE users RENAME COLUMN full_name TO printed_name;
ALTER TABLE users ADD COLUMN roles text[] NOT NULL DEFAULT '{}';
UPDATE users SET roles = ARRAY[role];
ALTER TABLE users DROP COLUMN role;
ALTER TABLE users ADD CONSTRAINT users_roles_known CHECK (
    cardinality(roles) > 0
    AND roles <@ ARRAY['admin', 'qa', 'logistics', 'driver', 'erp', 'viewer']::text[]);
ALTER TABLE users ADD CONSTRAINT users_printed_name CHECK (length(btrim(printed_name)) > 0);
ALTER TABLE users ADD COLUMN password_changed_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE users ADD COLUMN locked_until timestamptz;
-- Tokens issued before this instant are refused (password change, disable, "log out everywhere").
ALTER TABLE users ADD COLUMN sessions_valid_after timestamptz;
ALTER TABLE users ADD COLUMN totp_secret text;
ALTER TABLE users ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now();
CREATE UNIQUE INDEX users_email ON users (lower(email));

-- Every login attempt, kept for the lockout count (the audit trail has them too).
CREATE TABLE login_attempts (
    id       bigserial PRIMARY KEY,
    user_id  bigint REFERENCES users,
    email    text NOT NULL,
    at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    outcome  text NOT NULL CHECK (outcome IN ('success', 'failure', 'locked', 'refused'))
);
CREATE INDEX login_attempts_user ON login_attempts (user_id, at);

-- Refresh tokens rotate: each use retires the token and issues the next one of its family;
-- a retired token used again revokes the whole family (it was stolen). Only a SHA-256 is kept.
CREATE TABLE refresh_tokens (
    id          bigserial PRIMARY KEY,
    user_id     bigint NOT NULL REFERENCES users,
    family      uuid NOT NULL,
    token_hash  bytea NOT NULL UNIQUE,
    issued_at   timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    revoked_at  timestamptz
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family);

-- Machines: API keys get an expiry, a creator and a kind (the bootstrap key rotates with its variable).
ALTER TABLE api_tokens ADD COLUMN expires_at timestamptz;
ALTER TABLE api_tokens ADD COLUMN created_by text;
ALTER TABLE api_tokens ADD COLUMN bootstrap boolean NOT NULL DEFAULT false;
UPDATE api_tokens SET bootstrap = true WHERE name = 'bootstrap-admin';

-- E-signatures (§11.50, §11.70): who (printed name and e-mail at the time), when (server clock),
-- what it means, on which record, and the SHA-256 of that record's canonical JSON.
CREATE TABLE signatures (
    id           bigserial PRIMARY KEY,
    org_id       smallint NOT NULL REFERENCES organizations,
    entity       text NOT NULL,
    entity_key   text NOT NULL,
    action       text NOT NULL,
    user_id      bigint NOT NULL REFERENCES users,
    signer_name  text NOT NULL,
    signer_email text NOT NULL,
    meaning      text NOT NULL CHECK (meaning IN ('release', 'rejection', 'approval', 'review', 'responsibility')),
    signed_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    record_hash  text NOT NULL CHECK (record_hash ~ '^sha256:[0-9a-f]{64}$')
);
CREATE INDEX signatures_record ON signatures (org_id, entity, entity_key, id);

CREATE FUNCTION coldchain_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER signatures_append_only BEFORE UPDATE OR DELETE ON signatures
    FOR EACH ROW EXECUTE FUNCTION coldchain_append_only();
-- TRUNCATE skips row triggers: a statement trigger of its own refuses it (owner included).
CREATE TRIGGER signatures_no_truncate BEFORE TRUNCATE ON signatures
    FOR EACH STATEMENT EXECUTE FUNCTION coldchain_append_only();
CREATE TRIGGER audit_trail_no_truncate BEFORE TRUNCATE ON audit_trail
    FOR EACH STATEMENT EXECUTE FUNCTION coldchain_append_only();
CREATE TRIGGER alert_events_append_only BEFORE UPDATE ON alert_events
    FOR EACH ROW EXECUTE FUNCTION coldchain_append_only();
CREATE TRIGGER alert_events_no_truncate BEFORE TRUNCATE ON alert_events
    FOR EACH STATEMENT EXECUTE FUNCTION coldchain_append_only();

-- The recorded head also counts the rows, so removed newest rows show even when the head's
-- hash was put back.
ALTER TABLE audit_heads ADD COLUMN rows bigint;
ALTER TABLE audit_heads ADD COLUMN last_id bigint;
UPDATE audit_heads h SET rows = c.n, last_id = c.last
    FROM (SELECT org_id, count(*) AS n, max(id) AS last FROM audit_trail GROUP BY org_id) c
    WHERE c.org_id = h.org_id;

CREATE OR REPLACE FUNCTION audit_append(
    p_org smallint, p_actor text, p_action text, p_entity text, p_key text,
    p_old jsonb, p_new jsonb, p_reason text
) RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_prev bytea;
    v_at timestamptz := clock_timestamp();
    v_hash bytea;
    v_id bigint;
BEGIN
    INSERT INTO audit_heads (org_id, hash, rows) VALUES (p_org, '\x'::bytea, 0) ON CONFLICT DO NOTHING;
    SELECT hash INTO v_prev FROM audit_heads WHERE org_id = p_org FOR UPDATE;
    v_hash := sha256(v_prev || convert_to(concat_ws(E'\x1f', p_org::text, to_char(v_at AT TIME ZONE 'UTC',
        'YYYY-MM-DD"T"HH24:MI:SS.US'), p_actor, p_action, p_entity, p_key,
        coalesce(p_old::text, ''), coalesce(p_new::text, ''), coalesce(p_reason, '')), 'UTF8'));
    INSERT INTO audit_trail (org_id, at, actor, action, entity, entity_key, old_value, new_value,
                             reason, prev_hash, hash)
    VALUES (p_org, v_at, p_actor, p_action, p_entity, p_key, p_old, p_new, p_reason, v_prev, v_hash)
    RETURNING id INTO v_id;
    UPDATE audit_heads SET hash = v_hash, rows = coalesce(rows, 0) + 1, last_id = v_id WHERE org_id = p_org;
    RETURN v_id;
END $$;

-- Organizations say what they are (partners of a shipment are carriers, customers, hospitals).
ALTER TABLE organizations ADD COLUMN kind text NOT NULL DEFAULT 'manufacturer'
    CHECK (kind IN ('manufacturer', '3pl', 'carrier', 'customer', 'hospital', 'partner'));
