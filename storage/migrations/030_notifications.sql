-- Notifications: contacts, routing rules, escalation policies, the per-alert escalation plan, the
-- notification outbox and used acknowledge-link nonces. The outbox is the truth of who was told
-- what and when; its idempotency key is unique, so recomputing what is due never enqueues twice.

CREATE TABLE notify_contacts (
    org_id          smallint NOT NULL REFERENCES organizations,
    id              text NOT NULL CHECK (id ~ '^[A-Za-z0-9_.@-]{1,64}$'),
    name            text NOT NULL,
    phone           text CHECK (phone ~ '^\+[1-9][0-9]{6,14}$'),
    email           text,
    webhook_url     text,
    webhook_secret  text,
    roles           text[] NOT NULL DEFAULT '{}',
    sites           text[] NOT NULL DEFAULT '{}',
    routes          text[] NOT NULL DEFAULT '{}',
    customers       text[] NOT NULL DEFAULT '{}',
    timezone        text NOT NULL DEFAULT 'UTC',
    quiet_start     time,
    quiet_end       time,
    quiet_days      smallint[],
    may_acknowledge boolean NOT NULL DEFAULT true,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    disabled_at     timestamptz,
    PRIMARY KEY (org_id, id),
    CHECK ((quiet_start IS NULL) = (quiet_end IS NULL))
);
-- Inbound SMS replies are matched to a contact by the number they came from.
CREATE INDEX notify_contacts_phone ON notify_contacts (phone) WHERE phone IS NOT NULL;

-- Routing rules in order (the first matching rule wins per contact and channel); `body` holds
-- the match sets, the recipients, the channels and an optional local-time window.
CREATE TABLE notify_routing_rules (
    org_id      smallint NOT NULL REFERENCES organizations,
    position    integer NOT NULL,
    name        text NOT NULL,
    body        jsonb NOT NULL,
    PRIMARY KEY (org_id, position),
    UNIQUE (org_id, name)
);

-- Escalation policies, versioned: an alert keeps the version it started under (the plan below
-- holds a copy), so editing a policy never re-sends earlier tiers.
CREATE TABLE notify_policies (
    org_id      smallint NOT NULL REFERENCES organizations,
    id          text NOT NULL CHECK (id ~ '^[A-Za-z0-9_.-]{1,48}$'),
    version     integer NOT NULL CHECK (version >= 1),
    body        jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    created_by  text NOT NULL,
    PRIMARY KEY (org_id, id, version)
);

CREATE TABLE notify_default_policy (
    org_id      smallint PRIMARY KEY REFERENCES organizations,
    policy_id   text NOT NULL
);

-- One row per alert under escalation: the policy it started under and when to look again.
CREATE TABLE notify_alert_plans (
    alert_id        bigint PRIMARY KEY REFERENCES alerts ON DELETE CASCADE,
    org_id          smallint NOT NULL,
    policy_key      text NOT NULL,
    policy          jsonb NOT NULL,
    next_check_at   timestamptz,
    stopped_at      timestamptz,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL
);
CREATE INDEX notify_alert_plans_due ON notify_alert_plans (next_check_at) WHERE next_check_at IS NOT NULL;

-- The outbox. States:
--   pending   due at next_attempt_at           sending   handed to the provider, not confirmed
--   queued/sent/delivered                       accepted by the provider (callbacks advance it)
--   undelivered/failed                          final failures, visible on the alert
--   held      waiting for a digest (quiet hours, rate limit), until next_attempt_at
--   digested  folded into the digest row digest_id
--   suppressed  never sent (no address, rate limit)   cancelled  the alert stopped escalating
-- A `sending` row's next_attempt_at is the end of the grace period during which a status
-- callback may still confirm it; only after that is it sent again.
CREATE TABLE notify_outbox (
    id              bigserial PRIMARY KEY,
    org_id          smallint NOT NULL REFERENCES organizations,
    idempotency_key text NOT NULL UNIQUE,
    kind            text NOT NULL CHECK (kind IN ('escalation', 'digest')),
    alert_id        bigint REFERENCES alerts ON DELETE CASCADE,
    tier            integer,
    repeat_index    integer,
    contact_id      text,
    channel         text NOT NULL CHECK (channel IN ('sms', 'voice', 'email', 'webhook')),
    recipient       text NOT NULL,
    severity        text CHECK (severity IN ('warning', 'alarm', 'critical')),
    state           text NOT NULL CHECK (state IN ('pending', 'sending', 'queued', 'sent', 'delivered',
                        'undelivered', 'failed', 'held', 'digested', 'suppressed', 'cancelled')),
    gate_reason     text,
    attempts        integer NOT NULL DEFAULT 0,
    due_at          timestamptz NOT NULL,
    next_attempt_at timestamptz NOT NULL,
    provider_id     text,
    provider_status text,
    last_error      text,
    digest_id       bigint REFERENCES notify_outbox,
    created_at      timestamptz NOT NULL,
    sending_since   timestamptz,
    sent_at         timestamptz,
    final_at        timestamptz,
    updated_at      timestamptz NOT NULL
);
CREATE INDEX notify_outbox_due ON notify_outbox (next_attempt_at) WHERE state IN ('pending', 'sending');
CREATE INDEX notify_outbox_held ON notify_outbox (org_id, contact_id, channel, next_attempt_at)
    WHERE state = 'held';
CREATE INDEX notify_outbox_alert ON notify_outbox (alert_id, id);
CREATE INDEX notify_outbox_recent ON notify_outbox (org_id, contact_id, channel, created_at);
CREATE INDEX notify_outbox_provider ON notify_outbox (provider_id) WHERE provider_id IS NOT NULL;

-- Acknowledge links are single-use: the nonce is stored in the acknowledgement's transaction.
CREATE TABLE notify_ack_nonces (
    nonce       text PRIMARY KEY,
    alert_id    bigint NOT NULL REFERENCES alerts ON DELETE CASCADE,
    contact_id  text NOT NULL,
    used_at     timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
