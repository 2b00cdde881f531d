-- Treatment: the clinic's procedure catalogue, charted procedures, the ledger's journal
-- (charges and their reversals for now), treatment plans with versions frozen at
-- presentation and at the patient's decision, and recall types.
--
-- What must never change after the fact is enforced here, not only in code: the journal
-- and the frozen plan versions are INSERT-only for the server's role (and a trigger
-- refuses UPDATE and DELETE of the journal from any role); a completed procedure is
-- locked except for being reversed, once.

-- The catalogue and fee schedule. No licensed code content ships with Molar: each clinic
-- enters or imports its own.
CREATE TABLE procedure_codes (
    clinic_id         uuid        NOT NULL REFERENCES clinics (id),
    id                uuid        NOT NULL,
    code              text        NOT NULL CHECK (length(code) BETWEEN 1 AND 20),
    system            text        NOT NULL DEFAULT 'local' CHECK (length(system) BETWEEN 1 AND 20),
    description       text        NOT NULL CHECK (length(description) BETWEEN 1 AND 500),
    category          text        CHECK (length(category) <= 100),
    fee_cents         bigint      NOT NULL CHECK (fee_cents BETWEEN 0 AND 100000000000),
    default_minutes   integer     CHECK (default_minutes BETWEEN 1 AND 1440),
    requires_tooth    boolean     NOT NULL DEFAULT false,
    requires_surfaces boolean     NOT NULL DEFAULT false,
    active            boolean     NOT NULL DEFAULT true,
    version           integer     NOT NULL DEFAULT 1,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (clinic_id, id),
    CONSTRAINT procedure_codes_code_key UNIQUE (clinic_id, code),
    CONSTRAINT procedure_codes_surfaces_need_tooth CHECK (requires_tooth OR NOT requires_surfaces)
);
ALTER TABLE procedure_codes ENABLE ROW LEVEL SECURITY;
ALTER TABLE procedure_codes FORCE ROW LEVEL SECURITY;
CREATE POLICY clinic_isolation ON procedure_codes
    USING (clinic_id = (SELECT app_clinic_id()))
    WITH CHECK (clinic_id = (SELECT app_clinic_id()));
GRANT SELECT, INSERT, UPDATE ON procedure_codes TO molar_app;

-- Charted procedures. The tooth is stored in FDI notation, as on the chart.
CREATE TABLE procedures (
    clinic_id         uuid        NOT NULL,
    id                uuid        NOT NULL,
    patient_id        uuid        NOT NULL,
    procedure_code_id uuid        NOT NULL,
    tooth             smallint    CHECK (tooth BETWEEN 11 AND 85),
    surfaces          text[]      NOT NULL DEFAULT '{}',
    provider_id       uuid,
    status            text        NOT NULL CHECK (status IN
                          ('planned', 'completed', 'existing', 'referred', 'condition')),
    fee_cents         bigint      NOT NULL CHECK (fee_cents BETWEEN 0 AND 100000000000),
    appointment_id    uuid,
    completed_on      date,
    note              text        CHECK (length(note) <= 2000),
    reversed_at       timestamptz,
    reversed_by       uuid,
    reversal_reason   text        CHECK (length(reversal_reason) <= 500),
    version           integer     NOT NULL DEFAULT 1,
    created_by        uuid        NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (clinic_id, id),
    CONSTRAINT procedures_patient_fk FOREIGN KEY (clinic_id, patient_id) REFERENCES patients (clinic_id, id),
    CONSTRAINT procedures_code_fk FOREIGN KEY (clinic_id, procedure_code_id)
        REFERENCES procedure_codes (clinic_id, id),
    CONSTRAINT procedures_provider_fk FOREIGN KEY (clinic_id, provider_id) REFERENCES users (clinic_id, id),
    CONSTRAINT procedures_appointment_fk FOREIGN KEY (clinic_id, appointment_id)
        REFERENCES appointments (clinic_id, id),
    FOREIGN KEY (clinic_id, created_by) REFERENCES users (clinic_id, id),
    FOREIGN KEY (clinic_id, reversed_by) REFERENCES users (clinic_id, id),
    CONSTRAINT procedures_completed_has_date CHECK ((status = 'completed') = (completed_on IS NOT NULL)),
    CONSTRAINT procedures_completed_has_provider CHECK (status <> 'completed' OR provider_id IS NOT NULL),
    CONSTRAINT procedures_only_completed_reverse CHECK (reversed_at IS NULL OR status = 'completed'),
    CHECK ((reversed_at IS NULL) = (reversed_by IS NULL) AND (reversed_at IS NULL) = (reversal_reason IS NULL))
);
CREATE INDEX procedures_patient ON procedures (clinic_id, patient_id, created_at, id);
-- The recall list: each patient's last completed procedure of a code.
CREATE INDEX procedures_done ON procedures (clinic_id, procedure_code_id, patient_id, completed_on)
    WHERE status = 'completed' AND reversed_at IS NULL;
