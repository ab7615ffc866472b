-- Outbound to the ERP: the connections each organization configures, the events the platform owes
-- the ERP, and one delivery per (event, connection) with its state, like the notification outbox.
--
-- Events are written by triggers in the transaction of the change that causes them (an alert
-- opened, acknowledged or closed; a final excursion bundle or a completed shipment's bundle
-- recorded; a recall opened), so a change that commits has its deliveries and a change that rolls
-- back has none. The worker is woken by NOTIFY erp_outbox and polls as well.

-- The ERP's own reference of a shipment (the Odoo picking's name, the ERPNext Delivery Note);
-- without one the shipment id is used.
ALTER TABLE shipments ADD COLUMN erp_ref text
    CHECK (length(erp_ref) BETWEEN 1 AND 140 AND erp_ref !~ '[\x01-\x1f\x7f-\x9f]');

CREATE TABLE erp_connections (
    org_id          smallint NOT NULL REFERENCES organizations,
    id              text NOT NULL CHECK (id ~ '^[A-Za-z0-9_.-]{1,48}$'),
    kind            text NOT NULL CHECK (kind IN ('webhook', 'odoo', 'erpnext')),
    url             text NOT NULL,
    -- Non-secret settings: Odoo's database and login, ERPNext's API key.
    options         jsonb NOT NULL DEFAULT '{}',
    -- The secret (webhook signing secret, Odoo password or API key, ERPNext API secret),
    -- encrypted with AES-GCM under a key derived from SECRET_KEY; never returned by the API.
    secret_sealed   bytea NOT NULL,
    events          text[] NOT NULL,
    enabled         boolean NOT NULL DEFAULT true,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, id)
);
CREATE INDEX erp_connections_enabled ON erp_connections (org_id) WHERE enabled;

CREATE TABLE erp_events (
    id              bigserial PRIMARY KEY,
    org_id          smallint NOT NULL REFERENCES organizations,
    kind            text NOT NULL CHECK (kind IN ('alert.opened', 'alert.acknowledged', 'alert.closed',
                        'excursion.closed', 'shipment.completed', 'recall.opened')),
    alert_id        bigint REFERENCES alerts ON DELETE CASCADE,
    shipment_key    integer REFERENCES shipments ON DELETE CASCADE,
    evidence_id     bigint REFERENCES evidence_records ON DELETE CASCADE,
    recall_id       bigint REFERENCES recalls ON DELETE CASCADE,
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- States: pending (due at next_attempt_at), sending (handed to the adapter; a crash leaves it so,
-- and it is taken again once next_attempt_at, the lease, has passed), delivered, failed (final).
CREATE TABLE erp_deliveries (
    id              bigserial PRIMARY KEY,
    org_id          smallint NOT NULL REFERENCES organizations,
    event_id        bigint NOT NULL REFERENCES erp_events ON DELETE CASCADE,
    connection_id   text NOT NULL,
    idempotency_key text NOT NULL UNIQUE,
    state           text NOT NULL DEFAULT 'pending'
                        CHECK (state IN ('pending', 'sending', 'delivered', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    remote_ref      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    FOREIGN KEY (org_id, connection_id) REFERENCES erp_connections ON DELETE CASCADE,
    UNIQUE (event_id, connection_id)
);
CREATE INDEX erp_deliveries_due ON erp_deliveries (next_attempt_at) WHERE state IN ('pending', 'sending');
CREATE INDEX erp_deliveries_event ON erp_deliveries (event_id);

-- One event, and a delivery for every enabled connection of the organization that takes its kind.
CREATE FUNCTION erp_enqueue(p_org smallint, p_kind text, p_alert bigint, p_shipment integer,
                            p_evidence bigint, p_recall bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    event bigint;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM erp_connections c WHERE c.org_id = p_org AND c.enabled
                   AND p_kind = ANY(c.events)) THEN
        RETURN;
    END IF;
    INSERT INTO erp_events (org_id, kind, alert_id, shipment_key, evidence_id, recall_id)
        VALUES (p_org, p_kind, p_alert, p_shipment, p_evidence, p_recall) RETURNING id INTO event;
    INSERT INTO erp_deliveries (org_id, event_id, connection_id, idempotency_key)
        SELECT p_org, event, c.id, 'erp:' || event || ':' || p_org || ':' || c.id
        FROM erp_connections c WHERE c.org_id = p_org AND c.enabled AND p_kind = ANY(c.events);
    PERFORM pg_notify('erp_outbox', event::text);
END $$;

CREATE FUNCTION erp_alert_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.shipment_key IS NULL THEN
        RETURN NULL;  -- pushed to the shipment record: an alert of no shipment has none
    END IF;
    IF TG_OP = 'INSERT' OR (NEW.state = 'open' AND OLD.state <> 'open') THEN
        PERFORM erp_enqueue(NEW.org_id, 'alert.opened', NEW.id, NEW.shipment_key, NULL, NULL);
    ELSIF NEW.state IN ('acknowledged', 'closed') AND OLD.state <> NEW.state THEN
        PERFORM erp_enqueue(NEW.org_id, 'alert.' || NEW.state, NEW.id, NEW.shipment_key, NULL, NULL);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER alerts_to_erp_opened AFTER INSERT ON alerts
    FOR EACH ROW EXECUTE FUNCTION erp_alert_changed();
CREATE TRIGGER alerts_to_erp_changed AFTER UPDATE OF state ON alerts
    FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state) EXECUTE FUNCTION erp_alert_changed();

CREATE FUNCTION erp_evidence_recorded() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM erp_enqueue(NEW.org_id,
        CASE NEW.stage WHEN 'final' THEN 'excursion.closed' ELSE 'shipment.completed' END,
        NEW.alert_id, NEW.shipment_key, NEW.id, NULL);
    RETURN NULL;
END $$;
CREATE TRIGGER evidence_to_erp AFTER INSERT ON evidence_records
    FOR EACH ROW WHEN (NEW.stage IN ('final', 'completed') AND NEW.shipment_key IS NOT NULL)
    EXECUTE FUNCTION erp_evidence_recorded();

CREATE FUNCTION erp_recall_opened() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM erp_enqueue(NEW.org_id, 'recall.opened', NULL, NULL, NULL, NEW.id);
    RETURN NULL;
END $$;
CREATE TRIGGER recalls_to_erp AFTER INSERT ON recalls
    FOR EACH ROW EXECUTE FUNCTION erp_recall_opened();
