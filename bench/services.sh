#!/usr/bin/env bash
# The built-in brokers' cost: a PostgreSQL service to ready, and a binding to the app serving with
# it, against starting the same PostgreSQL by hand with `docker run`, in the same run.
#
#   bench/services.sh          # ROUNDS=5 interleaved rounds; writes the "Services" section
#   BENCH_NO_WRITE=1 ...       # print the section instead
#
# Each round:
#   create   `pier create-service postgresql small dbN --wait` until the broker says succeeded
#            (the controller's OSB client polls last_operation; the broker waits until the server
#            accepts connections and the database is made)
#   bind     `pier bind-service app dbN` (a rolling restart onto the binding) until the app answers
#            /rows through the router, reading the table with the binding's credentials
#   floor    `docker run` of the services image with the same volume, memory limit and initdb +
#            postgres command, until `pg_isready` in it succeeds
# The service is unbound and deleted after each round (not timed).
source "$(dirname "$0")/lib/common.sh"

ROUNDS=${ROUNDS:-5}
SERVICES_IMAGE=${PIER_SERVICES_IMAGE:-pier-services:bookworm-v1}
bench_setup
docker image inspect "$SERVICES_IMAGE" >/dev/null 2>&1 || {
  echo "the services image $SERVICES_IMAGE is missing: run target/release/pier-controller build-services-image" >&2
  exit 1
}
RES=$WORK/services.tsv
: >"$RES"
start_controller
APP_DIR=$ROOT/examples/services-app
"$BIN/pier" push svc -p "$APP_DIR" >"$WORK/push.log" 2>&1 || { cat "$WORK/push.log" >&2; exit 1; }

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }

# The floor: what the broker's container runs, by hand.
PG_SCRIPT='set -eu
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
D=/data/pgdata
install -d -o postgres -g postgres -m 0700 "$D"
runuser -u postgres -- "$BIN/initdb" -D "$D" -U postgres -E UTF8 --locale=C.UTF-8 --auth-local=peer --auth-host=scram-sha-256 >/dev/null
install -d -o postgres -g postgres -m 2775 /run/postgresql
exec runuser -u postgres -- "$BIN/postgres" -D "$D" -c listen_addresses=* -c max_connections=23 -c shared_buffers=64MB'

floor() {
  local r=$1 t id
  docker volume create --label "pier.controller=$BENCH_ID" "$BENCH_ID-floor-$r" >/dev/null
  t=$(now)
  id=$(docker run -d --label "pier.bench=$BENCH_ID" --memory 256m --memory-swap 256m \
    -v "$BENCH_ID-floor-$r:/data" "$SERVICES_IMAGE" bash -c "$PG_SCRIPT")
  until docker exec -u postgres "$id" pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; do sleep 0.2; done
  printf 'floor\t%s\t%s\n' "$r" "$(since "$t")" >>"$RES"
  docker rm -f "$id" >/dev/null
  docker volume rm -f "$BENCH_ID-floor-$r" >/dev/null
}

managed() {
  local r=$1 t
  t=$(now)
  "$BIN/pier" create-service postgresql small "db$r" --wait >>"$WORK/rounds.log" 2>&1
  printf 'create\t%s\t%s\n' "$r" "$(since "$t")" >>"$RES"
  t=$(now)
  "$BIN/pier" bind-service svc "db$r" >>"$WORK/rounds.log" 2>&1
  until [[ $(curl -s -o /dev/null -w '%{http_code}' -H 'Host: svc.localhost' "http://127.0.0.1:$ROUTER_PORT/rows") == 200 ]]; do
    sleep 0.1
  done
  printf 'bind\t%s\t%s\n' "$r" "$(since "$t")" >>"$RES"
  "$BIN/pier" unbind-service svc "db$r" >>"$WORK/rounds.log" 2>&1
  "$BIN/pier" delete-service "db$r" -f >>"$WORK/rounds.log" 2>&1
}

for r in $(seq 1 "$ROUNDS"); do
  quiet_gate "$r"
  log "round $r"
  if ((r % 2)); then managed "$r"; floor "$r"; else floor "$r"; managed "$r"; fi
done
mkdir -p "$BENCH/results"
cp "$RES" "$BENCH/results/services.tsv"

col() { awk -F'\t' -v k="$1" '$1 == k { print $3 }' "$RES"; }
fmt() { local med lo hi; read -r med lo hi _ <<<"$(col "$1" | stats)"; printf '%s s (%s–%s)' "$med" "$lo" "$hi"; }
med() { col "$1" | stats | cut -d' ' -f1; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f×", a / b }'; }
section=$(cat <<EOF
Command: \`bench/services.sh\` (ROUNDS=$ROUNDS, interleaved; $(date -u +%Y-%m-%d), rev $GIT_REV, $(nproc) cores, Docker
$(docker version -f '{{.Server.Version}}')). The built-in PostgreSQL broker (plan \`small\`: 256 MiB, 20 connections)
against the same server started by hand from the same image.
$(gate_summary).

| case | median (min–max) | × \`docker run\` |
|---|---|---|
| \`docker run\` of $SERVICES_IMAGE (named volume, 256 MiB, initdb + postgres) until \`pg_isready\` | $(fmt floor) | 1× |
| \`pier create-service postgresql small db --wait\` until succeeded | $(fmt create) | $(ratio "$(med create)" "$(med floor)") |
| \`pier bind-service\` (rolling restart) until the app serves \`/rows\` with the binding | $(fmt bind) | $(ratio "$(med bind)" "$(med floor)") |

<details><summary>Raw rows (bench/results/services.tsv)</summary>

\`\`\`
$(cat "$RES")
\`\`\`
</details>
EOF
)
if [[ -n ${BENCH_NO_WRITE:-} ]]; then
  echo "$section"
else
  $TOOL section --file "$ROOT/BENCHMARKS.md" --key services --title "Services (built-in PostgreSQL broker)" <<<"$section"
  log "wrote the Services section of BENCHMARKS.md"
  echo "$section"
fi