ALTER TABLE procedures ENABLE ROW LEVEL SECURITY;
ALTER TABLE procedures FORCE ROW LEVEL SECURITY;
CREATE POLICY clinic_isolation ON procedures
    USING (clinic_id = (SELECT app_clinic_id()))
    WITH CHECK (clinic_id = (SELECT app_clinic_id()));
GRANT SELECT, INSERT, UPDATE ON procedures TO molar_app;

-- A completed procedure is locked: the one change left is its reversal, once.
CREATE FUNCTION procedures_completed_locked() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status = 'completed' THEN
        IF OLD.reversed_at IS NOT NULL THEN
            RAISE EXCEPTION 'procedure % is already reversed', OLD.id USING ERRCODE = 'check_violation',
                CONSTRAINT = 'procedures_reversed_once';
        END IF;
        IF NEW.reversed_at IS NULL
           OR (NEW.patient_id, NEW.procedure_code_id, NEW.tooth, NEW.surfaces, NEW.provider_id,
               NEW.status, NEW.fee_cents, NEW.appointment_id, NEW.completed_on, NEW.note, NEW.created_by,
               NEW.created_at)
              IS DISTINCT FROM
              (OLD.patient_id, OLD.procedure_code_id, OLD.tooth, OLD.surfaces, OLD.provider_id,
               OLD.status, OLD.fee_cents, OLD.appointment_id, OLD.completed_on, OLD.note, OLD.created_by,
               OLD.created_at) THEN
            RAISE EXCEPTION 'procedure % is completed and locked', OLD.id USING ERRCODE = 'check_violation',
                CONSTRAINT = 'procedures_completed_locked';
        END IF;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER procedures_completed_locked BEFORE UPDATE ON procedures
    FOR EACH ROW EXECUTE FUNCTION procedures_completed_locked();

-- The journal. A transaction groups lines on accounts whose amounts sum to zero (debits
-- positive, credits negative); a patient's ledger is their receivable lines, so a
-- positive amount there raises what the patient owes. Balances are sums, never stored.
CREATE TABLE ledger_transactions (
    clinic_id    uuid        NOT NULL REFERENCES clinics (id),
    id           uuid        NOT NULL,
    kind         text        NOT NULL CHECK (kind IN
                     ('charge', 'payment', 'adjustment', 'refund', 'reversal', 'credit_applied')),
    patient_id   uuid        NOT NULL,
    posted_at    timestamptz NOT NULL DEFAULT now(),
    procedure_id uuid,
    reverses_id  uuid,
    memo         text        CHECK (length(memo) <= 500),
    created_by   uuid,
    PRIMARY KEY (clinic_id, id),
    FOREIGN KEY (clinic_id, patient_id) REFERENCES patients (clinic_id, id),
    FOREIGN KEY (clinic_id, procedure_id) REFERENCES procedures (clinic_id, id),
    FOREIGN KEY (clinic_id, reverses_id) REFERENCES ledger_transactions (clinic_id, id),
    FOREIGN KEY (clinic_id, created_by) REFERENCES users (clinic_id, id),
    CONSTRAINT ledger_reversal_names_its_entry CHECK ((kind = 'reversal') = (reverses_id IS NOT NULL)),
    -- An entry is reversed at most once.
    CONSTRAINT ledger_reversed_once UNIQUE (clinic_id, reverses_id)
);
-- A procedure is charged at most once, whatever races.
CREATE UNIQUE INDEX ledger_charge_once ON ledger_transactions (clinic_id, procedure_id)
    WHERE kind = 'charge';
