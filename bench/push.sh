#!/usr/bin/env bash
# Push benchmark (issue 2): `pier push` of examples/python-app, cold (first push of a new app name)
# and warm (re-push of unchanged source), timed from the command's start to an HTTP 200 through the
# router, next to the floor (`docker run` of the same stack image until its port answers 200).
#
#   bench/push.sh              # 7 interleaved rounds; writes the "Push" section of BENCHMARKS.md
#   ROUNDS=9 bench/push.sh
#   BENCH_NO_BUILD=1 ...       # use target/release as it is
#   BENCH_NO_WRITE=1 ...       # print the section instead of writing BENCHMARKS.md
#
# Each round runs, in this order:
#   floor       docker run --user vcap --cap-drop ALL -p 127.0.0.1:PORT:8080 STACK python3 -m http.server 8080
#   pier cold   pier push bench-cold-R       (PIER_API/PIER_TOKEN, PIER_HOME in a temp dir)
#   pier warm   pier push bench-cold-R again (unchanged source)
#   curl cold   the CLI's steps with curl, each timed: pack, POST /v1/packages, PUT /v1/apps/NAME,
#               POST /v1/apps/NAME/builds (NDJSON until `done`), POST .../actions/start, router 200
#   curl warm   the same again for the same app
# then deletes both apps and waits until their containers are gone.
source "$(dirname "$0")/lib/common.sh"

ROUNDS=${ROUNDS:-7}
APP_DIR=$ROOT/examples/python-app
bench_setup
start_controller
RES=$WORK/push.tsv
: >"$RES"

router_200() { # router_200 HOST: poll until 200; quick, like the CLI user would with curl
  local host=$1 deadline=$((SECONDS + 120))
  until [[ $(curl -s -o /dev/null -w '%{http_code}' -H "Host: $host" "http://127.0.0.1:$ROUTER_PORT/") == 200 ]]; do
    [[ $SECONDS -lt $deadline ]] || { echo "no 200 from $host" >&2; return 1; }
    sleep 0.005
  done
}

running_on() { # running_on APP DROPLET: poll the API until every desired web instance runs DROPLET
  local app=$1 droplet=$2 deadline=$((SECONDS + 120))
  until api GET "/v1/apps/$app" | jq -e --arg d "$droplet" '
      ([.processes[] | select(.type == "web") | .instances][0]) as $want
      | [.instances[] | select(.process == "web" and .state == "RUNNING" and .droplet == $d)] | length >= $want' >/dev/null; do
    [[ $SECONDS -lt $deadline ]] || { echo "$app never ran $droplet" >&2; return 1; }
    sleep 0.01
  done
}

floor() {
  local out
  out=$($TOOL floor --n 1 -- docker run -d --rm --label "pier.bench=$BENCH_ID" --user vcap --cap-drop ALL \
    --security-opt no-new-privileges -w /tmp -p '127.0.0.1:{port}:8080' "$STACK_IMAGE" python3 -m http.server 8080)
  jq -e .ok <<<"$out" >/dev/null || { echo "floor failed: $out" >&2; exit 1; }
  printf 'floor\t%s\t%s\t%s\n' "$1" "$(jq -r .all_ready <<<"$out")" "$(cut -d' ' -f1 /proc/loadavg)" >>"$RES"
  docker rm -f $(docker ps -q --filter "label=pier.bench=$BENCH_ID") >/dev/null
}

pier_push() { # pier_push KIND ROUND APP
  local kind=$1 r=$2 app=$3 out
  # Warm: the old instance answers 200 all along; polling it every 5 ms would load the machine
  # (the app logs every request), so poll every 100 ms until the command returns, then every 5 ms.
  local slow=()
  [[ $kind == warm ]] && slow=(--poll-before-exit 0.1)
  out=$($TOOL timed-run --router-port "$ROUTER_PORT" --host "$app.localhost" --cwd "$APP_DIR" "${slow[@]}" \
    -- "$BIN/pier" push "$app")
  [[ $(jq .rc <<<"$out") == 0 ]] || { echo "pier push $app failed: $out" >&2; exit 1; }
  # total: cold = first 200 (the router answers nothing for a new name before); warm = first 200 on
  # a request sent after `pier push` returned (the old instance answers 200 throughout a re-push).
  jq -r --arg k "pier-$kind" --arg r "$r" '[$k, $r,
      (if $k == "pier-cold" then .first_200 else .first_200_after_exit end), .exit, .uploaded,
      (.staged - .uploaded), ((if $k == "pier-cold" then .first_200 else .first_200_after_exit end) - .staged),
      ((.statuses | to_entries | map(select(.key != "200")) | map("\(.key)x\(.value)") | join(",")) | if . == "" then "-" else . end)]
    | map(if type == "number" then (. * 1000 | round / 1000) else . end) | @tsv' <<<"$out" >>"$RES"
}

