-- Seeds the benchmark database: 1,000 clinics, 1,000,099 patients (clinic 1 holds
-- 100,000), staff, operatories, a year of appointments, and clinic 1's procedure
-- catalogue with a year of completed procedures charged to the journal. Run as a
-- superuser with psql -v hash='<argon2 hash>'. Ids are deterministic so the harness can
-- address them.
\set ON_ERROR_STOP on
BEGIN;

CREATE FUNCTION pg_temp.bench_id(kind int, n bigint) RETURNS uuid LANGUAGE sql IMMUTABLE AS
$$ SELECT (lpad(to_hex(kind), 8, '0') || '-0000-7000-8000-' || lpad(to_hex(n), 12, '0'))::uuid $$;

INSERT INTO clinics (id, name, timezone, currency)
SELECT pg_temp.bench_id(1, g), 'Bench Clinic ' || g, 'Europe/Berlin', 'EUR'
FROM generate_series(1, 1000) g;

-- Staff: an owner, a receptionist and two dentists per clinic; clinic 1 has 50 dentists.
INSERT INTO users (clinic_id, id, email, full_name, role, is_provider, password_hash)
SELECT pg_temp.bench_id(1, g), pg_temp.bench_id(2, g * 100 + k),
       CASE k WHEN 0 THEN 'owner' WHEN 1 THEN 'reception' ELSE 'dentist' || (k - 1) END
           || '@c' || g || '.bench.molar.test',
       'Staff ' || g || '-' || k,
       CASE k WHEN 0 THEN 'owner' WHEN 1 THEN 'receptionist' ELSE 'dentist' END,
       k >= 2, :'hash'
FROM generate_series(1, 1000) g
CROSS JOIN LATERAL generate_series(0, CASE WHEN g = 1 THEN 51 ELSE 3 END) k;

INSERT INTO operatories (clinic_id, id, name)
SELECT pg_temp.bench_id(1, g), pg_temp.bench_id(3, g * 100 + k), 'Chair ' || k
FROM generate_series(1, 1000) g
CROSS JOIN LATERAL generate_series(1, CASE WHEN g = 1 THEN 50 ELSE 3 END) k;

-- Dentists work every day, 00:00–23:59 local, so any slot is bookable.
INSERT INTO working_hours (clinic_id, provider_id, weekday, start_time, end_time)
SELECT u.clinic_id, u.id, d, '00:00', '23:59'
FROM users u CROSS JOIN generate_series(1, 7) d
WHERE u.is_provider AND u.clinic_id = pg_temp.bench_id(1, 1);

-- Patients: names from syllables (tens of thousands of distinct last names). The
-- secondary indexes are built once after the bulk insert, from their definitions as the
-- migrations left them, and the name-word trigger's work is done in bulk afterwards.
CREATE TEMP TABLE bench_indexes AS
SELECT i.indexrelid::regclass::text AS name, pg_get_indexdef(i.indexrelid) AS def
FROM pg_index i
WHERE i.indrelid = 'patients'::regclass
  AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid);
SELECT format('DROP INDEX %s', string_agg(name, ', ')) FROM bench_indexes HAVING count(*) > 0 \gexec
ALTER TABLE patients DISABLE TRIGGER patients_name_words;
WITH names AS (
    SELECT ARRAY['James','Mary','John','Patricia','Robert','Jennifer','Michael','Linda','William','Elizabeth',
                 'David','Barbara','Richard','Susan','Joseph','Jessica','Thomas','Sarah','Charles','Karen',
                 'Lukas','Emma','Leon','Mia','Finn','Hannah','Jonas','Sofia','Elias','Lea',
                 'Noah','Anna','Paul','Marie','Felix','Lena','Ben','Clara','Louis','Emilia',
                 'Mateo','Lucia','Hugo','Chloe','Arthur','Ines','Omar','Yasmin','Kenji','Aiko'] AS first,
           ARRAY['schm','mul','wag','beck','hof','kel','ric','kle','wol','neu','zim','bra','kru','har','lan',
                 'gar','rod','mar','her','lop','gon','wil','and','tay','tho','moo','jac','whi','cla','lew'] AS a,
           ARRAY['idt','ler','ner','er','mann','berg','ter','son','ez','ia','ford','ley','ton','ski','ov'] AS b
),
plan AS (
    SELECT 1 AS g, 100000 AS n UNION ALL SELECT g, 901 FROM generate_series(2, 1000) g
)
INSERT INTO patients (clinic_id, id, first_name, last_name, date_of_birth, sex, phone, email)
SELECT pg_temp.bench_id(1, p.g), pg_temp.bench_id(4, p.g * 1000000 + i),
       names.first[1 + (i * 7 + p.g) % 50],
       initcap(names.a[1 + (i * 13 + p.g * 3) % 30] || names.b[1 + (i / 30 + p.g) % 15] || CASE WHEN i % 3 = 0 THEN '' ELSE names.a[1 + (i / 7) % 30] END),
       DATE '1940-01-01' + ((i * 37 + p.g) % 29000),
       (ARRAY['female','male','other','unknown'])[1 + i % 4],
       '+49 30 ' || lpad(((i * 7919 + p.g * 104729) % 10000000)::text, 7, '0'),
       'patient' || i || '.c' || p.g || '@mail.bench.test'