CREATE INDEX ledger_transactions_posted ON ledger_transactions (clinic_id, posted_at);
CREATE INDEX ledger_transactions_patient ON ledger_transactions (clinic_id, patient_id, posted_at, id);

CREATE TABLE ledger_lines (
    clinic_id      uuid     NOT NULL,
    transaction_id uuid     NOT NULL,
    line_no        smallint NOT NULL CHECK (line_no >= 1),
    account        text     NOT NULL CHECK (account IN
                       ('receivable', 'revenue', 'patient_credit', 'adjustments',
                        'cash', 'card', 'bank_transfer', 'check', 'stripe_clearing')),
    patient_id     uuid,
    amount_cents   bigint   NOT NULL CHECK (amount_cents <> 0),
    PRIMARY KEY (clinic_id, transaction_id, line_no),
    FOREIGN KEY (clinic_id, transaction_id) REFERENCES ledger_transactions (clinic_id, id),
    FOREIGN KEY (clinic_id, patient_id) REFERENCES patients (clinic_id, id),
    -- A patient's own accounts name the patient; the clinic's accounts do not.
    CONSTRAINT ledger_lines_patient_accounts CHECK (
        (account IN ('receivable', 'patient_credit')) = (patient_id IS NOT NULL))
);
CREATE INDEX ledger_lines_patient ON ledger_lines (clinic_id, patient_id, account)
    WHERE patient_id IS NOT NULL;

ALTER TABLE ledger_transactions ENABLE ROW LEVEL SECURITY;
ALTER TABLE ledger_transactions FORCE ROW LEVEL SECURITY;
CREATE POLICY clinic_isolation ON ledger_transactions
    USING (clinic_id = (SELECT app_clinic_id()))
    WITH CHECK (clinic_id = (SELECT app_clinic_id()));
ALTER TABLE ledger_lines ENABLE ROW LEVEL SECURITY;
ALTER TABLE ledger_lines FORCE ROW LEVEL SECURITY;
CREATE POLICY clinic_isolation ON ledger_lines
    USING (clinic_id = (SELECT app_clinic_id()))
    WITH CHECK (clinic_id = (SELECT app_clinic_id()));
-- Append-only: the server inserts and reads; a mistake is corrected by a reversal.
GRANT SELECT, INSERT ON ledger_transactions, ledger_lines TO molar_app;

CREATE FUNCTION ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the ledger is append-only: correct an entry by reversing it'
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER ledger_transactions_append_only BEFORE UPDATE OR DELETE ON ledger_transactions
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER ledger_lines_append_only BEFORE UPDATE OR DELETE ON ledger_lines
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();

-- Every transaction balances, checked at commit (so its lines can be inserted one by
-- one): at least two lines, summing to zero.
CREATE FUNCTION ledger_transaction_balances() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    tx uuid;
    n integer;
    total numeric;
BEGIN
    -- Each branch names only its own table's column: NEW.transaction_id does not exist
    -- on a ledger_transactions row, so it cannot stand in one expression with NEW.id.
    IF TG_TABLE_NAME = 'ledger_lines' THEN
        tx := NEW.transaction_id;
    ELSE
        tx := NEW.id;
    END IF;
    SELECT count(*), coalesce(sum(amount_cents), 0) INTO n, total
    FROM ledger_lines WHERE clinic_id = NEW.clinic_id AND transaction_id = tx;
    IF n < 2 OR total <> 0 THEN
        RAISE EXCEPTION 'ledger transaction % does not balance (% lines, sum %)', tx, n, total
            USING ERRCODE = 'check_violation', CONSTRAINT = 'ledger_transaction_balances';
    END IF;
    RETURN NULL;