curl_push() { # curl_push KIND ROUND APP
  local kind=$1 r=$2 app=$3 t0 t1 t2 t3 t4 t5 t6 sha droplet
  t0=$EPOCHREALTIME
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$APP_DIR" --exclude=.git -cf - . |
    gzip -1 -n >"$WORK/pkg.tgz"
  t1=$EPOCHREALTIME
  sha=$(curl -sS -f -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/gzip' \
    --data-binary "@$WORK/pkg.tgz" "http://127.0.0.1:$API_PORT/v1/packages" | jq -r .sha256)
  t2=$EPOCHREALTIME
  api PUT "/v1/apps/$app" '{}' >/dev/null
  t3=$EPOCHREALTIME
  droplet=$(curl -sS -f -N -X POST -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
    --data "{\"package\":\"$sha\"}" "http://127.0.0.1:$API_PORT/v1/apps/$app/builds" |
    while IFS= read -r line; do
      case $line in
        '{"done"'*) jq -r .done.sha256 <<<"$line"; break ;;
        '{"error"'*) echo "staging failed: $line" >&2; break ;;
      esac
    done)
  t4=$EPOCHREALTIME
  [[ -n $droplet ]] || exit 1
  api POST "/v1/apps/$app/actions/start" >/dev/null
  t5=$EPOCHREALTIME
  # Cold: nothing answers for this name before its first instance, so the router's first 200 is
  # the new one. Warm: the old instance answers throughout, so wait (as the CLI does) until the API
  # lists the new droplet RUNNING, then for a 200.
  [[ $kind == cold ]] || running_on "$app" "$droplet"
  router_200 "$app.localhost"
  t6=$EPOCHREALTIME
  # The controller's side, from its log lines for this app (CELL, STG, API and the app's own).
  steps=$(api GET "/v1/apps/$app/logs" | $TOOL steps --t0 "$t0" --end "$t6" || printf -- '-\t-\t-\t-\t-\t-')
  printf 'curl-%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$kind" "$r" "$(dt "$t0" "$t6")" "$(dt "$t0" "$t1")" \
    "$(dt "$t1" "$t2")" "$(dt "$t2" "$t3")" "$(dt "$t3" "$t4")" "$(dt "$t4" "$t5")" "$(dt "$t5" "$t6")" "$steps" >>"$RES"
}

delete_app() {
  api DELETE "/v1/apps/$1" >/dev/null
  for _ in $(seq 1 300); do
    [[ -z $(docker ps -aq --filter "label=pier.controller=$BENCH_ID" --filter "label=pier.app=$1") ]] && return
    sleep 0.1
  done
  echo "containers of $1 still there after delete" >&2
}

# One throwaway push first so the page cache, Docker and the controller are warm for round 1.
log "warm-up push"
(cd "$APP_DIR" && "$BIN/pier" push bench-warmup >/dev/null)
delete_app bench-warmup

for r in $(seq 1 "$ROUNDS"); do
  quiet_gate "$r"
  floor "$r"
  pier_push cold "$r" "pier-$r"
  pier_push warm "$r" "pier-$r"
  curl_push cold "$r" "curl-$r"
  curl_push warm "$r" "curl-$r"
  delete_app "pier-$r"
  delete_app "curl-$r"
done
mkdir -p "$BENCH/results"
cp "$RES" "$BENCH/results/push.tsv"

