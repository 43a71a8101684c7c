#!/usr/bin/env bash
# Registry benchmark (issue 16, item 1): what `--registry` adds to `pier push` of
# examples/python-app. The same controller is run twice, first without a registry, then with
# `--registry` on a docker-registry started by scripts/registry on a free loopback port with an
# empty storage; each `pier push` is timed from the command's start to its return (instance
# running):
#   new app 1   the first app pushed (with the registry: its stack layers are uploaded too)
#   new app     ROUNDS more new app names (the registry already has the stack's layers)
#   changed     ROUNDS re-pushes of the first app with VERSION edited (a new droplet layer)
#
#   bench/registry.sh                                   # release binaries (built first)
#   BENCH_NO_BUILD=1 BENCH_BIN_DIR=target/debug bench/registry.sh
#   ROUNDS=5 ...
#   REGISTRY_FIRST=1 ...      # the registry mode first (run both orders: the machine drifts)
source "$(dirname "$0")/lib/common.sh"

ROUNDS=${ROUNDS:-3}
bench_setup
export PIER_REGISTRY_DIR=$WORK/registry PIER_REGISTRY_ADDR=127.0.0.1:$(free_port)
APP=$WORK/app
cp -r "$ROOT/examples/python-app" "$APP"
RES=$WORK/registry.tsv
: >"$RES"

timed_push() { # timed_push MODE KIND APP
  local t0 t1
  t0=$EPOCHREALTIME
  (cd "$APP" && "$BIN/pier" push "$3" >>"$WORK/push.log" 2>&1) || { tail -20 "$WORK/push.log" >&2; exit 1; }
  t1=$EPOCHREALTIME
  printf '%s\t%s\t%s\n' "$1" "$2" "$(dt "$t0" "$t1")" >>"$RES"
  log "$1 $2 $3: $(dt "$t0" "$t1") s"
}

run_mode() { # run_mode MODE
  local mode=$1 r
  : >"$WORK/controller.log"
  start_controller
  sed -i 's/^VERSION = .*/VERSION = "1"/' "$APP/app.py"
  timed_push "$mode" "new app 1" "$mode-a"
  for r in $(seq 1 "$ROUNDS"); do timed_push "$mode" "new app" "$mode-n$r"; done
  for r in $(seq 1 "$ROUNDS"); do
    sed -i "s/^VERSION = .*/VERSION = \"$((r + 1))\"/" "$APP/app.py"
    timed_push "$mode" "changed" "$mode-a"
  done
  # The push itself, as the controller timed it (tag + push, in ms), first push first.
  [[ $mode != registry ]] || PUSH_MS=$(sed 's/\x1b\[[0-9;]*m//g' "$WORK/controller.log" |
    grep -o 'took_ms=[0-9]*' | cut -d= -f2 | tr '\n' ' ' || true)
  for a in "$mode-a" $(seq -f "$mode-n%g" 1 "$ROUNDS"); do "$BIN/pier" delete "$a" -f >/dev/null; done
  kill -TERM "$CONTROLLER_PID"
  wait "$CONTROLLER_PID" || true
  CONTROLLER_PID=
}

[[ -n ${REGISTRY_FIRST:-} ]] || run_mode plain
"$ROOT/scripts/registry" start >&2
EXTRA_PIDS=$(cat "$PIER_REGISTRY_DIR/registry.pid")
CONTROLLER_ARGS="--registry $PIER_REGISTRY_ADDR" run_mode registry
[[ -z ${REGISTRY_FIRST:-} ]] || run_mode plain
log "registry storage: $(du -sh "$PIER_REGISTRY_DIR/data" | cut -f1) before gc"
"$ROOT/scripts/registry" gc >&2
"$ROOT/scripts/registry" stop >&2

echo
echo "| push of examples/python-app | without --registry (s) | with --registry (s) |"
echo "|---|---|---|"
for kind in "new app 1" "new app" "changed"; do
  p=$(awk -F'\t' -v k="$kind" '$1 == "plain" && $2 == k { print $3 }' "$RES" | stats)
  g=$(awk -F'\t' -v k="$kind" '$1 == "registry" && $2 == k { print $3 }' "$RES" | stats)
  echo "| $kind | $p | $g |"
done
echo "(median min max n; rev $GIT_REV)"
echo
echo "the controller's own push times (ms, tag + push, in order): $PUSH_MS"
echo "after them: $(tail -n +2 <<<"${PUSH_MS// /$'\n'}" | grep . | stats) (median min max n, ms)"
