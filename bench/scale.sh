#!/usr/bin/env bash
# Scale and restart benchmark (issue 3).
#
#   bench/scale.sh             # writes the "Scale" section of BENCHMARKS.md
#   ROUNDS=5 RESTART_ROUNDS=5 RESTART_INSTANCES=50 RESTART_SIGNAL=KILL bench/scale.sh
#   BENCH_NO_BUILD=1 / BENCH_NO_WRITE=1 as for bench/push.sh
#   STANDBY=9 bench/scale.sh   # the same with `--standby-instances 9` (its own section): each
#                              # round waits for the 9 standby instances before scaling
#
# Part 1, ROUNDS interleaved rounds of:
#   floor   10 parallel `docker run -d --user vcap --cap-drop ALL -p 127.0.0.1:PORT:8080 STACK
#           python3 -m http.server 8080` until all 10 ports answer 200
#   scale   push examples/python-app as scale-R with 1 instance (not timed), then scale it to 10
#           (`pier scale NAME -i 10` when the CLI has it, else PUT /v1/apps/NAME {"instances":10})
#           until the router has answered with all ten `instance=K` (polled every 5 ms) and
#           GET /v1/apps/NAME lists 10 RUNNING; then back to 1 (timed for information, 30 s at
#           most) and delete the app.
# Part 2: scale to RESTART_INSTANCES (50), then RESTART_ROUNDS times: kill -$RESTART_SIGNAL the
#   controller, start it again on the same data dir and ports, and time until the API lists all
#   RUNNING, GET /v1/routes has them all and the router answers 200; then check with `docker inspect`
#   that every instance container has the same id, StartedAt and RestartCount as before and that no
#   container was added.
source "$(dirname "$0")/lib/common.sh"

ROUNDS=${ROUNDS:-5}
RESTART_ROUNDS=${RESTART_ROUNDS:-5}
RESTART_INSTANCES=${RESTART_INSTANCES:-50}
RESTART_SIGNAL=${RESTART_SIGNAL:-KILL}
STANDBY=${STANDBY:-0}
CMDLINE=bench/scale.sh
if [[ $STANDBY -gt 0 ]]; then CONTROLLER_ARGS="--standby-instances $STANDBY" CMDLINE="STANDBY=$STANDBY bench/scale.sh"; fi
APP_DIR=$ROOT/examples/python-app
bench_setup
start_controller
RES=$WORK/scale.tsv
: >"$RES"

APP=
containers() { docker ps -aq --no-trunc --filter "label=pier.controller=$BENCH_ID" --filter "label=pier.app=$APP" --filter "label=pier.kind=instance"; }
running() { api GET "/v1/apps/$APP" | jq '[.instances[] | select(.state == "RUNNING")] | length'; }

standby_ready() { api GET "/v1/apps/$APP" | jq '.standby_ready // 0'; }

wait_instances() { # wait_instances N [TIMEOUT]: API lists N RUNNING and exactly N containers exist
  # (N + STANDBY with standby instances, which must be ready too)
  local n=$1 deadline=$((SECONDS + ${2:-300}))
  until [[ $(running) == "$n" && $(containers | wc -l) == "$((n + STANDBY))" && $(standby_ready) == "$STANDBY" ]]; do
    if [[ $SECONDS -ge $deadline ]]; then
      echo "$APP never reached $n RUNNING instances with $n containers; the API says:" >&2
      api GET "/v1/apps/$APP" | jq -c '.instances[] | {index, state, reason, container_id}' >&2
      docker ps -a --filter "label=pier.controller=$BENCH_ID" --filter "label=pier.app=$APP" --format '{{.ID}} {{.Status}} {{.Names}}' >&2
      return 1
    fi
    sleep 0.2
  done
}

snapshot() { # id, StartedAt, RestartCount of every instance container, sorted
  containers | xargs -r docker inspect -f '{{.Id}} {{.State.StartedAt}} {{.RestartCount}} {{.State.Running}}' | sort
}

delete_app() { # delete APP and wait until its containers are gone; force-remove leftovers (noted)
  api DELETE "/v1/apps/$APP" >/dev/null
  local deadline=$((SECONDS + 60))
  while [[ -n $(containers) ]]; do
    if [[ $SECONDS -ge $deadline ]]; then
      echo "$(containers | wc -l) containers of $APP left 60 s after DELETE; removing them" >&2
      LEFT_AFTER_DELETE=$((LEFT_AFTER_DELETE + $(containers | wc -l)))
      containers | xargs -r docker rm -f >/dev/null
    fi
    sleep 0.2
  done
}
LEFT_AFTER_DELETE=0

