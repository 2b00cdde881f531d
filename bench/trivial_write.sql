-- A transaction that writes nothing but its own commit record (`txid_current()` gives it a
-- transaction id), timed beside `trivial.sql`: it commits as a writing transaction does.
BEGIN;
SELECT txid_current();
COMMIT;