FROM plan p CROSS JOIN names CROSS JOIN LATERAL generate_series(1, p.n) i;
SELECT def FROM bench_indexes \gexec
-- What the trigger would have written, row by row (as migration 0010 copies names).
INSERT INTO name_lexicon (word)
SELECT DISTINCT unnest(name_words_of(p.search_name)) FROM patients p
ON CONFLICT DO NOTHING;
INSERT INTO patient_name_words (clinic_id, word, patient_id, archived)
SELECT p.clinic_id, unnest(name_words_of(p.search_name)), p.id, p.archived_at IS NOT NULL
FROM patients p;
ALTER TABLE patients ENABLE TRIGGER patients_name_words;

-- A year of past appointments: clinic 1's 50 dentists four a day, the others one a day.
INSERT INTO appointments (clinic_id, id, patient_id, provider_id, operatory_id, start_at, end_at, status, created_by)
SELECT pg_temp.bench_id(1, 1), pg_temp.bench_id(5, (k * 400 + d) * 4 + s),
       pg_temp.bench_id(4, 1000000 + 1 + ((k * 365 + d) * 4 + s) % 100000),
       pg_temp.bench_id(2, 100 + k + 2), pg_temp.bench_id(3, 100 + k + 1),
       ts, ts + interval '45 minutes', 'completed', pg_temp.bench_id(2, 100)
FROM generate_series(0, 49) k, generate_series(1, 365) d, generate_series(0, 3) s,
     LATERAL (SELECT date_trunc('day', now()) - d * interval '1 day' + (ARRAY[8, 9, 10, 13])[s + 1] * interval '1 hour' AS ts) t;
INSERT INTO appointments (clinic_id, id, patient_id, provider_id, operatory_id, start_at, end_at, status, created_by)
SELECT pg_temp.bench_id(1, g), pg_temp.bench_id(6, g * 1000 + d),
       pg_temp.bench_id(4, g * 1000000 + 1 + d), pg_temp.bench_id(2, g * 100 + 2), pg_temp.bench_id(3, g * 100 + 1),
       date_trunc('day', now()) - d * interval '1 day' + interval '8 hours',
       date_trunc('day', now()) - d * interval '1 day' + interval '9 hours', 'completed', pg_temp.bench_id(2, g * 100)
FROM generate_series(2, 1000) g, generate_series(1, 365) d;

-- Treatment in clinic 1: a catalogue of twelve codes, and a year of completed procedures
-- charged to the journal. On every working day (Monday to Friday in the clinic's time
-- zone) the first ten dentists complete one procedure at each of their four appointments
-- (40 a day), charged when the appointment ends: a 'charge' transaction whose lines debit
-- the patient's receivable and credit revenue. Procedure and charge ids repeat the
-- appointment's number (kinds 8 and 9). The journal's balance trigger checks each
-- transaction at COMMIT, lines included.
CREATE TEMP TABLE bench_codes (n int, code text, description text, category text, fee_cents bigint,
                               minutes int, requires_tooth boolean, surfaces text[]);
