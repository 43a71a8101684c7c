#!/usr/bin/env bash
# Re-push of a running app under load, rolling (Pier's default) against recreate (stop then start,
# what Cloud Foundry's default push does), with 1 and 3 instances: time from `pier push` until every
# instance serves the new version, and failed requests meanwhile (one request in four takes 1 s, so
# draining matters). One command: bench/deploy.sh  (ROUNDS=N, default 3; BENCH_NO_BUILD=1 to skip
# the release build). Also `pier set-env` with 3 instances under the same load (a rolling restart).
source "$(dirname "$0")/lib/common.sh"
bench_setup
start_controller
export ROUTER_PORT BIN WORK
log "rounds: ${ROUNDS:-3}"
python3 "$BENCH/deploy.py" "$ROOT/e2e/fixtures/versioned" | tee "$WORK/deploy.md"
{
  echo "Command: \`bench/deploy.sh\` (rev $GIT_REV, $(date -u +%Y-%m-%d), ${ROUNDS:-3} rounds, medians)."
  echo "App: e2e/fixtures/versioned (Python, one request in four takes 1 s); load: 4 closed-loop"
  echo "workers through the built-in router. \"Re-push\" runs from \`pier push\` (upload, staging,"
  echo "deployment) until every instance answers with the new version. Recreate is the baseline:"
  echo "stop, then start, as Cloud Foundry's default push does. For set-env the time runs from"
  echo "\`pier set-env\` until the API lists 3 RUNNING web instances on the new revision (\"env changed\")."
  echo
  cat "$WORK/deploy.md"
} | $TOOL section --file "$ROOT/BENCHMARKS.md" --key deploy --title "Deployments (re-push under load)"
log "wrote the Deployments section of BENCHMARKS.md"
