-- Audit checkpoints signed with the platform's Ed25519 key (the evidence signing key), so an
-- auditor verifies them offline with the public key alone. Checkpoints made before carry an
-- HMAC (`mac`) from SECRET_KEY and are still verified with it; new ones carry `signature` (hex)
-- and the signing key's id instead.
ALTER TABLE audit_checkpoints
    ALTER COLUMN mac DROP NOT NULL,
    ADD COLUMN signature text CHECK (signature ~ '^[0-9a-f]{128}$'),
    ADD COLUMN key_id text,
    ADD CONSTRAINT audit_checkpoints_signed
        CHECK (mac IS NOT NULL OR (signature IS NOT NULL AND key_id IS NOT NULL));
