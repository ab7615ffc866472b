-- QA's disposition of a lot (release, quarantine, reject): one row per decision, never edited
-- (the application role may only insert; storage/roles.py), each signed under 21 CFR Part 11.
-- The lot's state is its latest decision; a lot with none is pending.
CREATE TABLE lot_dispositions (
    id          bigserial PRIMARY KEY,
    org_id      smallint NOT NULL,
    gtin        char(14) NOT NULL,
    lot         text NOT NULL,
    state       text NOT NULL CHECK (state IN ('release', 'quarantine', 'reject')),
    previous    text CHECK (previous IN ('release', 'quarantine', 'reject')),
    comment     text NOT NULL CHECK (length(btrim(comment)) > 0),
    decided_by  text NOT NULL,
    decided_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    FOREIGN KEY (org_id, gtin, lot) REFERENCES lots
);
CREATE INDEX lot_dispositions_lot ON lot_dispositions (org_id, gtin, lot, id);