END
$$;
CREATE CONSTRAINT TRIGGER ledger_transaction_balances AFTER INSERT ON ledger_transactions
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ledger_transaction_balances();
CREATE CONSTRAINT TRIGGER ledger_lines_balance AFTER INSERT ON ledger_lines
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ledger_transaction_balances();

-- The currency cannot change once a financial record exists.
CREATE FUNCTION clinics_currency_fixed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.currency IS DISTINCT FROM OLD.currency
       AND EXISTS (SELECT 1 FROM ledger_transactions WHERE clinic_id = OLD.id) THEN
        RAISE EXCEPTION 'the clinic has financial records in %', OLD.currency
            USING ERRCODE = 'check_violation', CONSTRAINT = 'clinics_currency_fixed';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER clinics_currency_fixed BEFORE UPDATE OF currency ON clinics
    FOR EACH ROW EXECUTE FUNCTION clinics_currency_fixed();

-- Treatment plans. The live plan and its items are edited while a draft; presenting
-- freezes version n (its items and fees) into INSERT-only tables, and the patient's
-- decision on version n is one more INSERT-only row.
CREATE TABLE treatment_plans (
    clinic_id   uuid        NOT NULL,
    id          uuid        NOT NULL,
    patient_id  uuid        NOT NULL,
    title       text        NOT NULL CHECK (length(title) BETWEEN 1 AND 200),
    status      text        NOT NULL DEFAULT 'draft' CHECK (status IN
                    ('draft', 'presented', 'accepted', 'partially_accepted', 'declined')),
    version     integer     NOT NULL DEFAULT 1 CHECK (version >= 1),
    revision    integer     NOT NULL DEFAULT 1,
    created_by  uuid        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (clinic_id, id),
    FOREIGN KEY (clinic_id, patient_id) REFERENCES patients (clinic_id, id),
    FOREIGN KEY (clinic_id, created_by) REFERENCES users (clinic_id, id)
);
CREATE INDEX treatment_plans_patient ON treatment_plans (clinic_id, patient_id, created_at, id);

CREATE TABLE treatment_plan_items (
    clinic_id    uuid    NOT NULL,
    id           uuid    NOT NULL,
    plan_id      uuid    NOT NULL,
    procedure_id uuid    NOT NULL,
    position     integer NOT NULL,
    phase        integer NOT NULL DEFAULT 1 CHECK (phase BETWEEN 1 AND 20),
    note         text    CHECK (length(note) <= 500),
    fee_cents    bigint  CHECK (fee_cents BETWEEN 0 AND 100000000000),
    PRIMARY KEY (clinic_id, id),
    FOREIGN KEY (clinic_id, plan_id) REFERENCES treatment_plans (clinic_id, id),
    FOREIGN KEY (clinic_id, procedure_id) REFERENCES procedures (clinic_id, id),
    CONSTRAINT treatment_plan_items_once UNIQUE (clinic_id, plan_id, procedure_id)
);

CREATE TABLE treatment_plan_versions (
    clinic_id    uuid        NOT NULL,
    plan_id      uuid        NOT NULL,
    version      integer     NOT NULL,
    title        text        NOT NULL,
    presented_at timestamptz NOT NULL DEFAULT now(),
    presented_by uuid        NOT NULL,
    total_cents  bigint      NOT NULL,
    PRIMARY KEY (clinic_id, plan_id, version),
    FOREIGN KEY (clinic_id, plan_id) REFERENCES treatment_plans (clinic_id, id),
    FOREIGN KEY (clinic_id, presented_by) REFERENCES users (clinic_id, id)
);

CREATE TABLE treatment_plan_version_items (
    clinic_id       uuid    NOT NULL,
    plan_id         uuid    NOT NULL,
    version         integer NOT NULL,
    item_id         uuid    NOT NULL,
    position        integer NOT NULL,
    procedure_id    uuid    NOT NULL,
    procedure_code  text    NOT NULL,
    description     text    NOT NULL,
    tooth           smallint,
    surfaces        text[]  NOT NULL,
    phase           integer NOT NULL,
    note            text,
    fee_cents       bigint  NOT NULL,
    PRIMARY KEY (clinic_id, plan_id, version, item_id),
    FOREIGN KEY (clinic_id, plan_id, version) REFERENCES treatment_plan_versions (clinic_id, plan_id, version)
);

