-- Master data as an ERP sends it: products (the trade item's labelled range, stability budget and
-- activation energy for MKT), sites by GLN, lots with their quantity and serial numbers, shipment
-- headers with carrier, mode and planned times; and a record of each committed bulk import.
CREATE TABLE products (
    org_id              smallint NOT NULL REFERENCES organizations,
    gtin                char(14) NOT NULL CHECK (gtin ~ '^[0-9]{14}$'),
    name                text NOT NULL CHECK (length(btrim(name)) BETWEEN 1 AND 200),
    range_min_c         real,
    range_max_c         real,
    stability_budget_s  bigint CHECK (stability_budget_s >= 0),
    activation_energy_kj_mol real CHECK (activation_energy_kj_mol > 0),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, gtin),
    CHECK (range_min_c IS NULL OR range_max_c IS NULL OR range_min_c < range_max_c)
);

CREATE TABLE sites (
    org_id      smallint NOT NULL REFERENCES organizations,
    gln         char(13) NOT NULL CHECK (gln ~ '^[0-9]{13}$'),
    name        text NOT NULL,
    address     text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, gln)
);

-- Serial numbers are kept as the ERP lists them: single serials or ranges "S0001..S0400".
ALTER TABLE lots
    ADD COLUMN quantity integer CHECK (quantity >= 0),
    ADD COLUMN serials text[],
    ADD COLUMN updated_at timestamptz;

ALTER TABLE shipments
    ADD COLUMN carrier text,
    ADD COLUMN mode text CHECK (mode IN ('road', 'air', 'sea', 'rail', 'courier', 'multimodal')),
    ADD COLUMN origin_gln char(13) CHECK (origin_gln ~ '^[0-9]{13}$'),
    ADD COLUMN destination_gln char(13) CHECK (destination_gln ~ '^[0-9]{13}$'),
    ADD COLUMN planned_departure timestamptz,
    ADD COLUMN planned_arrival timestamptz,
    ADD COLUMN updated_at timestamptz;

CREATE TABLE imports (
    id          bigserial PRIMARY KEY,
    org_id      smallint NOT NULL REFERENCES organizations,
    kind        text NOT NULL CHECK (kind IN ('products', 'lots', 'sites', 'shipments', 'assignments')),
    sha256      text NOT NULL,
    rows        integer NOT NULL,
    inserted    integer NOT NULL,
    updated     integer NOT NULL,
    actor       text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX imports_org ON imports (org_id, id);
