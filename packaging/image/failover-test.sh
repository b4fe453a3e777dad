#!/usr/bin/env bash
# End-to-end test of the container image: etcd on the host, three containers
# with host networking on distinct loopback ports, a writer, then the primary's
# container killed. Checks that another node takes over and that every
# acknowledged write is on the new primary. Usage: failover-test.sh IMAGE
set -euo pipefail

image=${1:?usage: failover-test.sh IMAGE}
podman_run=(podman --runtime runc)
work=$(mktemp -d /tmp/matriarch-image-test.XXXXXX)
case "$work" in
/tmp/matriarch-image-test.*) ;;
*) echo "unexpected work dir $work" >&2; exit 1 ;;
esac
base=$((20000 + RANDOM % 20000))
etcd_client=$base
etcd_peer=$((base + 1))
names=(node1 node2 node3)
pg_port() { echo $((base + 10 + $1)); }
api_port() { echo $((base + 20 + $1)); }
superuser_password=image-test-secret
export PGPASSWORD=$superuser_password PGCONNECT_TIMEOUT=2
etcd_pid=
writer_pid=

cleanup() {
    set +e
    [ -n "$writer_pid" ] && kill "$writer_pid" 2>/dev/null
    for n in "${names[@]}"; do "${podman_run[@]}" rm -f -t 0 "mtest-$n-$base" >/dev/null 2>&1; done
    [ -n "$etcd_pid" ] && kill "$etcd_pid" 2>/dev/null && wait "$etcd_pid" 2>/dev/null
    rm -rf -- "$work"
}
trap cleanup EXIT

log() { printf '%s %s\n' "$(date +%T.%3N)" "$*"; }
now_ms() { date +%s%3N; }

etcd --name single --data-dir "$work/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_client" --advertise-client-urls "http://127.0.0.1:$etcd_client" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-cluster "single=http://127.0.0.1:$etcd_peer" >"$work/etcd.log" 2>&1 &
etcd_pid=$!

for i in 0 1 2; do
    "${podman_run[@]}" run -d --name "mtest-${names[$i]}-$base" --network host \
        --ulimit nofile=20000:20000 --ulimit nproc=32768:32768 \
        -e SCOPE=image-test -e NAME="${names[$i]}" -e ETCD3_HOSTS="127.0.0.1:$etcd_client" \
        -e CONNECT_ADDRESS=127.0.0.1 -e PGPORT="$(pg_port $i)" -e APIPORT="$(api_port $i)" \
        -e PGPASSWORD_SUPERUSER="$superuser_password" -e PGPASSWORD_STANDBY=image-test-standby \
        -e RESTAPI_USERNAME=admin -e RESTAPI_PASSWORD=image-test-api \
        "$image" >/dev/null
done
log "started etcd on $etcd_client and three containers"

status() { curl -s -o /dev/null -m 1 -w '%{http_code}' "http://127.0.0.1:$(api_port "$1")$2" || true; }
primary() {
    local found=
    for i in 0 1 2; do [ "$(status "$i" /primary)" = 200 ] && found="$found $i"; done
    set -- $found
    [ $# -eq 1 ] && echo "$1"
}
wait_for_primary() { # wait_for_primary SECONDS [EXCEPT]
    local deadline=$((SECONDS + $1)) p
    while [ $SECONDS -lt $deadline ]; do
        p=$(primary || true)
        if [ -n "$p" ] && [ "$p" != "${2:-}" ]; then echo "$p"; return 0; fi
        sleep 0.2
    done
    return 1
}

first=$(wait_for_primary 120) || { echo "no primary"; "${podman_run[@]}" logs "mtest-node1-$base" | tail -30; exit 1; }
log "primary: ${names[$first]}"
for _ in $(seq 1 300); do
    ready=0
    for i in 0 1 2; do [ "$(status "$i" /replica)" = 200 ] && ready=$((ready + 1)); done
    [ $ready -eq 2 ] && break
    sleep 0.2
done
[ $ready -eq 2 ] || { echo "replicas not streaming"; exit 1; }
log "both replicas streaming"

psql_at() { /usr/lib/postgresql/15/bin/psql -h 127.0.0.1 -p "$(pg_port "$1")" -U postgres -d postgres -Atq "${@:2}"; }
psql_at "$first" -c "CREATE TABLE acked (id bigint PRIMARY KEY)"

# The writer: one insert at a time to whichever node answers /primary; an id is
# acknowledged when psql exits 0.
(
    id=0
    while :; do
        id=$((id + 1))
        p=$(primary || true)
        if [ -n "$p" ] && psql_at "$p" -c "INSERT INTO acked VALUES ($id)" 2>/dev/null; then
            echo "$id $(now_ms) $p" >>"$work/acked"
        fi
        sleep 0.02
    done
) &
writer_pid=$!
sleep 5

killed_at=$(now_ms)
"${podman_run[@]}" kill -s KILL "mtest-${names[$first]}-$base" >/dev/null
log "killed the container of ${names[$first]}"
second=$(wait_for_primary 60 "$first") || { echo "no failover"; exit 1; }
log "new primary: ${names[$second]}"
sleep 5
kill "$writer_pid"; wait "$writer_pid" 2>/dev/null || true
writer_pid=

# The failover time: from the kill to the first write acknowledged by another node.
first_ack_after=$(awk -v t="$killed_at" -v old="$first" '$2 > t && $3 != old {print $2; exit}' "$work/acked")
late_on_old=$(awk -v t="$killed_at" -v old="$first" '$2 > t + 1000 && $3 == old' "$work/acked" | wc -l)
acked=$(wc -l <"$work/acked")
cut -d' ' -f1 "$work/acked" | sort -n >"$work/acked.ids"
psql_at "$second" -c "SELECT id FROM acked ORDER BY id" | sort -n >"$work/present.ids"
missing=$(comm -23 "$work/acked.ids" "$work/present.ids" | wc -l)
gap_ms=$((first_ack_after - killed_at))
log "acknowledged $acked writes, $missing missing on the new primary; first write on the new primary $gap_ms ms after the kill"
size=$(podman image inspect --format '{{.Size}}' "$image")
printf '{"image": "%s", "image_bytes": %s, "acknowledged": %s, "missing": %s, "failover_ms": %s}\n' \
    "$image" "$size" "$acked" "$missing" "$gap_ms" | tee "${RESULT_JSON:-/dev/null}"
[ "$missing" -eq 0 ] || { echo "FAILED: $missing acknowledged writes lost"; exit 1; }
[ "$late_on_old" -eq 0 ] || { echo "FAILED: the killed container acknowledged $late_on_old writes over 1 s after the kill"; exit 1; }
echo "image failover test passed"
