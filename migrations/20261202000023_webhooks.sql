-- Webhooks: a clinic subscribes an HTTPS address to event types; each event is written to
-- the outbox in the transaction that makes the change (one row per matching subscription),
-- and the outbox worker of some instance delivers it, signed, with back-off for a day.

CREATE TABLE webhook_subscriptions (
    clinic_id  uuid        NOT NULL REFERENCES clinics (id),
    id         uuid        NOT NULL,
    url        text        NOT NULL CHECK (length(url) BETWEEN 8 AND 2000),
    -- Event types (`patient.created`) or families (`patient.*`).
    events     text[]      NOT NULL CHECK (cardinality(events) BETWEEN 1 AND 32),
    -- The signing secret, sealed under a key derived from SECRET_KEY (bound to clinic and id).
    secret     bytea       NOT NULL,
    active     boolean     NOT NULL DEFAULT true,
    version    integer     NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (clinic_id, id)
);
ALTER TABLE webhook_subscriptions ENABLE ROW LEVEL SECURITY;
ALTER TABLE webhook_subscriptions FORCE ROW LEVEL SECURITY;
CREATE POLICY clinic_isolation ON webhook_subscriptions
    USING (clinic_id = (SELECT app_clinic_id()))
    WITH CHECK (clinic_id = (SELECT app_clinic_id()));
GRANT SELECT, INSERT, DELETE ON webhook_subscriptions TO molar_app;
GRANT UPDATE (url, events, active, version, updated_at, secret) ON webhook_subscriptions TO molar_app;

-- Every attempt, for the clinic's own log (kept with the subscription).
CREATE TABLE webhook_deliveries (
    clinic_id       uuid        NOT NULL,
    id              uuid        NOT NULL,
    subscription_id uuid        NOT NULL,
    event_id        uuid        NOT NULL,
    event_type      text        NOT NULL,
    attempt         integer     NOT NULL CHECK (attempt >= 1),
    status_code     integer,
    error           text        CHECK (length(error) <= 500),
    duration_ms     integer     NOT NULL CHECK (duration_ms >= 0),
    delivered       boolean     NOT NULL,
    at              timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (clinic_id, id),
    FOREIGN KEY (clinic_id, subscription_id) REFERENCES webhook_subscriptions (clinic_id, id)
        ON DELETE CASCADE
);
CREATE INDEX webhook_deliveries_by_subscription
    ON webhook_deliveries (clinic_id, subscription_id, id DESC);
ALTER TABLE webhook_deliveries ENABLE ROW LEVEL SECURITY;
ALTER TABLE webhook_deliveries FORCE ROW LEVEL SECURITY;
CREATE POLICY clinic_isolation ON webhook_deliveries
    USING (clinic_id = (SELECT app_clinic_id()))
    WITH CHECK (clinic_id = (SELECT app_clinic_id()));
GRANT SELECT, INSERT ON webhook_deliveries TO molar_app;

ALTER TABLE outbox DROP CONSTRAINT outbox_topic_check;
-- Stripe's incoming events are queued there too, and recorded by the worker.
ALTER TABLE outbox ADD CONSTRAINT outbox_topic_check
    CHECK (topic IN ('email', 'webhook', 'stripe'));
