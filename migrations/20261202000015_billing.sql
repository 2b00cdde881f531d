-- Billing: payments with allocations to invoices, refunds, adjustments, and invoices with
-- gap-free numbers, all on the journal of migration 0014.
--
-- A patient's account is two of the journal's accounts: `receivable` (what they owe on
-- charges) and `patient_credit` (money of theirs not yet applied to an invoice). Every
-- row here is INSERT-only for the server's role but an invoice's void columns; what was
-- wrong is corrected by new entries.

ALTER TABLE ledger_transactions ADD COLUMN payment_id uuid;
ALTER TABLE ledger_transactions ADD COLUMN invoice_id uuid;

CREATE TABLE payments (
    clinic_id      uuid        NOT NULL REFERENCES clinics (id),
    id             uuid        NOT NULL,
    patient_id     uuid        NOT NULL,
    amount_cents   bigint      NOT NULL CHECK (amount_cents BETWEEN 1 AND 1000000000000),
    method         text        NOT NULL CHECK (method IN ('cash', 'card', 'bank_transfer', 'check')),
    received_at    timestamptz NOT NULL DEFAULT now(),
    reference      text        CHECK (length(reference) <= 200),
    transaction_id uuid        NOT NULL,
    created_by     uuid        NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (clinic_id, id),
    FOREIGN KEY (clinic_id, patient_id) REFERENCES patients (clinic_id, id),
    FOREIGN KEY (clinic_id, transaction_id) REFERENCES ledger_transactions (clinic_id, id),
    FOREIGN KEY (clinic_id, created_by) REFERENCES users (clinic_id, id)
);
CREATE INDEX payments_patient ON payments (clinic_id, patient_id, received_at, id);
CREATE INDEX payments_received ON payments (clinic_id, received_at, id);
ALTER TABLE ledger_transactions ADD CONSTRAINT ledger_transactions_payment_fk
    FOREIGN KEY (clinic_id, payment_id) REFERENCES payments (clinic_id, id) DEFERRABLE INITIALLY DEFERRED;

-- Invoice numbers run per clinic and year without gaps: the counter row is locked by the
-- transaction that issues the invoice, so a rolled-back issue gives its number back.
CREATE TABLE invoice_counters (
    clinic_id uuid    NOT NULL REFERENCES clinics (id),
    year      integer NOT NULL,
    last      integer NOT NULL,
    PRIMARY KEY (clinic_id, year)
);

CREATE TABLE invoices (
    clinic_id   uuid        NOT NULL REFERENCES clinics (id),
    id          uuid        NOT NULL,
    year        integer     NOT NULL,
    seq         integer     NOT NULL CHECK (seq >= 1),
    number      text        GENERATED ALWAYS AS (year::text || '-' || lpad(seq::text, 6, '0')) STORED,
    patient_id  uuid        NOT NULL,
    issued_at   timestamptz NOT NULL DEFAULT now(),
    created_by  uuid        NOT NULL,
    voided_at   timestamptz,
    voided_by   uuid,
    void_reason text        CHECK (length(void_reason) <= 500),
    PRIMARY KEY (clinic_id, id),
    CONSTRAINT invoices_number_key UNIQUE (clinic_id, year, seq),
    FOREIGN KEY (clinic_id, patient_id) REFERENCES patients (clinic_id, id),
    FOREIGN KEY (clinic_id, created_by) REFERENCES users (clinic_id, id),
    FOREIGN KEY (clinic_id, voided_by) REFERENCES users (clinic_id, id),
    CHECK ((voided_at IS NULL) = (voided_by IS NULL))
);
CREATE INDEX invoices_patient ON invoices (clinic_id, patient_id, issued_at, id);
CREATE INDEX invoices_issued ON invoices (clinic_id, issued_at, id);
ALTER TABLE ledger_transactions ADD CONSTRAINT ledger_transactions_invoice_fk
    FOREIGN KEY (clinic_id, invoice_id) REFERENCES invoices (clinic_id, id);

