-- A transaction that does nothing, timed during the booking load beside the sealing round:
-- what any transaction's wall time is on the machine at that moment.
BEGIN;
SELECT 1;
COMMIT;
