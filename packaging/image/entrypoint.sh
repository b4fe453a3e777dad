#!/bin/sh
# The container's entry point, in Spilo's form: one PostgreSQL and its matriarch
# agent, configured from the environment. Spilo's variable names are mapped to
# matriarch's MATRIARCH_* overrides (which the agent reads itself, so no secret
# is written to a file or put on a command line); a MATRIARCH_* variable set
# directly wins.
set -eu

map() { # map TARGET SOURCE: export TARGET from SOURCE unless TARGET is set
    eval "target_value=\${$1:-}"
    eval "source_value=\${$2:-}"
    if [ -z "$target_value" ] && [ -n "$source_value" ]; then
        eval "export $1=\"\$source_value\""
    fi
}

map MATRIARCH_SCOPE SCOPE
map MATRIARCH_NAME POD_NAME
map MATRIARCH_NAME NAME
map MATRIARCH_ETCD3_HOSTS ETCD3_HOSTS
map MATRIARCH_ETCD3_HOSTS ETCD_HOSTS
map MATRIARCH_ZOOKEEPER_HOSTS ZOOKEEPER_HOSTS
map MATRIARCH_SUPERUSER_USERNAME PGUSER_SUPERUSER
map MATRIARCH_SUPERUSER_PASSWORD PGPASSWORD_SUPERUSER
map MATRIARCH_REPLICATION_USERNAME PGUSER_STANDBY
map MATRIARCH_REPLICATION_PASSWORD PGPASSWORD_STANDBY
map MATRIARCH_RESTAPI_USERNAME RESTAPI_USERNAME
map MATRIARCH_RESTAPI_PASSWORD RESTAPI_PASSWORD

# Addresses: what this node listens on and what others use to reach it.
connect_address=${CONNECT_ADDRESS:-127.0.0.1}
pg_port=${PGPORT:-5432}
api_port=${APIPORT:-8008}
: "${MATRIARCH_NAME:=$(hostname)}"
: "${MATRIARCH_POSTGRESQL_LISTEN:=${connect_address}:${pg_port}}"
: "${MATRIARCH_POSTGRESQL_CONNECT_ADDRESS:=${connect_address}:${pg_port}}"
: "${MATRIARCH_RESTAPI_LISTEN:=${connect_address}:${api_port}}"
: "${MATRIARCH_RESTAPI_CONNECT_ADDRESS:=${connect_address}:${api_port}}"
: "${MATRIARCH_REPLICATION_USERNAME:=standby}"
export MATRIARCH_NAME MATRIARCH_POSTGRESQL_LISTEN MATRIARCH_POSTGRESQL_CONNECT_ADDRESS \
    MATRIARCH_RESTAPI_LISTEN MATRIARCH_RESTAPI_CONNECT_ADDRESS MATRIARCH_REPLICATION_USERNAME

for required in MATRIARCH_SCOPE MATRIARCH_SUPERUSER_PASSWORD MATRIARCH_REPLICATION_PASSWORD; do
    eval "value=\${$required:-}"
    if [ -z "$value" ]; then
        echo "matriarch-entrypoint: $required (or its Spilo name) must be set" >&2
        exit 2
    fi
done
if [ -z "${MATRIARCH_ETCD3_HOSTS:-}" ] && [ -z "${MATRIARCH_ZOOKEEPER_HOSTS:-}" ]; then
    echo "matriarch-entrypoint: set ETCD3_HOSTS or ZOOKEEPER_HOSTS" >&2
    exit 2
fi

# The data directory's parent belongs to the postgres user (a volume may be mounted there).
pgroot=/home/postgres/pgdata/pgroot
mkdir -p "$pgroot"
chown postgres:postgres /home/postgres/pgdata "$pgroot"
chmod 0700 "$pgroot"

exec /usr/bin/matriarch run --config /etc/matriarch/node.yaml
