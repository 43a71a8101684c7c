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
# Each round runs, in this order (pushes use a copy of the example, so "changed" can edit it):
#   floor         docker run --user vcap --cap-drop ALL -p 127.0.0.1:PORT:8080 STACK python3 -m http.server 8080
#   pier cold     pier push pier-R             (PIER_API/PIER_TOKEN, PIER_HOME in a temp dir)
#   pier warm     pier push pier-R again (unchanged source)
#   pier changed  pier push pier-R again with VERSION edited in app.py (timed to the new version's 200)
#   curl cold/warm/changed  the same for app curl-R, replaying the CLI's steps with curl, each timed:
#                 pack, POST /v1/packages, PUT /v1/apps/NAME, POST /v1/apps/NAME/builds (NDJSON until
#                 `done`), POST .../actions/start, router 200; plus the controller's own log lines
# then deletes both apps and waits until their containers are gone.
source "$(dirname "$0")/lib/common.sh"

ROUNDS=${ROUNDS:-7}
APP_DIR=$ROOT/examples/python-app
bench_setup
start_controller
RES=$WORK/push.tsv
: >"$RES"

router_200() { # router_200 HOST [BODY]: poll until 200 (with BODY in it); quick, like a user with curl
  local host=$1 want=${2:-} deadline=$((SECONDS + 120)) body
  until body=$(curl -sf -H "Host: $host" "http://127.0.0.1:$ROUTER_PORT/") && [[ $body == *"$want"* ]]; do
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
  local kind=$1 r=$2 app=$3 out opts=()
  # Warm/changed: the old instance answers 200 all along; polling it every 5 ms would load the
  # machine (the app logs every request), so poll every 100 ms (warm) or 20 ms (changed: to see the
  # new version appear) until the command returns, then every 5 ms.
  case $kind in
    warm) opts=(--poll-before-exit 0.1) ;;
    changed) opts=(--poll-before-exit 0.02 --expect "version=$(version "$r")") ;;
  esac
  out=$($TOOL timed-run --router-port "$ROUTER_PORT" --host "$app.localhost" --cwd "$SRC" "${opts[@]}" \
    -- "$BIN/pier" push "$app")
  if [[ $(jq .rc <<<"$out") != 0 ]]; then
    echo "pier push $app ($kind) failed: $out" >&2
    printf 'failed\t%s\tpier %s: %s\n' "$r" "$kind" "$(jq -r '.lines | map(.[1]) | map(select(startswith("error"))) | join(" ")' <<<"$out")" >>"$RES"
    return 1
  fi
  # total: cold = first 200 (the router answers nothing for a new name before); warm = first 200 on
  # a request sent after `pier push` returned (the old instance answers 200 throughout a re-push);
  # changed = first 200 from the new version (its body says version=...).
  jq -r --arg k "pier-$kind" --arg r "$r" '
      (if $k == "pier-cold" then .first_200 elif $k == "pier-warm" then .first_200_after_exit else .first_expected end) as $fin
      | [$k, $r, $fin, .exit, .uploaded, (if .staged then .staged - .uploaded else null end),
         (if .staged then $fin - .staged else null end),
         ((.statuses | to_entries | map(select(.key != "200")) | map("\(.key)x\(.value)") | join(",")) | if . == "" then "-" else . end),
         .old_after_exit]
      | map(if type == "number" then (. * 1000 | round / 1000) elif . == null then "-" else . end) | @tsv' <<<"$out" >>"$RES"
}