-- An invoice's lines, copied from its procedures when issued. `live` turns false when the
-- invoice is voided, which frees the procedure for another invoice.
CREATE TABLE invoice_lines (
    clinic_id    uuid     NOT NULL,
    invoice_id   uuid     NOT NULL,
    line_no      integer  NOT NULL CHECK (line_no >= 1),
    procedure_id uuid     NOT NULL,
    code         text     NOT NULL,
    description  text     NOT NULL,
    tooth        smallint,
    surfaces     text[]   NOT NULL DEFAULT '{}',
    fee_cents    bigint   NOT NULL CHECK (fee_cents >= 0),
    live         boolean  NOT NULL DEFAULT true,
    PRIMARY KEY (clinic_id, invoice_id, line_no),
    FOREIGN KEY (clinic_id, invoice_id) REFERENCES invoices (clinic_id, id),
    FOREIGN KEY (clinic_id, procedure_id) REFERENCES procedures (clinic_id, id)
);
-- A procedure is on at most one live invoice, whatever races.
CREATE UNIQUE INDEX invoice_lines_one_live ON invoice_lines (clinic_id, procedure_id) WHERE live;

-- Money applied to an invoice: from a payment as it is received, or from the patient's
-- credit later; a refund of applied money takes it back with a negative amount.
CREATE TABLE allocations (
    clinic_id      uuid        NOT NULL,
    id             uuid        NOT NULL,
    invoice_id     uuid        NOT NULL,
    payment_id     uuid,
    transaction_id uuid        NOT NULL,
    amount_cents   bigint      NOT NULL CHECK (amount_cents <> 0),
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (clinic_id, id),
    FOREIGN KEY (clinic_id, invoice_id) REFERENCES invoices (clinic_id, id),
    FOREIGN KEY (clinic_id, payment_id) REFERENCES payments (clinic_id, id),
    FOREIGN KEY (clinic_id, transaction_id) REFERENCES ledger_transactions (clinic_id, id)
);
CREATE INDEX allocations_invoice ON allocations (clinic_id, invoice_id);
CREATE INDEX allocations_payment ON allocations (clinic_id, payment_id);

