-- Recall notifications: a consignee's notification is a row of the same outbox the alerts use
-- (retries, idempotency, provider callbacks), written in the transaction that opens the recall.
-- `recall_consignee_id` names whom it tells; its acknowledge link is single-use by its nonce.
ALTER TABLE notify_outbox DROP CONSTRAINT notify_outbox_kind_check;
ALTER TABLE notify_outbox ADD CONSTRAINT notify_outbox_kind_check
    CHECK (kind IN ('escalation', 'digest', 'recall'));
ALTER TABLE notify_outbox
    ADD COLUMN recall_consignee_id bigint REFERENCES recall_consignees ON DELETE CASCADE;
CREATE INDEX notify_outbox_recall ON notify_outbox (recall_consignee_id)
    WHERE recall_consignee_id IS NOT NULL;

CREATE TABLE recall_ack_nonces (
    nonce        text PRIMARY KEY,
    consignee_id bigint NOT NULL REFERENCES recall_consignees ON DELETE CASCADE,
    contact_id   text NOT NULL,
    used_at      timestamptz NOT NULL DEFAULT now()
);

-- The recall list filters by state, newest first.
CREATE INDEX recalls_org_state ON recalls (org_id, state, id);
