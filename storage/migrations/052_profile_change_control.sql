-- Change control of alarm profiles: a new version is a draft until a different QA person approves
-- it with an e-signature; only approved versions are in force or can be assigned. Versions that
-- existed before change control are approved (they were in force already).
ALTER TABLE alarm_profiles ADD COLUMN state text NOT NULL DEFAULT 'approved'
    CHECK (state IN ('draft', 'approved', 'rejected'));
ALTER TABLE alarm_profiles ADD COLUMN approved_by text;
ALTER TABLE alarm_profiles ADD COLUMN approved_at timestamptz;
ALTER TABLE alarm_profiles ADD COLUMN based_on integer;  -- a rollback names the version it restores
ALTER TABLE alarm_profiles ADD CONSTRAINT alarm_profiles_approver_differs
    CHECK (state <> 'approved' OR approved_by IS NULL OR approved_by <> created_by);