-- The patient's decision on a presented version: one per version, never changed.
CREATE TABLE treatment_plan_decisions (
    clinic_id         uuid        NOT NULL,
    plan_id           uuid        NOT NULL,
    version           integer     NOT NULL,
    decision          text        NOT NULL CHECK (decision IN ('accepted', 'partially_accepted', 'declined')),
    accepted_item_ids uuid[]      NOT NULL DEFAULT '{}',
    accepted_cents    bigint      NOT NULL DEFAULT 0,
    signed_by         text        CHECK (length(signed_by) BETWEEN 1 AND 200),
    signature_png     bytea       CHECK (octet_length(signature_png) <= 262144),
    reason            text        CHECK (length(reason) <= 500),
    decided_at        timestamptz NOT NULL DEFAULT now(),
    recorded_by       uuid        NOT NULL,
    PRIMARY KEY (clinic_id, plan_id, version),
    FOREIGN KEY (clinic_id, plan_id, version) REFERENCES treatment_plan_versions (clinic_id, plan_id, version),
    FOREIGN KEY (clinic_id, recorded_by) REFERENCES users (clinic_id, id),
    CHECK ((decision = 'declined') = (signed_by IS NULL))
);

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['treatment_plans', 'treatment_plan_items', 'treatment_plan_versions',
                             'treatment_plan_version_items', 'treatment_plan_decisions'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY clinic_isolation ON %I
            USING (clinic_id = (SELECT app_clinic_id()))
            WITH CHECK (clinic_id = (SELECT app_clinic_id()))', t);
    END LOOP;
END
$$;
GRANT SELECT, INSERT, UPDATE ON treatment_plans TO molar_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON treatment_plan_items TO molar_app;
-- Frozen: the server's role can add versions and decisions, never change them.
GRANT SELECT, INSERT ON treatment_plan_versions, treatment_plan_version_items,
    treatment_plan_decisions TO molar_app;

-- Recall types: a check-up interval and the procedures that satisfy it.
CREATE TABLE recall_types (
    clinic_id       uuid        NOT NULL REFERENCES clinics (id),
    id              uuid        NOT NULL,
    name            text        NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    interval_months integer     NOT NULL CHECK (interval_months BETWEEN 1 AND 120),
    active          boolean     NOT NULL DEFAULT true,
    version         integer     NOT NULL DEFAULT 1,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (clinic_id, id),
    CONSTRAINT recall_types_name_key UNIQUE (clinic_id, name)
);
CREATE TABLE recall_type_triggers (
    clinic_id         uuid NOT NULL,
    recall_type_id    uuid NOT NULL,
    procedure_code_id uuid NOT NULL,
    PRIMARY KEY (clinic_id, recall_type_id, procedure_code_id),
    FOREIGN KEY (clinic_id, recall_type_id) REFERENCES recall_types (clinic_id, id),
    FOREIGN KEY (clinic_id, procedure_code_id) REFERENCES procedure_codes (clinic_id, id)
);
ALTER TABLE recall_types ENABLE ROW LEVEL SECURITY;
ALTER TABLE recall_types FORCE ROW LEVEL SECURITY;
CREATE POLICY clinic_isolation ON recall_types
    USING (clinic_id = (SELECT app_clinic_id()))
    WITH CHECK (clinic_id = (SELECT app_clinic_id()));
ALTER TABLE recall_type_triggers ENABLE ROW LEVEL SECURITY;
ALTER TABLE recall_type_triggers FORCE ROW LEVEL SECURITY;
CREATE POLICY clinic_isolation ON recall_type_triggers
    USING (clinic_id = (SELECT app_clinic_id()))
    WITH CHECK (clinic_id = (SELECT app_clinic_id()));
GRANT SELECT, INSERT, UPDATE ON recall_types TO molar_app;
GRANT SELECT, INSERT, DELETE ON recall_type_triggers TO molar_app;

-- The day sheet counts the patients registered in a day.
CREATE INDEX patients_created ON patients (clinic_id, created_at);
