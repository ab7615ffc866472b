-- The services' own database role. Migrations run as the owner; the services connect as
-- coldchain_app, which may append to the audit trail only through audit_append() and may not
-- UPDATE, DELETE or TRUNCATE it, nor alert_events or signatures. The grants themselves are
-- applied after every migration run (storage/roles.py), so tables added later are covered.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'coldchain_app') THEN
        CREATE ROLE coldchain_app NOLOGIN;
    END IF;
END $$;
