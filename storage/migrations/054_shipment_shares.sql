-- A shipment shared with a partner organization (carrier, customer, hospital) and a scope: the
-- partner's users see that shipment and what the scope names, and nothing else of the owner.
CREATE TABLE shipment_shares (
    id              bigserial PRIMARY KEY,
    owner_org_id    smallint NOT NULL REFERENCES organizations,
    shipment_key    integer NOT NULL REFERENCES shipments ON DELETE CASCADE,
    partner_org_id  smallint NOT NULL REFERENCES organizations,
    scope           text[] NOT NULL CHECK (scope <@ ARRAY['readings', 'alerts', 'evidence', 'acknowledge']::text[]),
    created_by      text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    revoked_at      timestamptz,
    CHECK (owner_org_id <> partner_org_id)
);
CREATE UNIQUE INDEX shipment_shares_live ON shipment_shares (shipment_key, partner_org_id) WHERE revoked_at IS NULL;
CREATE INDEX shipment_shares_partner ON shipment_shares (partner_org_id) WHERE revoked_at IS NULL;
