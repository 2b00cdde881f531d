-- Nobody but the owner creates objects in the schema (PostgreSQL 14 and older let every
-- role do so by default). A no-op where that was already the case.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