curl_push() { # curl_push KIND ROUND APP
  local kind=$1 r=$2 app=$3 t0 t1 t2 t3 t4 t5 t6 sha droplet
  t0=$EPOCHREALTIME
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$SRC" --exclude=.git -cf - . |
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
  if [[ -z $droplet ]]; then
    printf 'failed\t%s\tcurl %s: staging failed\n' "$r" "$kind" >>"$RES"
    return 1
  fi
  api POST "/v1/apps/$app/actions/start" >/dev/null
  t5=$EPOCHREALTIME
  # Cold: nothing answers for this name before its first instance, so the router's first 200 is
  # the new one. Warm: wait (as the CLI does) until the API lists the droplet RUNNING, then for a
  # 200. Changed: until a 200 from the new version.
  case $kind in
    cold) router_200 "$app.localhost" ;;
    warm) running_on "$app" "$droplet"; router_200 "$app.localhost" ;;
    changed) router_200 "$app.localhost" "version=$(version "$r")" ;;
  esac
  t6=$EPOCHREALTIME
  # The controller's side, from its log lines for this app (CELL, STG, API and the app's own).
  steps=$(api GET "/v1/apps/$app/logs" | $TOOL steps --t0 "$t0" --end "$t6" || printf -- '-\t-\t-\t-\t-\t-')
  printf 'curl-%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$kind" "$r" "$(dt "$t0" "$t6")" "$(dt "$t0" "$t1")" \
    "$(dt "$t1" "$t2")" "$(dt "$t2" "$t3")" "$(dt "$t3" "$t4")" "$(dt "$t4" "$t5")" "$(dt "$t5" "$t6")" "$steps" >>"$RES"
}

delete_app() {
  api DELETE "/v1/apps/$1" >/dev/null 2>&1 || true
  for _ in $(seq 1 300); do
    [[ -z $(docker ps -aq --filter "label=pier.controller=$BENCH_ID" --filter "label=pier.app=$1") ]] && return
    sleep 0.1
  done
  echo "containers of $1 still there after delete" >&2
}

# The pushes use a copy of the example (identical files), so that `changed` can edit it.
SRC=$WORK/src
cp -r "$APP_DIR" "$SRC"
version() { echo "bench$1"; }
set_version() { sed -i "s/^VERSION = .*/VERSION = \"$1\"/" "$SRC/app.py"; }
ORIG_VERSION=$(sed -n 's/^VERSION = "\(.*\)"/\1/p' "$SRC/app.py")

# One throwaway push first so the page cache, Docker and the controller are warm for round 1.
log "warm-up push"
(cd "$SRC" && "$BIN/pier" push bench-warmup >/dev/null)
delete_app bench-warmup

round() { # a failed push ends its round (recorded as a `failed` row); the next round goes on
  local r=$1
  pier_push cold "$r" "pier-$r" || return 1
  pier_push warm "$r" "pier-$r" || return 1
  set_version "$(version "$r")"
  pier_push changed "$r" "pier-$r" || return 1
  set_version "$ORIG_VERSION"
  curl_push cold "$r" "curl-$r" || return 1
  curl_push warm "$r" "curl-$r" || return 1
  set_version "$(version "$r")"
  curl_push changed "$r" "curl-$r" || return 1
  set_version "$ORIG_VERSION"
}

for r in $(seq 1 "$ROUNDS"); do
  quiet_gate "$r"
  floor "$r"
  round "$r" || log "round $r: a push failed (see the failed row)"
  set_version "$ORIG_VERSION"
  delete_app "pier-$r"
  delete_app "curl-$r"
done
mkdir -p "$BENCH/results"
cp "$RES" "$BENCH/results/push.tsv"