if "$BIN/pier" scale --help >/dev/null 2>&1; then
  SCALE_HOW="pier scale NAME -i 10"
else
  SCALE_HOW="PUT /v1/apps/NAME {\"instances\":10}"
fi

for r in $(seq 1 "$ROUNDS"); do
  quiet_gate "$r"
  log "round $r/$ROUNDS: floor"
  out=$($TOOL floor --n 10 -- docker run -d --rm --label "pier.bench=$BENCH_ID" --user vcap --cap-drop ALL \
    --security-opt no-new-privileges -w /tmp -p '127.0.0.1:{port}:8080' "$STACK_IMAGE" python3 -m http.server 8080)
  jq -e .ok <<<"$out" >/dev/null || { echo "floor failed: $out" >&2; exit 1; }
  printf 'floor10\t%s\t%s\t%s\t%s\n' "$r" "$(jq -r .all_ready <<<"$out")" "$(jq -r .first_ready <<<"$out")" \
    "$(cut -d' ' -f1 /proc/loadavg)" >>"$RES"
  docker rm -f $(docker ps -q --filter "label=pier.bench=$BENCH_ID") >/dev/null
  sleep 1

  APP=scale-$r
  log "round $r/$ROUNDS: push $APP (1 instance), then scale 1 → 10 ($SCALE_HOW)"
  (cd "$APP_DIR" && "$BIN/pier" push "$APP" -i 1 >/dev/null)
  wait_instances 1
  sleep 1
  if [[ $SCALE_HOW == pier* ]]; then SCALE_CMD=("$BIN/pier" scale "$APP" -i 10); else SCALE_CMD=(); fi
  out=$($TOOL scale --api-port "$API_PORT" --router-port "$ROUTER_PORT" --token "$TOKEN" --app "$APP" \
    --host "$APP.localhost" --n 10 -- "${SCALE_CMD[@]}")
  jq -e '.all_routed != null and .all_running != null' <<<"$out" >/dev/null || { echo "scale failed: $out" >&2; exit 1; }
  # Reading the app with 10 instances: GET /v1/apps/NAME (curl's own time_total) and the whole
  # `pier app NAME --json` process, 30 times each, interleaved.
  for _ in $(seq 1 30); do
    t=$(curl -sS -f -o /dev/null -w '%{time_total}' -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$API_PORT/v1/apps/$APP")
    printf 'get10\t%s\t%s\n' "$r" "$(awk -v t="$t" 'BEGIN { printf "%.3f", t * 1000 }')" >>"$RES"
    t0=$EPOCHREALTIME
    "$BIN/pier" app "$APP" --json >/dev/null
    printf 'cli10\t%s\t%s\n' "$r" "$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", (b - a) * 1000 }')" >>"$RES"
  done
  # Disk: what each instance container wrote itself (SizeRw), against the droplet layer of the
  # image they share (app image size - stack image size), which each instance used to copy.
  IMG=$(containers | head -1 | xargs docker inspect -f '{{.Config.Image}}')
  LAYER=$(( $(docker image inspect -f '{{.Size}}' "$IMG") - $(docker image inspect -f '{{.Size}}' "$STACK_IMAGE") ))
  containers | xargs docker inspect --size -f '{{.SizeRw}}' | while read -r rw; do
    printf 'disk10\t%s\t%s\t%s\n' "$r" "$rw" "$LAYER" >>"$RES"
  done
  # Back to 1 (not part of the figure): does the scale-down converge within 30 s?
  t0=$EPOCHREALTIME
  api PUT "/v1/apps/$APP" '{"instances":1}' >/dev/null
  if wait_instances 1 30; then down=$(dt "$t0" "$EPOCHREALTIME"); else down="stuck:$(($(containers | wc -l) - 1))"; fi
  jq -r --arg r "$r" --arg l "$(cut -d' ' -f1 /proc/loadavg)" --arg down "$down" '["scale10", $r,
      ([.all_routed, .all_running] | max), .all_routed, .all_running, .answered, $l,
      ((.statuses | to_entries | map(select(.key != "200")) | map("\(.key)x\(.value)") | join(",")) | if . == "" then "-" else . end),
      $down, .steps.created_first, .steps.containers_started, .steps.apps_listening, .steps.healthy]
    | map(if type == "number" then (. * 1000 | round / 1000) else . end) | @tsv' <<<"$out" >>"$RES"
  delete_app
  sleep 1
done