CREATE TABLE refunds (
    clinic_id      uuid        NOT NULL,
    id             uuid        NOT NULL,
    payment_id     uuid        NOT NULL,
    amount_cents   bigint      NOT NULL CHECK (amount_cents BETWEEN 1 AND 1000000000000),
    reason         text        NOT NULL CHECK (length(reason) BETWEEN 1 AND 500),
    transaction_id uuid        NOT NULL,
    created_by     uuid        NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (clinic_id, id),
    FOREIGN KEY (clinic_id, payment_id) REFERENCES payments (clinic_id, id),
    FOREIGN KEY (clinic_id, transaction_id) REFERENCES ledger_transactions (clinic_id, id),
    FOREIGN KEY (clinic_id, created_by) REFERENCES users (clinic_id, id)
);
CREATE INDEX refunds_payment ON refunds (clinic_id, payment_id);

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['payments', 'invoice_counters', 'invoices', 'invoice_lines',
                             'allocations', 'refunds'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY clinic_isolation ON %I
            USING (clinic_id = (SELECT app_clinic_id()))
            WITH CHECK (clinic_id = (SELECT app_clinic_id()))', t);
    END LOOP;
END
$$;
GRANT SELECT, INSERT ON payments, allocations, refunds TO molar_app;
GRANT SELECT, INSERT, UPDATE ON invoice_counters TO molar_app;
GRANT SELECT, INSERT ON invoices, invoice_lines TO molar_app;
-- Voiding is the one change: the void columns, once; and the lines leave the live set.
GRANT UPDATE (voided_at, voided_by, void_reason) ON invoices TO molar_app;
GRANT UPDATE (live) ON invoice_lines TO molar_app;

CREATE FUNCTION invoices_void_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.voided_at IS NOT NULL THEN
        RAISE EXCEPTION 'invoice % is already void', OLD.id USING ERRCODE = 'check_violation',
            CONSTRAINT = 'invoices_void_once';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER invoices_void_once BEFORE UPDATE ON invoices
    FOR EACH ROW EXECUTE FUNCTION invoices_void_once();

CREATE FUNCTION invoice_lines_leave_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT OLD.live OR NEW.live THEN
        RAISE EXCEPTION 'an invoice line only leaves the live set, once'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'invoice_lines_leave_once';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER invoice_lines_leave_once BEFORE UPDATE ON invoice_lines
    FOR EACH ROW EXECUTE FUNCTION invoice_lines_leave_once();

-- Payments, allocations and refunds never change.
CREATE TRIGGER payments_append_only BEFORE UPDATE OR DELETE ON payments
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER allocations_append_only BEFORE UPDATE OR DELETE ON allocations
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER refunds_append_only BEFORE UPDATE OR DELETE ON refunds
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();

-- A patient's account, read through their lines.
CREATE INDEX ledger_lines_transaction_patient ON ledger_lines (clinic_id, transaction_id)
    WHERE patient_id IS NOT NULL;

-- Card payments through Stripe. The server records each PaymentIntent it creates; the
-- webhook finds the clinic from that record (through a definer function: the webhook has
-- no user and no clinic), never from the payload alone. An intent is paid once (its
-- `payment_id` is set once), an event is handled once (its id is unique), a Stripe refund
-- is recorded once (its id is unique).
CREATE TABLE stripe_intents (
    clinic_id    uuid        NOT NULL REFERENCES clinics (id),
    id           uuid        NOT NULL,
    intent_id    text        NOT NULL CHECK (length(intent_id) BETWEEN 1 AND 255),
    patient_id   uuid        NOT NULL,
    invoice_id   uuid,
    amount_cents bigint      NOT NULL CHECK (amount_cents BETWEEN 1 AND 1000000000000),
    currency     char(3)     NOT NULL,
    payment_id   uuid,
    created_by   uuid        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (clinic_id, id),
    CONSTRAINT stripe_intents_intent_key UNIQUE (intent_id),
    FOREIGN KEY (clinic_id, patient_id) REFERENCES patients (clinic_id, id),
    FOREIGN KEY (clinic_id, invoice_id) REFERENCES invoices (clinic_id, id),
    FOREIGN KEY (clinic_id, payment_id) REFERENCES payments (clinic_id, id),
    FOREIGN KEY (clinic_id, created_by) REFERENCES users (clinic_id, id)
);
CREATE UNIQUE INDEX stripe_intents_payment ON stripe_intents (clinic_id, payment_id);

CREATE TABLE stripe_events (
    clinic_id   uuid        NOT NULL REFERENCES clinics (id),
    event_id    text        NOT NULL CHECK (length(event_id) BETWEEN 1 AND 255),
    type        text        NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (clinic_id, event_id),
    CONSTRAINT stripe_events_once UNIQUE (event_id)
);

ALTER TABLE refunds ADD COLUMN stripe_refund_id text;
ALTER TABLE refunds ADD CONSTRAINT refunds_stripe_once UNIQUE (stripe_refund_id);

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['stripe_intents', 'stripe_events'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY clinic_isolation ON %I
            USING (clinic_id = (SELECT app_clinic_id()))
            WITH CHECK (clinic_id = (SELECT app_clinic_id()))', t);
    END LOOP;
END
$$;
GRANT SELECT, INSERT ON stripe_intents, stripe_events TO molar_app;
GRANT UPDATE (payment_id) ON stripe_intents TO molar_app;
CREATE FUNCTION stripe_intents_paid_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.payment_id IS NOT NULL THEN
        RAISE EXCEPTION 'payment intent % is recorded already', OLD.intent_id
            USING ERRCODE = 'check_violation', CONSTRAINT = 'stripe_intents_paid_once';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER stripe_intents_paid_once BEFORE UPDATE ON stripe_intents
    FOR EACH ROW EXECUTE FUNCTION stripe_intents_paid_once();

-- The webhook's one cross-clinic lookup: the clinic of an intent this server created.
GRANT CREATE ON SCHEMA public TO molar_auth;
CREATE POLICY stripe_webhook ON stripe_intents FOR SELECT TO molar_auth USING (true);
GRANT SELECT ON stripe_intents TO molar_auth;
CREATE FUNCTION stripe_intent_clinic(p_intent text) RETURNS uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT clinic_id FROM stripe_intents WHERE intent_id = p_intent
$$;
ALTER FUNCTION stripe_intent_clinic(text) OWNER TO molar_auth;
REVOKE ALL ON FUNCTION stripe_intent_clinic(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION stripe_intent_clinic(text) TO molar_app;
REVOKE CREATE ON SCHEMA public FROM molar_auth;
