-- Scheduling: operatories, providers' working hours, and appointments that cannot
-- double-book a provider, an operatory or a patient (exclusion constraints).

CREATE TABLE operatories (
    clinic_id  uuid        NOT NULL REFERENCES clinics (id),
    id         uuid        NOT NULL,
    name       text        NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    active     boolean     NOT NULL DEFAULT true,
    version    integer     NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (clinic_id, id)
);
CREATE UNIQUE INDEX operatories_name ON operatories (clinic_id, lower(name));
ALTER TABLE operatories ENABLE ROW LEVEL SECURITY;
ALTER TABLE operatories FORCE ROW LEVEL SECURITY;
CREATE POLICY clinic_isolation ON operatories
    USING (clinic_id = (SELECT nullif(current_setting('app.clinic_id', true), '')::uuid))
    WITH CHECK (clinic_id = (SELECT nullif(current_setting('app.clinic_id', true), '')::uuid));
GRANT SELECT, INSERT, UPDATE ON operatories TO molar_app;

-- The weekly template, in the clinic's local time (ISO weekday: Monday = 1).
CREATE TABLE working_hours (
    clinic_id   uuid     NOT NULL,
    provider_id uuid     NOT NULL,
    weekday     smallint NOT NULL CHECK (weekday BETWEEN 1 AND 7),
    start_time  time     NOT NULL,
    end_time    time     NOT NULL,
    PRIMARY KEY (clinic_id, provider_id, weekday, start_time),
    FOREIGN KEY (clinic_id, provider_id) REFERENCES users (clinic_id, id),
    CHECK (end_time > start_time)
);
ALTER TABLE working_hours ENABLE ROW LEVEL SECURITY;
ALTER TABLE working_hours FORCE ROW LEVEL SECURITY;
CREATE POLICY clinic_isolation ON working_hours
    USING (clinic_id = (SELECT nullif(current_setting('app.clinic_id', true), '')::uuid))
    WITH CHECK (clinic_id = (SELECT nullif(current_setting('app.clinic_id', true), '')::uuid));
GRANT SELECT, INSERT, DELETE ON working_hours TO molar_app;

-- Dated exceptions: without times a day off; with times they replace that day's hours.
CREATE TABLE working_hour_exceptions (
    clinic_id   uuid NOT NULL,
    id          uuid NOT NULL,
    provider_id uuid NOT NULL,
    on_date     date NOT NULL,
    start_time  time,
    end_time    time,
    reason      text CHECK (length(reason) <= 200),
    PRIMARY KEY (clinic_id, id),
    FOREIGN KEY (clinic_id, provider_id) REFERENCES users (clinic_id, id),
    CHECK ((start_time IS NULL) = (end_time IS NULL)),
    CHECK (end_time > start_time)
);
CREATE INDEX working_hour_exceptions_day ON working_hour_exceptions (clinic_id, provider_id, on_date);
ALTER TABLE working_hour_exceptions ENABLE ROW LEVEL SECURITY;
ALTER TABLE working_hour_exceptions FORCE ROW LEVEL SECURITY;
CREATE POLICY clinic_isolation ON working_hour_exceptions
    USING (clinic_id = (SELECT nullif(current_setting('app.clinic_id', true), '')::uuid))
    WITH CHECK (clinic_id = (SELECT nullif(current_setting('app.clinic_id', true), '')::uuid));
GRANT SELECT, INSERT, DELETE ON working_hour_exceptions TO molar_app;

