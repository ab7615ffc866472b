-- Signed checkpoints of the audit trail's head: (organization, last id, row count, hash) with a
-- MAC made by the services' platform key, which the database does not hold. A chain rewritten
-- end to end (every hash recomputed, the head updated) no longer matches an earlier checkpoint.
CREATE TABLE audit_checkpoints (
    id       bigserial PRIMARY KEY,
    org_id   smallint NOT NULL REFERENCES organizations,
    at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    last_id  bigint NOT NULL,
    rows     bigint NOT NULL,
    hash     bytea NOT NULL,
    mac      text NOT NULL
);
CREATE INDEX audit_checkpoints_org ON audit_checkpoints (org_id, id);
CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION coldchain_append_only();
CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION coldchain_append_only();