APP=restart
log "pushing $APP (1 instance)"
(cd "$APP_DIR" && "$BIN/pier" push "$APP" -i 1 >/dev/null)
wait_instances 1
log "scaling to $RESTART_INSTANCES instances for the restart rounds"
t0=$EPOCHREALTIME
api PUT "/v1/apps/$APP" "{\"instances\":$RESTART_INSTANCES}" >/dev/null
wait_instances "$RESTART_INSTANCES" 600 || exit 1
SCALE50=$(dt "$t0" "$EPOCHREALTIME")
log "$RESTART_INSTANCES RUNNING after $SCALE50 s"
sleep 2

for r in $(seq 1 "$RESTART_ROUNDS"); do
  quiet_gate "restart-$r"
  before=$(snapshot)
  [[ $(wc -l <<<"$before") == "$((RESTART_INSTANCES + STANDBY))" ]] || { echo "expected $((RESTART_INSTANCES + STANDBY)) containers" >&2; exit 1; }
  log "restart round $r/$RESTART_ROUNDS: kill -$RESTART_SIGNAL the controller, start it again"
  kill "-$RESTART_SIGNAL" "$CONTROLLER_PID"
  while kill -0 "$CONTROLLER_PID" 2>/dev/null; do sleep 0.02; done
  wait "$CONTROLLER_PID" 2>/dev/null || true
  # shellcheck disable=SC2046
  out=$($TOOL restart --api-port "$API_PORT" --router-port "$ROUTER_PORT" --token "$TOKEN" --app "$APP" \
    --host "$APP.localhost" --n "$RESTART_INSTANCES" --log "$WORK/controller.log" --pidfile "$WORK/controller.pid" \
    -- $(controller_cmd))
  CONTROLLER_PID=$(cat "$WORK/controller.pid")
  jq -e '.converged != null' <<<"$out" >/dev/null || { echo "no convergence: $out" >&2; exit 1; }
  sleep 3 # let anything that would restart an instance happen before comparing
  after=$(snapshot)
  if [[ $before == "$after" ]]; then restarts=0; else
    restarts=$(comm -13 <(echo "$before") <(echo "$after") | wc -l)
    [[ $restarts -gt 0 ]] || restarts="changed"
    diff <(echo "$before") <(echo "$after") >&2 || true
  fi
  jq -r --arg r "$r" --arg x "$restarts" --arg l "$(cut -d' ' -f1 /proc/loadavg)" '["restart", $r,
      .converged, .api_up, .all_running, .table_has_all, .first_200, $x, $l]
    | map(if type == "number" then (. * 1000 | round / 1000) else . end) | @tsv' <<<"$out" >>"$RES"
done
mkdir -p "$BENCH/results"
TSV=scale.tsv; [[ $STANDBY -gt 0 ]] && TSV=scale-standby.tsv
cp "$RES" "$BENCH/results/$TSV"

# ---- report ----------------------------------------------------------------------------------
col() { awk -F'\t' -v k="$1" -v c="$2" '$1 == k { print $c }' "$RES"; }
fmt() { local med lo hi; read -r med lo hi _ <<<"$(col "$1" "$2" | stats)"; printf '%s s (%s–%s)' "$med" "$lo" "$hi"; }
med() { col "$1" "$2" | stats | cut -d' ' -f1; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf (a / b < 1 ? "%.2f×" : "%.1f×"), a / b }'; }
pct() { col "$1" "$2" | sort -g | awk -v p="$3" '{ v[NR] = $1 } END { i = int(NR * p + 0.999); if (i < 1) i = 1; print v[i] }'; }
ms() { awk -v s="$1" 'BEGIN { printf "%.1f ms", s }'; }
GET10_MED=$(med get10 3)
FLOOR=$(med floor10 3)
SCALE=$(med scale10 3)
RESTART=$(med restart 3)
verdict() { awk -v x="$1" -v t="$2" 'BEGIN { print (x <= t) ? "**met**" : "**missed**" }'; }
RESTARTS=$(col restart 8 | sort | uniq -c | awk '{ printf "%s%s round(s) with %s", sep, $1, $2; sep = ", " }')
NON200=$(col scale10 8 | grep -v '^-$' | paste -sd' ' || true)
DOWN=$(col scale10 9 | paste -sd' ')

