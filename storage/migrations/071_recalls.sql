-- Recalls: what a recall names (lots, or a logger and a window), the consignees it reaches (one per
-- shipment that carried a named lot) and what each did, and the response time as a KPI (opened
-- to every consignee acknowledged).
CREATE TABLE recalls (
    id              bigserial PRIMARY KEY,
    org_id          smallint NOT NULL REFERENCES organizations,
    state           text NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'notifying', 'closed')),
    reason          text NOT NULL CHECK (length(btrim(reason)) > 0),
    classification  text CHECK (classification IN ('I', 'II', 'III')),
    criteria        jsonb NOT NULL,
    impact          jsonb NOT NULL,
    opened_at       timestamptz NOT NULL DEFAULT now(),
    opened_by       text NOT NULL,
    all_acknowledged_at timestamptz,
    response_time_s double precision,
    closed_at       timestamptz,
    closed_by       text
);
CREATE INDEX recalls_org ON recalls (org_id, id);

CREATE TABLE recall_lots (
    recall_id   bigint NOT NULL REFERENCES recalls ON DELETE CASCADE,
    org_id      smallint NOT NULL,
    gtin        char(14) NOT NULL,
    lot         text NOT NULL,
    PRIMARY KEY (recall_id, gtin, lot),
    FOREIGN KEY (org_id, gtin, lot) REFERENCES lots
);

CREATE TABLE recall_consignees (
    id              bigserial PRIMARY KEY,
    recall_id       bigint NOT NULL REFERENCES recalls ON DELETE CASCADE,
    shipment_key    integer NOT NULL REFERENCES shipments,
    consignee       text,
    consignee_gln   char(13),
    quantity        bigint,
    notified_at     timestamptz,
    acknowledged_at timestamptz,
    acknowledged_by text,
    quarantined     bigint CHECK (quarantined >= 0),
    returned        bigint CHECK (returned >= 0),
    UNIQUE (recall_id, shipment_key)
);

