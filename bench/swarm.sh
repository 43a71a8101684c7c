#!/usr/bin/env bash
# The controller killed and restarted (issue 16, item 5): Docker Swarm restarting the controller's
# service against the floor of a process supervisor restarting the same binary at once, in the
# same run, on the same data dir, app and router.
#
# One app (examples/python-app, 2 instances) is pushed; a standalone pier-router on the host serves
# it, with requests sent through it without pause (curl, one at a time). Each round kills the
# controller and times from the kill until the API answers again (GET /v1/whoami 200):
#   process   `kill -9` of a pier-controller process, started again at once (what a supervisor
#             such as systemd with Restart=always and no delay does)
#   swarm     `docker kill` of the controller service's task container (the platform image,
#             docs/swarm.md: host network, the Docker socket, the data dir at the same path,
#             --restart-condition any --restart-delay 0s); Swarm starts a new task
# and counts the requests through the router that did not get a 200 while it was away. The swarm
# controller takes over the process's data dir and controller id, so it adopts the same instances.
#
#   bench/swarm.sh                                   # release binaries (built first)
#   BENCH_NO_BUILD=1 BENCH_BIN_DIR=target/debug bench/swarm.sh
#   ROUNDS=9 ...
# Needs root (iptables) and Docker; when Docker is not in a swarm, it runs `docker swarm init` and
# leaves the swarm again at the end.
source "$(dirname "$0")/lib/common.sh"

ROUNDS=${ROUNDS:-5}
bench_setup
cp "${BENCH_BIN_DIR:-$ROOT/target/release}/pier-router" "$BIN/"
RES=$WORK/swarm.tsv
: >"$RES"
SERVICE=pier-controller-$BENCH_ID
SWARM_MADE= IMAGE_MADE= ROUTER_PID=

swarm_cleanup() {
  docker service rm "$SERVICE" >/dev/null 2>&1
  local _
  for _ in $(seq 1 100); do
    [[ -z $(docker ps -aq --filter "label=com.docker.swarm.service.name=$SERVICE") ]] && break
    sleep 0.1
  done
  docker ps -aq --filter "label=com.docker.swarm.service.name=$SERVICE" | xargs -r docker rm -f >/dev/null
  [[ -z $ROUTER_PID ]] || kill "$ROUTER_PID" 2>/dev/null
  [[ -z $IMAGE_MADE ]] || docker image rm -f "$IMAGE_MADE" >/dev/null
  if [[ -n $SWARM_MADE ]]; then
    docker swarm leave --force >/dev/null
    docker network rm docker_gwbridge >/dev/null 2>&1
  fi
}
trap 'rc=$?; set +e; swarm_cleanup; (exit $rc); bench_cleanup' EXIT

if [[ $(docker info --format '{{.Swarm.LocalNodeState}}') != active ]]; then
  docker swarm init >/dev/null
  SWARM_MADE=1
  log "docker swarm init (left again at the end)"
fi
IMAGE=$("$BIN/pier-controller" platform-image)
docker image inspect "$IMAGE" >/dev/null 2>&1 || IMAGE_MADE=$IMAGE
"$BIN/pier-controller" build-platform-image --if-missing >/dev/null

whoami() {
  curl -s -o /dev/null -w '%{http_code}' -m 1 -H "Authorization: Bearer $TOKEN" \
    "http://127.0.0.1:$API_PORT/v1/whoami" || true
}

# Requests through the router, one at a time, until $WORK/stop exists; "OK BAD" in $WORK/traffic.
traffic() {
  local ok=0 bad=0 code
  while [[ ! -f $WORK/stop ]]; do
    code=$(curl -s -o /dev/null -w '%{http_code}' -m 5 -H 'Host: hello.localhost' \
      "http://127.0.0.1:$RPORT/" || true)
    if [[ $code == 200 ]]; then ok=$((ok + 1)); else bad=$((bad + 1)); fi
  done
  echo "$ok $bad" >"$WORK/traffic"
}