CREATE TABLE appointments (
    clinic_id      uuid        NOT NULL,
    id             uuid        NOT NULL,
    patient_id     uuid        NOT NULL,
    provider_id    uuid        NOT NULL,
    operatory_id   uuid        NOT NULL,
    start_at       timestamptz NOT NULL,
    end_at         timestamptz NOT NULL,
    status         text        NOT NULL DEFAULT 'scheduled' CHECK (status IN
                       ('scheduled', 'confirmed', 'arrived', 'in_chair', 'completed', 'cancelled', 'no_show')),
    reason         text        CHECK (length(reason) <= 500),
    notes          text        CHECK (length(notes) <= 2000),
    outside_hours  boolean     NOT NULL DEFAULT false,
    version        integer     NOT NULL DEFAULT 1,
    created_by     uuid        NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    during         tstzrange   GENERATED ALWAYS AS (tstzrange(start_at, end_at, '[)')) STORED,
    PRIMARY KEY (clinic_id, id),
    CONSTRAINT appointments_patient_fk FOREIGN KEY (clinic_id, patient_id) REFERENCES patients (clinic_id, id),
    CONSTRAINT appointments_provider_fk FOREIGN KEY (clinic_id, provider_id) REFERENCES users (clinic_id, id),
    CONSTRAINT appointments_operatory_fk FOREIGN KEY (clinic_id, operatory_id) REFERENCES operatories (clinic_id, id),
    CONSTRAINT appointments_positive_length CHECK (end_at > start_at),
    -- Cancelled and no-show appointments free their slot.
    CONSTRAINT appointments_provider_overlap EXCLUDE USING gist
        (clinic_id WITH =, provider_id WITH =, during WITH &&)
        WHERE (status NOT IN ('cancelled', 'no_show')),
    CONSTRAINT appointments_operatory_overlap EXCLUDE USING gist
        (clinic_id WITH =, operatory_id WITH =, during WITH &&)
        WHERE (status NOT IN ('cancelled', 'no_show')),
    CONSTRAINT appointments_patient_overlap EXCLUDE USING gist
        (clinic_id WITH =, patient_id WITH =, during WITH &&)
        WHERE (status NOT IN ('cancelled', 'no_show'))
);
CREATE INDEX appointments_calendar ON appointments (clinic_id, start_at, id);
CREATE INDEX appointments_patient ON appointments (clinic_id, patient_id, start_at);
ALTER TABLE appointments ENABLE ROW LEVEL SECURITY;
ALTER TABLE appointments FORCE ROW LEVEL SECURITY;
CREATE POLICY clinic_isolation ON appointments
    USING (clinic_id = (SELECT nullif(current_setting('app.clinic_id', true), '')::uuid))
    WITH CHECK (clinic_id = (SELECT nullif(current_setting('app.clinic_id', true), '')::uuid));
GRANT SELECT, INSERT, UPDATE ON appointments TO molar_app;

-- Every status change and reschedule, with who, when and why.
CREATE TABLE appointment_history (
    clinic_id      uuid        NOT NULL,
    id             uuid        NOT NULL,
    appointment_id uuid        NOT NULL,
    kind           text        NOT NULL CHECK (kind IN ('created', 'status', 'rescheduled', 'updated')),
    from_status    text,
    to_status      text,
    from_start_at  timestamptz,
    from_end_at    timestamptz,
    to_start_at    timestamptz,
    to_end_at      timestamptz,
    reason         text        CHECK (length(reason) <= 500),
    changed_by     uuid        NOT NULL,
    changed_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (clinic_id, id),
    FOREIGN KEY (clinic_id, appointment_id) REFERENCES appointments (clinic_id, id)
);
CREATE INDEX appointment_history_appointment ON appointment_history (clinic_id, appointment_id, changed_at, id);
ALTER TABLE appointment_history ENABLE ROW LEVEL SECURITY;
ALTER TABLE appointment_history FORCE ROW LEVEL SECURITY;
CREATE POLICY clinic_isolation ON appointment_history
    USING (clinic_id = (SELECT nullif(current_setting('app.clinic_id', true), '')::uuid))
    WITH CHECK (clinic_id = (SELECT nullif(current_setting('app.clinic_id', true), '')::uuid));
GRANT SELECT, INSERT ON appointment_history TO molar_app;