# ---- report ----------------------------------------------------------------------------------
col() { awk -F'\t' -v k="$1" -v c="$2" '$1 == k { print $c }' "$RES"; }
fmt() { # fmt KIND COL -> "median s (min–max)", or "—" without data
  local med lo hi
  read -r med lo hi _ <<<"$(col "$1" "$2" | stats)"
  if [[ $med == n/a ]]; then printf '—'; else printf '%s s (%s–%s)' "$med" "$lo" "$hi"; fi
}
med() { col "$1" "$2" | stats | cut -d' ' -f1; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf (a / b < 1 ? "%.2f×" : "%.1f×"), a / b }'; }
non200() { local x; x=$(col "$1" 8 | grep -v '^-$' | paste -sd' ' || true); echo "${x:-none}"; }
FLOOR=$(med floor 3)
WARM=$(med pier-warm 3)
COLD=$(med pier-cold 3)
CHANGED=$(med pier-changed 3)
VERDICT=$(awk -v w="$WARM" 'BEGIN { print (w <= 3.0) ? "**met**" : "**missed**" }')
OLD_AFTER=$(col pier-changed 9 | awk '{ s += $1 } END { print s + 0 }')
FAILED=$(awk -F'\t' '$1 == "failed" { printf "%sround %s, %s", sep, $2, $3; sep = "; " }' "$RES")

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
| \`pier push\` changed (\`VERSION\` edited in app.py, app running), start → first 200 from the new version | $(fmt pier-changed 3) | $(ratio "$CHANGED" "$FLOOR") |

Warm-push target (median ≤ 3 s): $VERDICT ($WARM s). Failed pushes (their round's other pushes were
skipped): ${FAILED:-none}.

Breakdown from the timestamps of \`pier push\`'s own output lines (upload = start → "Uploaded package";
staging = → "Starting NAME..."; start = → the 200 above):

| pier push | upload | staging | start (→ 200) | command returned |
|---|---|---|---|---|
| cold | $(fmt pier-cold 5) | $(fmt pier-cold 6) | $(fmt pier-cold 7) | $(fmt pier-cold 4) |
| warm | $(fmt pier-warm 5) | $(fmt pier-warm 6) | $(fmt pier-warm 7) | $(fmt pier-warm 4) |
| changed | $(fmt pier-changed 5) | $(fmt pier-changed 6) | $(fmt pier-changed 7) | $(fmt pier-changed 4) |

Breakdown from the CLI's steps replayed with curl in a separate timed push of another app (pack with
\`tar | gzip -1 -n\`; \`POST /v1/packages\`; \`PUT /v1/apps/NAME\`; \`POST /v1/apps/NAME/builds\` read until the
\`done\` line; \`POST /v1/apps/NAME/actions/start\`; then curl through the router every 5 ms until a 200
(cold), until \`GET /v1/apps/NAME\` lists the droplet RUNNING and then a 200 (warm), or until a 200 from
the new version (changed)):

| curl replay | total | pack | upload | PUT app | staging | start action | → 200 |
|---|---|---|---|---|---|---|---|
| cold | $(fmt curl-cold 3) | $(fmt curl-cold 4) | $(fmt curl-cold 5) | $(fmt curl-cold 6) | $(fmt curl-cold 7) | $(fmt curl-cold 8) | $(fmt curl-cold 9) |
| warm | $(fmt curl-warm 3) | $(fmt curl-warm 4) | $(fmt curl-warm 5) | $(fmt curl-warm 6) | $(fmt curl-warm 7) | $(fmt curl-warm 8) | $(fmt curl-warm 9) |
| changed | $(fmt curl-changed 3) | $(fmt curl-changed 4) | $(fmt curl-changed 5) | $(fmt curl-changed 6) | $(fmt curl-changed 7) | $(fmt curl-changed 8) | $(fmt curl-changed 9) |

The same curl pushes from the controller's side, from its own log lines (\`GET /v1/apps/NAME/logs\`:
API, STG, CELL and the app's "listening on port" line):

| curl replay | staging container up (→ first STG line) | buildpack (→ "Packing the droplet") | droplet stored and imaged (→ "staged") | instance container create+start (CELL) | app boot (→ app's "listening" line) | → 200 after "listening" |
|---|---|---|---|---|---|---|
| cold | $(fmt curl-cold 10) | $(fmt curl-cold 11) | $(fmt curl-cold 12) | $(fmt curl-cold 13) | $(fmt curl-cold 14) | $(fmt curl-cold 15) |
| changed | $(fmt curl-changed 10) | $(fmt curl-changed 11) | $(fmt curl-changed 12) | $(fmt curl-changed 13) | $(fmt curl-changed 14) | $(fmt curl-changed 15) |

Router poller during the re-pushes (every 100 ms (warm) or 20 ms (changed) until the command returned,
then every 5 ms): non-200 answers: warm $(non200 pier-warm), changed $(non200 pier-changed); 200s from the
old version on requests sent after \`pier push\` returned (changed, all rounds): $OLD_AFTER.

<details><summary>Raw rows (bench/results/push.tsv)</summary>

\`\`\`
gate       round cpu_idle waited_s
floor      round ready load1
pier-KIND  round total exit upload staging start non200 old_after_exit
curl-KIND  round total pack upload put staging start_action to_200 stg_container buildpack droplet inst_container app_boot after_listening
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