# round MODE KILL-COMMAND...: kills, waits for the API to go and to answer again, records.
round() {
  local mode=$1 t0 pid
  shift
  rm -f "$WORK/stop" "$WORK/traffic"
  traffic &
  pid=$!
  sleep 1
  t0=$EPOCHREALTIME
  "$@"
  while [[ $(whoami) == 200 ]]; do sleep 0.01; done
  [[ $mode != process ]] || { : >"$WORK/controller.log"; start_controller; }
  until [[ $(whoami) == 200 ]]; do sleep 0.01; done
  local took
  took=$(dt "$t0" "$EPOCHREALTIME")
  sleep 1
  touch "$WORK/stop"
  wait "$pid"
  read -r ok bad <"$WORK/traffic"
  printf '%s\t%s\t%s\t%s\n' "$mode" "$took" "$ok" "$bad" >>"$RES"
  log "$mode: API back after $took s; requests through the router: $ok ok, $bad failed"
}

kill_process() { kill -KILL "$CONTROLLER_PID"; wait "$CONTROLLER_PID" 2>/dev/null || true; }
kill_task() {
  docker kill "$(docker ps -q --filter "label=com.docker.swarm.service.name=$SERVICE")" >/dev/null
}

start_controller
APP=$WORK/app
cp -r "$ROOT/examples/python-app" "$APP"
(cd "$APP" && "$BIN/pier" push hello -i 2 >"$WORK/push.log" 2>&1) || { tail -20 "$WORK/push.log" >&2; exit 1; }
RPORT=$(free_port)
"$BIN/pier-router" --listen "127.0.0.1:$RPORT" --controller "http://127.0.0.1:$API_PORT" \
  --token-file "$WORK/data/router-token" >"$WORK/router.log" 2>&1 &
ROUTER_PID=$!
for _ in $(seq 1 300); do
  [[ $(curl -s -o /dev/null -w '%{http_code}' -H 'Host: hello.localhost' "http://127.0.0.1:$RPORT/") == 200 ]] && break
  sleep 0.05
done

for r in $(seq 1 "$ROUNDS"); do round process kill_process; done
kill -TERM "$CONTROLLER_PID"
wait "$CONTROLLER_PID" || true
CONTROLLER_PID=

docker service create --detach --quiet --name "$SERVICE" --container-label "pier.bench=$BENCH_ID" \
  --network host --restart-condition any --restart-delay 0s --stop-grace-period 20s \
  --cap-add NET_ADMIN \
  --mount type=bind,source=/var/run/docker.sock,target=/var/run/docker.sock \
  --mount "type=bind,source=$WORK/data,target=$WORK/data" \
  "$IMAGE" pier-controller --data-dir "$WORK/data" --listen "127.0.0.1:$API_PORT" \
  --router-listen none --controller-id "$BENCH_ID" --stack-image "$STACK_IMAGE" \
  --build-stack false >/dev/null 2>"$WORK/service.log" || { cat "$WORK/service.log" >&2; exit 1; }
until [[ $(whoami) == 200 ]]; do sleep 0.05; done
for r in $(seq 1 "$ROUNDS"); do round swarm kill_task; done

summary() { # summary MODE: "median min max n" of the times, then the failed requests in all
  awk -F'\t' -v m="$1" '$1 == m { print $2 }' "$RES" | stats
}
P=$(summary process) S=$(summary swarm)
FAILED=$(awk -F'\t' '{ f += $4 } END { print f + 0 }' "$RES")
RATIO=$(awk -v s="${S%% *}" -v p="${P%% *}" 'BEGIN { printf "%.2f", s / p }')
echo "controller killed → API answering again, $ROUNDS rounds each (median min max n):"
echo "  process restarted at once: $P s"
echo "  Swarm service task:        $S s   (${RATIO}× the process)"
echo "requests through the router that failed, all rounds: $FAILED"
echo "rev $GIT_REV, bench/swarm.sh"
