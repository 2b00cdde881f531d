#!/usr/bin/env bash
# Molar: database roles for the docker-compose stack (docker-compose.prod.yml).
#
# The postgres image runs this once, when it initialises an empty data directory, as the
# superuser. It creates:
#   molar_owner   LOGIN CREATEROLE, owns the database `molar`; migrations run as it
#                 (password: MOLAR_OWNER_DB_PASSWORD)
#   molar_server  LOGIN, the role the API connects as (password: MOLAR_SERVER_DB_PASSWORD);
#                 never a superuser, never BYPASSRLS, owns nothing
#   molar_app     NOLOGIN group role holding the server's table privileges; the
#                 migrations create it only when it is missing, so creating it here
#                 first lets molar_server join it before the first migration.
# molar_auth is deliberately NOT created here: the first migration creates it as
# molar_owner, which needs to hold it with the admin option (PostgreSQL 16 rules).
#
# Every step is idempotent. Passwords are passed to psql as variables and quoted by
# PostgreSQL (format %L), never pasted into SQL text by the shell.
set -euo pipefail

: "${MOLAR_OWNER_DB_PASSWORD:?MOLAR_OWNER_DB_PASSWORD must be set}"
: "${MOLAR_SERVER_DB_PASSWORD:?MOLAR_SERVER_DB_PASSWORD must be set}"
database="${MOLAR_DB_NAME:-molar}"

psql -v ON_ERROR_STOP=1 -X -q \
    --username "${POSTGRES_USER:-postgres}" --dbname postgres \
    -v owner_pw="$MOLAR_OWNER_DB_PASSWORD" \
    -v server_pw="$MOLAR_SERVER_DB_PASSWORD" \
    -v db="$database" <<'SQL'
SELECT format('CREATE ROLE molar_owner LOGIN CREATEROLE PASSWORD %L', :'owner_pw')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'molar_owner') \gexec
SELECT format('ALTER ROLE molar_owner LOGIN CREATEROLE PASSWORD %L', :'owner_pw') \gexec

SELECT format('CREATE ROLE molar_server LOGIN PASSWORD %L', :'server_pw')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'molar_server') \gexec
SELECT format('ALTER ROLE molar_server LOGIN NOSUPERUSER NOBYPASSRLS PASSWORD %L', :'server_pw') \gexec

SELECT 'CREATE ROLE molar_app NOLOGIN'
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'molar_app') \gexec
GRANT molar_app TO molar_server;

SELECT format('CREATE DATABASE %I OWNER molar_owner', :'db')
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'db') \gexec
SQL

echo "molar: roles molar_owner, molar_server, molar_app and database ${database} are ready"
