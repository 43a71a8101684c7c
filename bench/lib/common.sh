# Shared by bench/*.sh: build, a throwaway controller, cleanup. Source it; it sets `set -euo pipefail`.
#
# After `bench_setup`:
#   BIN        copies of the release binaries (a concurrent `cargo build` can't swap them mid-run)
#   WORK       temp dir (data dir, logs, PIER_HOME), removed at exit
#   BENCH_ID   bench-<random>: the controller id; every container/volume it makes carries
#              pier.controller=$BENCH_ID, the floors' containers carry pier.bench=$BENCH_ID
#   API_PORT ROUTER_PORT TOKEN   once `start_controller` has run
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BENCH=$ROOT/bench
TOOL="python3 $BENCH/lib/benchtool.py"
STACK_IMAGE=${PIER_STACK_IMAGE:-pier-stack:bookworm-v2}
CONTROLLER_PID=

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Removes every Docker object of controller ID (and the floors', for BENCH_ID) and its firewall rules.
remove_objects_of() {
  local BENCH_ID=$1
  local ids
  ids=$(docker ps -aq --filter "label=pier.controller=$BENCH_ID"; docker ps -aq --filter "label=pier.bench=$BENCH_ID")
  [[ -n $ids ]] && docker rm -f $ids >/dev/null 2>&1
  ids=$(docker volume ls -q --filter "label=pier.controller=$BENCH_ID")
  [[ -n $ids ]] && docker volume rm -f $ids >/dev/null 2>&1
  # The floors' images and the controller's app images (after the containers that ran them).
  ids=$( (docker images -q --filter "label=pier.bench=$BENCH_ID"; docker images -q --filter "label=pier.controller=$BENCH_ID") | sort -u)
  [[ -n $ids ]] && docker rmi -f $ids >/dev/null 2>&1
  # The controller's instance network, once its containers are gone, and its bridge's firewall
  # rules (tagged pier:<controller id>).
  ids=$(docker network ls -q --filter "label=pier.controller=$BENCH_ID")
  [[ -n $ids ]] && docker network rm $ids >/dev/null 2>&1
  local chain rule
  for chain in INPUT DOCKER-USER FORWARD; do
    iptables -S "$chain" 2>/dev/null | grep -E -- "pier:${BENCH_ID}\"?( |\$)" | sed 's/^-A //' |
      while read -r rule; do eval "iptables -D $rule"; done
  done
  local left
  left=$(( $(docker ps -aq --filter "label=pier.controller=$BENCH_ID" | wc -l) +
    $(docker network ls -q --filter "label=pier.controller=$BENCH_ID" | wc -l) +
    $(docker images -q --filter "label=pier.controller=$BENCH_ID" | wc -l) ))
  log "cleanup: removed containers, volumes, images, the network and its rules of $BENCH_ID ($left left)"
}

bench_cleanup() {
  local rc=$?
  set +e
  if [[ -n ${CONTROLLER_PID:-} ]] && kill -0 "$CONTROLLER_PID" 2>/dev/null; then
    kill -TERM "$CONTROLLER_PID" 2>/dev/null
    for _ in $(seq 1 50); do kill -0 "$CONTROLLER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$CONTROLLER_PID" 2>/dev/null
  fi
  local pid
  for pid in ${EXTRA_PIDS:-}; do kill -TERM "$pid" 2>/dev/null; done
  for pid in ${EXTRA_PIDS:-}; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
  done
  if [[ -n ${BENCH_ID:-} ]]; then
    local id
    for id in "$BENCH_ID" ${EXTRA_IDS:-}; do remove_objects_of "$id"; done
  fi
  if [[ -n ${WORK:-} && -d $WORK ]]; then
    if [[ $rc -ne 0 && -f $WORK/controller.log ]]; then
      log "last lines of the controller log:"; tail -20 "$WORK/controller.log" >&2
    fi
    rm -rf "$WORK"
  fi
  exit $rc
}

# Builds (retrying while others' in-progress edits break the build), copies the binaries, sets up
# the temp dir and the cleanup trap.
bench_setup() {
  command -v docker >/dev/null && docker info >/dev/null 2>&1 || { echo "Docker is not reachable" >&2; exit 1; }
  docker image inspect "$STACK_IMAGE" >/dev/null 2>&1 || {
    echo "stack image $STACK_IMAGE is missing: run target/release/pier-controller build-stack" >&2; exit 1; }
  BENCH_ID=bench-$(head -c6 /dev/urandom | od -An -tx1 | tr -d ' \n')
  WORK=$(mktemp -d /tmp/pier-bench.XXXXXX)
  trap bench_cleanup EXIT
  trap 'exit 130' INT TERM
  if [[ -z ${BENCH_NO_BUILD:-} ]]; then
    local tries=0
    until (cd "$ROOT" && cargo build --release --bins -q 2>"$WORK/build.log"); do
      tries=$((tries + 1))
      if [[ $tries -ge ${BENCH_BUILD_TRIES:-10} ]]; then
        tail -30 "$WORK/build.log" >&2; echo "build failed $tries times" >&2; exit 1
      fi
      log "build failed (others may be mid-edit); retrying in 60 s"
      sleep 60
    done
  fi
  mkdir -p "$WORK/bin" "$WORK/data" "$WORK/cli"
  # BENCH_BIN_DIR: binaries from elsewhere (e.g. target/debug with BENCH_NO_BUILD=1).
  cp "${BENCH_BIN_DIR:-$ROOT/target/release}/pier" "${BENCH_BIN_DIR:-$ROOT/target/release}/pier-controller" "$WORK/bin/"
  BIN=$WORK/bin
  export PIER_HOME=$WORK/cli
  GIT_REV=$(cd "$ROOT" && git rev-parse --short HEAD)$(cd "$ROOT" && git diff --quiet HEAD -- controller cli router api lifecycle buildpacks 2>/dev/null || echo "+uncommitted")
  API_PORT=$(free_port)
  ROUTER_PORT=$(free_port)
  log "bench id $BENCH_ID, work dir $WORK, api :$API_PORT, router :$ROUTER_PORT, rev $GIT_REV"
}

controller_cmd() {
  echo "$BIN/pier-controller" --data-dir "$WORK/data" --listen "127.0.0.1:$API_PORT" \
    --router-listen "127.0.0.1:$ROUTER_PORT" --controller-id "$BENCH_ID" \
    --stack-image "$STACK_IMAGE" --build-stack false --log-buffer-lines 50000 ${CONTROLLER_ARGS:-}
  # (a big log buffer: the router pollers make the app log a line per request, and the benchmarks
  # read the controller's CELL/STG lines back from GET /v1/apps/NAME/logs)
}

start_controller() {
  # shellcheck disable=SC2046
  $(controller_cmd) >>"$WORK/controller.log" 2>&1 &
  CONTROLLER_PID=$!
  for _ in $(seq 1 300); do
    grep -q "pier-controller listening" "$WORK/controller.log" 2>/dev/null && break
    kill -0 "$CONTROLLER_PID" 2>/dev/null || { cat "$WORK/controller.log" >&2; exit 1; }
    sleep 0.05
  done
  TOKEN=$(cat "$WORK/data/admin-token")
  export PIER_API=http://127.0.0.1:$API_PORT PIER_TOKEN=$TOKEN
}

api() { # api METHOD PATH [JSON]
  curl -sS -f -X "$1" -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
    ${3:+--data "$3"} "http://127.0.0.1:$API_PORT$2"
}

# The machine is shared: before a round, wait (QUIET_WAIT s at most, default 60) until the CPUs
# are at least QUIET_IDLE idle over a second (default 0.75), so co-tenants' load hits fewer rounds.
# Appends "gate ROUND IDLE WAITED" to $RES.
quiet_gate() {
  local round=$1 start=$SECONDS idle
  while :; do
    idle=$(python3 -c '
import time
def r():
    v = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return v[3] + v[4], sum(v)
i0, t0 = r(); time.sleep(1); i1, t1 = r(); print(f"{(i1 - i0) / max(t1 - t0, 1):.2f}")')
    if awk -v i="$idle" -v q="${QUIET_IDLE:-0.75}" 'BEGIN { exit !(i >= q) }' ||
      [[ $((SECONDS - start)) -ge ${QUIET_WAIT:-60} ]]; then
      break
    fi
  done
  printf 'gate\t%s\t%s\t%s\n' "$round" "$idle" "$((SECONDS - start))" >>"$RES"
  log "round $round: CPU ${idle} idle (waited $((SECONDS - start)) s)"
}

gate_summary() { # "K of N rounds started with >= Q idle CPU (idle min-max)"
  awk -F'\t' -v q="${QUIET_IDLE:-0.75}" '$1 == "gate" { n++; if ($3 >= q) k++; if (min == "" || $3 < min) min = $3; if ($3 > max) max = $3 }
    END { printf "%d of %d rounds started with ≥ %.0f%% of the CPUs idle (idle over the second before each round: %.0f–%.0f%%)", k, n, q * 100, min * 100, max * 100 }' "$RES"
}

# Seconds with 3 decimals between two $EPOCHREALTIME values.
dt() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

# median min max n of the numbers given as arguments or on stdin
stats() { if [[ $# -gt 0 ]]; then printf '%s\n' "$@"; else cat; fi | $TOOL stats; }