# ---- report ----------------------------------------------------------------------------------
col() { awk -F'\t' -v k="$1" -v c="$2" '$1 == k { print $c }' "$RES"; }
fmt() { # fmt KIND COL -> "median (min–max)"
  local s; read -r med lo hi _ <<<"$(col "$1" "$2" | stats)"; printf '%s s (%s–%s)' "$med" "$lo" "$hi"
}
med() { col "$1" "$2" | stats | cut -d' ' -f1; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f×", a / b }'; }
FLOOR=$(med floor 3)
WARM=$(med pier-warm 3)
COLD=$(med pier-cold 3)
VERDICT=$(awk -v w="$WARM" 'BEGIN { print (w <= 3.0) ? "**met**" : "**missed**" }')
NON200_WARM=$(col pier-warm 8 | grep -v '^-$' | paste -sd' ' || true)

section=$(cat <<EOF
Command: \`bench/push.sh\` (ROUNDS=$ROUNDS, interleaved; $(date -u +%Y-%m-%d), rev $GIT_REV, $(nproc) cores,
Docker $(docker version -f '{{.Server.Version}}'), storage driver $(docker info -f '{{.Driver}}')). Release builds; a
throwaway controller (temp data dir, free ports, built-in router, \`--controller-id bench-…\`).
Medians over $ROUNDS rounds, (min–max). The machine is shared with other sessions' builds and
benchmarks: $(gate_summary).

| what (examples/python-app) | median (min–max) | × floor |
|---|---|---|
| floor: \`docker run\` of $STACK_IMAGE (\`--user vcap --cap-drop ALL\`, port on 127.0.0.1, \`python3 -m http.server\`) until 200 | $(fmt floor 3) | 1× |
| \`pier push\` cold (new app name), start → first 200 through the router | $(fmt pier-cold 3) | $(ratio "$COLD" "$FLOOR") |
| \`pier push\` warm (unchanged source, app running), start → 200 after the command returned | $(fmt pier-warm 3) | $(ratio "$WARM" "$FLOOR") |

Warm-push target (median ≤ 3 s): $VERDICT ($WARM s).

Breakdown from the timestamps of \`pier push\`'s own output lines (upload = start → "Uploaded package";
staging = → "Starting NAME..."; start = → the 200 above):

| pier push | upload | staging | start (→ 200) | command returned |
|---|---|---|---|---|
| cold | $(fmt pier-cold 5) | $(fmt pier-cold 6) | $(fmt pier-cold 7) | $(fmt pier-cold 4) |
| warm | $(fmt pier-warm 5) | $(fmt pier-warm 6) | $(fmt pier-warm 7) | $(fmt pier-warm 4) |

Breakdown from the CLI's steps replayed with curl in a separate timed push of another app (pack with
\`tar | gzip -1 -n\`; \`POST /v1/packages\`; \`PUT /v1/apps/NAME\`; \`POST /v1/apps/NAME/builds\` read until the
\`done\` line; \`POST /v1/apps/NAME/actions/start\`; then (warm only) \`GET /v1/apps/NAME\` until the new
droplet is RUNNING, and curl through the router every 5 ms until 200):

| curl replay | total | pack | upload | PUT app | staging | start action | → 200 |
|---|---|---|---|---|---|---|---|
| cold | $(fmt curl-cold 3) | $(fmt curl-cold 4) | $(fmt curl-cold 5) | $(fmt curl-cold 6) | $(fmt curl-cold 7) | $(fmt curl-cold 8) | $(fmt curl-cold 9) |
| warm | $(fmt curl-warm 3) | $(fmt curl-warm 4) | $(fmt curl-warm 5) | $(fmt curl-warm 6) | $(fmt curl-warm 7) | $(fmt curl-warm 8) | $(fmt curl-warm 9) |

The same curl pushes from the controller's side, from its own log lines (\`GET /v1/apps/NAME/logs\`:
API, STG, CELL and the app's "listening on port" line):

| curl replay | staging container up (→ first STG line) | buildpack (→ "Packing the droplet") | droplet stored (→ "staged") | instance container create+copy+start (CELL) | app boot (→ app's "listening" line) | → 200 / RUNNING after "listening" |
|---|---|---|---|---|---|---|
| cold | $(fmt curl-cold 10) | $(fmt curl-cold 11) | $(fmt curl-cold 12) | $(fmt curl-cold 13) | $(fmt curl-cold 14) | $(fmt curl-cold 15) |
| warm | $(fmt curl-warm 10) | $(fmt curl-warm 11) | $(fmt curl-warm 12) | $(fmt curl-warm 13) | $(fmt curl-warm 14) | $(fmt curl-warm 15) |

Non-200 answers seen by the router poller (every 100 ms until the command returned) during warm pushes: ${NON200_WARM:-none}.

<details><summary>Raw rows (bench/results/push.tsv)</summary>

\`\`\`
gate       round cpu_idle waited_s
floor      round ready load1
kind       round total exit upload staging start non200   (pier rows)
kind       round total pack upload put staging start_action to_200 stg_container buildpack droplet inst_container app_boot after_listening   (curl rows)
$(cat "$RES")
\`\`\`
</details>
EOF
)
if [[ -n ${BENCH_NO_WRITE:-} ]]; then
  echo "$section"
else
  $TOOL section --file "$ROOT/BENCHMARKS.md" --key push --title Push <<<"$section"
  log "wrote the Push section of BENCHMARKS.md"
  echo "$section"
fi
