-- A lot's stability budget as the rules keep it: each series' time outside its profile's
-- labelled range, the spend of every lot (the worst logger of each of its shipments, summed over
-- the shipments), and the time QA credited back with a reason (each credit is also audited).
ALTER TABLE rule_series_state ADD COLUMN outside_s double precision NOT NULL DEFAULT 0;

CREATE TABLE lot_budget_state (
    org_id      smallint NOT NULL,
    gtin        char(14) NOT NULL,
    lot         text NOT NULL,
    spent_s     double precision NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, gtin, lot),
    FOREIGN KEY (org_id, gtin, lot) REFERENCES lots
);

CREATE TABLE lot_budget_credits (
    id          bigserial PRIMARY KEY,
    org_id      smallint NOT NULL,
    gtin        char(14) NOT NULL,
    lot         text NOT NULL,
    seconds     double precision NOT NULL CHECK (seconds > 0),
    reason      text NOT NULL CHECK (length(btrim(reason)) > 0),
    alert_id    bigint REFERENCES alerts,
    credited_by text NOT NULL,
    credited_at timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (org_id, gtin, lot) REFERENCES lots
);
CREATE INDEX lot_budget_credits_lot ON lot_budget_credits (org_id, gtin, lot, id);
