# shellcheck shell=bash
# Shared by the scripts that build throwaway databases (check-migrations, schema,
# sqlx-prepare); sourced, not run. Uses the PostgreSQL the tests use and the same roles.

# sqlx-cli is installed into cargo's bin directory (scripts/sqlx-cli).
export PATH="${CARGO_INSTALL_ROOT:-${CARGO_HOME:-$HOME/.cargo}}/bin:$PATH"

admin_url="${MOLAR_TEST_ADMIN_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}"
# The roles of the integration tests' harness: the owning role migrations run as (so
# ownership is what production's is), and a server login role that is only a member of
# molar_app.
owner_role=molar_owner
owner_password=molar_owner
server_role=molar_test_server
server_password=molar_test_server

# admin_url pointed at database $1, as role $2 with password $3 when given.
url_for() {
    local base="${admin_url%%\?*}" query=""
    [[ "$admin_url" == *\?* ]] && query="?${admin_url#*\?}"
    if [ $# -ge 3 ]; then
        local hostport="${base#*://}"
        hostport="${hostport%/*}"
        hostport="${hostport##*@}"
        echo "postgres://$2:$3@$hostport/$1$query"
    else
        echo "${base%/*}/$1$query"
    fi
}
owner_url() { url_for "$1" "$owner_role" "$owner_password"; }
server_url() { url_for "$1" "$server_role" "$server_password"; }

# Runs SQL $1 as the administrator, on database ${2:-the admin URL's}.
admin_sql() {
    local url="$admin_url"
    [ $# -ge 2 ] && url="$(url_for "$2")"
    PGOPTIONS="-c client_min_messages=warning" psql "$url" -X -v ON_ERROR_STOP=1 -Atqc "$1"
}

# Makes sure PostgreSQL answers and the owning and server roles exist (idempotent, safe
# while tests create them too).
ensure_roles() {
    if ! admin_sql "SELECT 1" >/dev/null 2>&1; then
        echo "PostgreSQL is not reachable at $admin_url (start it with scripts/services," \
            "or point MOLAR_TEST_ADMIN_URL at a superuser connection)" >&2
        return 1
    fi
    local role attrs
    for role in "$owner_role" "$server_role"; do
        if [ "$role" = "$owner_role" ]; then
            attrs="LOGIN CREATEROLE PASSWORD '$owner_password'"
        else
            attrs="LOGIN PASSWORD '$server_password'"
        fi
        admin_sql "DO \$\$ BEGIN CREATE ROLE $role $attrs;
            EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END \$\$" >/dev/null
    done
}

# Drops database $1 if it exists, disconnecting whoever uses it.
drop_database() {
    admin_sql "DROP DATABASE IF EXISTS \"$1\" WITH (FORCE)" >/dev/null
}

# Creates the empty database $1 owned by the owning role.
create_database() {
    admin_sql "CREATE DATABASE \"$1\" OWNER $owner_role" >/dev/null
}

# Applies migrations/ to database $1 with sqlx-cli, as the owning role.
sqlx_migrate() {
    sqlx migrate run --source migrations --database-url "$(owner_url "$1")"
}

random_suffix() {
    od -An -N6 -tx1 /dev/urandom | tr -d ' \n'
}