section=$(cat <<EOF
Command: \`$CMDLINE\` (ROUNDS=$ROUNDS, RESTART_ROUNDS=$RESTART_ROUNDS, RESTART_INSTANCES=$RESTART_INSTANCES,
RESTART_SIGNAL=$RESTART_SIGNAL; $(date -u +%Y-%m-%d), rev $GIT_REV, $(nproc) cores, Docker $(docker version -f '{{.Server.Version}}'),
storage driver $(docker info -f '{{.Driver}}')). Release builds; a throwaway controller (temp data dir, free ports, built-in
router, \`--controller-id bench-…\`). examples/python-app, 256 MiB per instance. Medians, (min–max). The machine is shared with other
sessions' builds and benchmarks: $(gate_summary).

| what | median (min–max) | × floor |
|---|---|---|
| floor: 10 parallel \`docker run -d\` of $STACK_IMAGE (\`--user vcap --cap-drop ALL\`, port on 127.0.0.1, \`python3 -m http.server\`) until all 10 ports answer 200 | $(fmt floor10 3) | 1× |
| scale 1 → 10 (\`$SCALE_HOW\`) until all 10 \`instance=K\` came through the router and the API lists 10 RUNNING | $(fmt scale10 3) | $(ratio "$SCALE" "$FLOOR") |
| … of which: until all 10 seen through the router | $(fmt scale10 4) | |
| … of which: until the API lists 10 RUNNING | $(fmt scale10 5) | |
| … the scale request itself returned | $(fmt scale10 6) | |
| … controller's log: first "Creating instance" line | $(fmt scale10 10) | |
| … controller's log: last "Started container" (create + start of all 10) | $(fmt scale10 11) | |
| … app's log: last "listening on port" (Python boot of all 10) | $(fmt scale10 12) | |
| … controller's log: last "running and healthy" | $(fmt scale10 13) | |
| \`GET /v1/apps/NAME\` with 10 instances (curl's time_total; $(col get10 3 | wc -l) requests) | median $(ms "$GET10_MED"), p99 $(ms "$(pct get10 3 0.99)") | |
| \`pier app NAME --json\` with 10 instances (the whole CLI process) | median $(ms "$(med cli10 3)"), p99 $(ms "$(pct cli10 3 0.99)") | |
| disk written by each instance container itself (\`SizeRw\`), against the droplet layer it no longer copies | median $(med disk10 3 | cut -d. -f1) B per instance; droplet layer $(med disk10 4 | cut -d. -f1) B, shared | |
| restart the controller (kill -$RESTART_SIGNAL, start again on the same data dir) with $RESTART_INSTANCES running instances, until converged (API: all RUNNING, GET /v1/routes: all $RESTART_INSTANCES backends, router: 200) | $(fmt restart 3) | |
| … of which: API answering | $(fmt restart 4) | |
| … of which: API lists all $RESTART_INSTANCES RUNNING | $(fmt restart 5) | |
| … of which: route table has all $RESTART_INSTANCES | $(fmt restart 6) | |
| … of which: first 200 through the router | $(fmt restart 7) | |

Scale 1 → 10 target (≤ 0.5× the floor): $(verdict "$SCALE" "$(awk -v f="$FLOOR" 'BEGIN { print f / 2 }')") ($(ratio "$SCALE" "$FLOOR")).
\`GET /v1/apps/NAME\` target (median ≤ 50 ms): $(verdict "$GET10_MED" 50). Restart target (≤ 2 s): $(verdict "$RESTART" 2) ($RESTART s).
Instance restarts across the controller restarts (container ids, StartedAt and RestartCount compared
with \`docker inspect\` 3 s after convergence): $RESTARTS. Scaling 1 → $RESTART_INSTANCES took $SCALE50 s (one run).
Non-200 answers seen while scaling up: ${NON200:-none}.
Scale 10 → 1 until 1 RUNNING and 1 container left, per round (s, or \`stuck:N\` = N extra instances
still there after 30 s): $DOWN. Containers force-removed after a DELETE left them for 60 s: $LEFT_AFTER_DELETE.

<details><summary>Raw rows (bench/results/$TSV)</summary>

\`\`\`
gate     round cpu_idle waited_s
floor10  round all_ready first_ready load1
scale10  round converged all_routed all_running answered load1 non200 scale_down created_first containers_started apps_listening healthy
disk10   round size_rw droplet_layer
restart  round converged api_up all_running table_has_all first_200 restarts load1
(get10 and cli10 rows: round, ms; in bench/results/$TSV)
$(grep -v -E '^(get10|cli10)' "$RES")
\`\`\`
</details>
EOF
)
if [[ -n ${BENCH_NO_WRITE:-} ]]; then
  echo "$section"
else
  if [[ $STANDBY -gt 0 ]]; then
    $TOOL section --file "$ROOT/BENCHMARKS.md" --key scale-standby \
      --title "Scale with standby instances (--standby-instances $STANDBY)" <<<"$section"
  else
    $TOOL section --file "$ROOT/BENCHMARKS.md" --key scale --title Scale <<<"$section"
  fi
  log "wrote the Scale section of BENCHMARKS.md"
  echo "$section"
fi
