-- Late data can take an excursion back: when a re-evaluation over back-filled readings no longer
-- finds an episode the rules had raised, its alert is withdrawn (superseded by late data), not
-- left open, and whoever was told of it is told again.
ALTER TABLE alerts DROP CONSTRAINT alerts_state_check;
ALTER TABLE alerts ADD CONSTRAINT alerts_state_check
    CHECK (state IN ('open', 'acknowledged', 'resolved', 'closed', 'withdrawn'));
ALTER TABLE alerts ADD COLUMN withdrawn_at timestamptz;

ALTER TABLE notify_outbox DROP CONSTRAINT notify_outbox_kind_check;
ALTER TABLE notify_outbox ADD CONSTRAINT notify_outbox_kind_check
    CHECK (kind IN ('escalation', 'digest', 'recall', 'withdrawal'));
