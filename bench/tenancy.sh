#!/usr/bin/env bash
# Teams benchmark (issue 14): authorization must not slow the API. Two controllers side by side in
# one run, from the same release build:
#   single   a store as a single-tenant platform has it: the default space with 10 apps, the
#            admin token
#   teams    50 users, 4 orgs of 5 spaces (20), 200 apps (10 a space), each user a SpaceDeveloper
#            of one space and a SpaceAuditor of another; measured as the admin token and as a
#            user (a SpaceDeveloper of space 0), both in space 0 (10 apps, as `single`)
# Each round, interleaved: N sequential `GET /v1/apps` over one keep-alive connection per mode,
# then one `pier push` of examples/python-app per controller (the user's own login in `teams`),
# timed until the command returns (it waits for the instance to be healthy).
#
#   bench/tenancy.sh                  # 5 rounds, N=300; writes the "Teams" section of BENCHMARKS.md
#   ROUNDS=3 N=100 BENCH_NO_WRITE=1 bench/tenancy.sh
source "$(dirname "$0")/lib/common.sh"

ROUNDS=${ROUNDS:-5}
N=${N:-300}
bench_setup
start_controller
TEAMS_API=$PIER_API TEAMS_TOKEN=$TOKEN
# The single-tenant controller: its own data dir, ports and id.
SINGLE_ID=${BENCH_ID}s
EXTRA_IDS=$SINGLE_ID
SINGLE_API_PORT=$(free_port) SINGLE_ROUTER_PORT=$(free_port)
mkdir -p "$WORK/single"
"$BIN/pier-controller" --data-dir "$WORK/single" --listen "127.0.0.1:$SINGLE_API_PORT" \
  --router-listen "127.0.0.1:$SINGLE_ROUTER_PORT" --controller-id "$SINGLE_ID" \
  --stack-image "$STACK_IMAGE" --build-stack false >>"$WORK/single.log" 2>&1 &
EXTRA_PIDS=$!
for _ in $(seq 1 300); do
  grep -q "pier-controller listening" "$WORK/single.log" 2>/dev/null && break
  sleep 0.05
done
SINGLE_TOKEN=$(cat "$WORK/single/admin-token")

RES=$WORK/tenancy.json
python3 "$BENCH/lib/tenancy.py" \
  --pier "$BIN/pier" --app "$ROOT/examples/python-app" --work "$WORK" --rounds "$ROUNDS" --n "$N" \
  --single "http://127.0.0.1:$SINGLE_API_PORT" "$SINGLE_TOKEN" \
  --teams "$TEAMS_API" "$TEAMS_TOKEN" >"$RES"

DOCKER_VERSION=$(docker version -f '{{.Server.Version}}' 2>/dev/null || echo unknown)
section() {
  cat <<MD
Command: \`bench/tenancy.sh\` (ROUNDS=$ROUNDS, N=$N; $(date +%Y-%m-%d), rev $GIT_REV, $(nproc) cores,
Docker $DOCKER_VERSION). Release builds; two throwaway controllers side by side, from the same
binary: **single**, a store as a single-tenant platform has it (the default space, 10 apps, the
admin token), and **teams**, 50 users, 4 orgs of 5 spaces, 200 apps (10 a space), each user a
SpaceDeveloper of one space and a SpaceAuditor of another. Every request in \`teams\` goes through
the policy (\`controller/src/policy.rs\`): the user's roles are read from the store on each request.
\`GET /v1/apps\` lists 10 apps in every mode (space 0 in \`teams\`); each round makes $N sequential
requests per mode on one keep-alive connection, modes interleaved. Pushes: \`pier push\` of
examples/python-app, one per controller a round, until the command returns (instance healthy).
A user's request also verifies its JWT (HS256) and looks its login session up in the store (so a
revoked session is refused at once): part of the user's extra time is that, not the policy.

$(python3 - "$RES" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
def row(name, what, key):
    m = r[key]
    base = r["single_" + what]
    ratio = m["median"] / base["median"] if base["median"] else float("nan")
    return f"| {name} | {m['median']:.2f} | {m['p99']:.2f} | {m['n']} | {ratio:.2f}× |"
print("| `GET /v1/apps` (10 apps), ms | median | p99 | requests | × single |")
print("|---|---|---|---|---|")
print(row("single: admin token", "get", "single_get"))
print(row("teams: admin token", "get", "teams_admin_get"))
print(row("teams: a SpaceDeveloper's token", "get", "teams_user_get"))
print()
print("| `pier push`, s | median | p99 (max of the rounds) | pushes | × single |")
print("|---|---|---|---|---|")
print(row("single: admin", "push", "single_push"))
print(row("teams: a SpaceDeveloper", "push", "teams_user_push"))
PY
)
MD
}
if [[ -n ${BENCH_NO_WRITE:-} ]]; then
  section
else
  section | $TOOL section --file "$ROOT/BENCHMARKS.md" --key tenancy --title "Teams: authorization cost"
  log "wrote the Teams section of BENCHMARKS.md"
fi
