-- A transaction that writes nothing but its own commit record (`txid_current()` gives it a
-- transaction id), timed beside `trivial.sql`. PostgreSQL does not wait for that record to
-- reach the disk, since the transaction wrote nothing before it: a transaction that inserts
-- a row also waits for the flush (bench/history.md, "seventeenth session").
BEGIN;
SELECT txid_current();
COMMIT;