INSERT INTO bench_codes VALUES
    (1, 'E01', 'Periodic oral examination', 'diagnostic', 4500, 15, false, '{}'),
    (2, 'R01', 'Bitewing radiographs, two films', 'diagnostic', 3500, 10, false, '{}'),
    (3, 'P01', 'Prophylaxis, adult', 'preventive', 8000, 30, false, '{}'),
    (4, 'F01', 'Composite filling, one surface', 'restorative', 12000, 30, true, '{O}'),
    (5, 'F02', 'Composite filling, two surfaces', 'restorative', 16000, 45, true, '{M,O}'),
    (6, 'F03', 'Composite filling, three surfaces', 'restorative', 21000, 60, true, '{M,O,D}'),
    (7, 'C01', 'Ceramic crown', 'prosthodontic', 95000, 90, true, '{}'),
    (8, 'RC1', 'Root canal treatment, molar', 'endodontic', 85000, 90, true, '{}'),
    (9, 'X01', 'Extraction, erupted tooth', 'surgical', 15000, 30, true, '{}'),
    (10, 'S01', 'Fissure sealant', 'preventive', 4000, 15, true, '{O}'),
    (11, 'FL1', 'Fluoride varnish', 'preventive', 3000, 10, false, '{}'),
    (12, 'W01', 'Tooth whitening, in office', 'cosmetic', 30000, 60, false, '{}');
INSERT INTO procedure_codes (clinic_id, id, code, description, category, fee_cents, default_minutes,
                             requires_tooth, requires_surfaces)
SELECT pg_temp.bench_id(1, 1), pg_temp.bench_id(10, n), code, description, category, fee_cents, minutes,
       requires_tooth, surfaces <> '{}'
FROM bench_codes;
INSERT INTO procedures (clinic_id, id, patient_id, procedure_code_id, tooth, surfaces, provider_id, status,
                        fee_cents, appointment_id, completed_on, version, created_by, created_at, updated_at)
SELECT a.clinic_id, ('00000008' || substr(a.id::text, 9))::uuid, a.patient_id, pg_temp.bench_id(10, c.n),
       CASE WHEN c.requires_tooth THEN (ARRAY[16, 17, 26, 27, 36, 37, 46, 47, 14, 15, 24, 25, 34, 35, 44, 45])[1 + a.n % 16] END,
       c.surfaces, a.provider_id, 'completed', c.fee_cents, a.id, (a.start_at AT TIME ZONE 'Europe/Berlin')::date, 2,
       a.provider_id, a.start_at, a.end_at
FROM (SELECT a.*, ('x' || right(a.id::text, 12))::bit(48)::bigint AS n FROM appointments a
      WHERE a.clinic_id = pg_temp.bench_id(1, 1)
        AND a.provider_id BETWEEN pg_temp.bench_id(2, 102) AND pg_temp.bench_id(2, 111)
        AND extract(isodow FROM a.start_at AT TIME ZONE 'Europe/Berlin') < 6) a
JOIN bench_codes c ON c.n = 1 + (a.n * 7) % 12;
INSERT INTO ledger_transactions (clinic_id, id, kind, patient_id, posted_at, procedure_id, memo, created_by)
SELECT clinic_id, ('00000009' || substr(id::text, 9))::uuid, 'charge', patient_id, updated_at, id,
       'procedure completed', provider_id
FROM procedures WHERE clinic_id = pg_temp.bench_id(1, 1) AND status = 'completed';
INSERT INTO ledger_lines (clinic_id, transaction_id, line_no, account, patient_id, amount_cents)
SELECT p.clinic_id, ('00000009' || substr(p.id::text, 9))::uuid, l.line_no, l.account,
       CASE l.line_no WHEN 1 THEN p.patient_id END, CASE l.line_no WHEN 1 THEN p.fee_cents ELSE -p.fee_cents END
FROM procedures p CROSS JOIN (VALUES (1, 'receivable'), (2, 'revenue')) l(line_no, account)
WHERE p.clinic_id = pg_temp.bench_id(1, 1) AND p.status = 'completed';

COMMIT;
-- The visibility map too, so that index-only scans (the name words) need no heap.
VACUUM ANALYZE;
