#!/usr/bin/env bash
# Stage and run the examples by hand with Docker, the way the controller does (docs/staging.md).
# Needs the image pier-stack:bookworm-v2. Every container/volume it makes carries the label
# pier.test=stack-helper and is removed on exit, even on failure.
#   lifecycle/smoke-test.sh
set -uo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
IMG=${PIER_STACK_IMAGE:-pier-stack:bookworm-v2}
LABEL=pier.test=stack-helper
W=$(mktemp -d "${TMPDIR:-/tmp}/pier-smoke.XXXXXX")
# The instance command: bash -c "$LAUNCH" (identical to the controller's; see lifecycle/README.md).
LAUNCH=$(sed -n 's/^    LAUNCH=//p' "$REPO/lifecycle/README.md" | head -1)
[[ -n $LAUNCH ]] || { echo "could not read LAUNCH from lifecycle/README.md" >&2; exit 1; }
FAILS=0

cleanup() {
  docker ps -aq --filter label=$LABEL | xargs -r docker rm -f >/dev/null
  docker volume ls -q --filter label=$LABEL | xargs -r docker volume rm >/dev/null
  rm -rf "$W"
}
trap cleanup EXIT

check() { # DESCRIPTION CONDITION...
  local what=$1; shift
  if "$@"; then echo "PASS $what"; else echo "FAIL $what"; FAILS=$((FAILS + 1)); fi
}

# stage APPDIR NAME: sets RC; outputs land in $W/out-NAME; log in $W/stage-NAME.log
stage() {
  local app=$1 name=$2 out=$W/out-$2 c t0 t1 t2
  mkdir -p "$out" "$W/env"
  docker volume create --label $LABEL "pier-smoke-cache-$name" >/dev/null
  t0=$(date +%s%N)
  c=$(docker create --label $LABEL --user 2000:2000 --network none \
    -v "$REPO/buildpacks:/tmp/buildpacks:ro" -v "pier-smoke-cache-$name:/tmp/cache" \
    -e PIER_BUILDPACKS="${BPS:-staticfile python}" -e CF_STACK=pier-bookworm -e HOME=/home/vcap \
    "$IMG" bash /tmp/lifecycle/stage.sh)
  # No copyUIDGID (docker cp -a): with a numeric --user, Docker 20.10 looks the user up on the host.
  # Without it the tar headers' owners (2000:2000) are kept.
  tar -C "$app" --owner=2000 --group=2000 --numeric-owner --transform 's,^\.,app,' -cf - . | docker cp - "$c:/tmp"
  tar -C "$W" --owner=2000 --group=2000 --numeric-owner -cf - env | docker cp - "$c:/tmp"
  tar -C "$REPO" --owner=0 --group=0 -cf - lifecycle/stage.sh | docker cp - "$c:/tmp"
  t1=$(date +%s%N)
  docker start -a "$c" >"$W/stage-$name.log" 2>&1
  RC=$?
  t2=$(date +%s%N)
  docker cp "$c:/tmp/out" - 2>/dev/null | tar -C "$out" --strip-components=1 -xf - 2>/dev/null
  docker rm -f "$c" >/dev/null
  sed 's/^/    | /' "$W/stage-$name.log"
  printf '    staging %s: exit %s, create+upload %d ms, container run %d ms\n' "$name" "$RC" \
    $(((t1 - t0) / 1000000)) $(((t2 - t1) / 1000000))
}

# run NAME: starts an instance; sets PORT_H to its loopback host port
run() {
  local name=$1 out=$W/out-$1 cmd c
  cmd=$(sed -n 's/^web:[[:space:]]*//p' "$out/Procfile" 2>/dev/null | head -1)
  [[ -n $cmd ]] || cmd=$(sed -n 's/^  web:[[:space:]]*//p' "$out/release.yml" | head -1)
  c=$(docker create --label $LABEL --name "pier-smoke-$name" --user 2000:2000 --cap-drop ALL \
    --security-opt no-new-privileges --memory 256m --pids-limit 256 -w /home/vcap/app \
    -e HOME=/home/vcap/app -e PORT=8080 -e CF_INSTANCE_INDEX=0 -e PIER_START_COMMAND="$cmd" \
    -p 127.0.0.1::8080 "$IMG" bash -c "$LAUNCH")
  docker cp - "$c:/home/vcap" <"$out/droplet.tgz"
  docker start "$c" >/dev/null
  PORT_H=$(docker port "$c" 8080/tcp | head -1 | sed 's/.*://')

  for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$PORT_H/" && return 0; sleep 0.1; done
  docker logs "pier-smoke-$name" | sed 's/^/    log| /'
  return 1
}
get() { curl -s "http://127.0.0.1:$PORT_H$1"; }
code() { curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT_H$1"; }

echo "== static-site"
stage "$REPO/examples/static-site" static
check "static stages with staticfile" test "$RC" = 0 -a "$(cat "$W/out-static/buildpack" 2>/dev/null)" = staticfile
droplet_ok() { tar -tvzf "$W/out-static/droplet.tgz" | awk '$2 != "vcap/vcap" || $6 !~ /^app(\/|$)/ { bad = 1 } END { exit bad }'; }
check "droplet entries are app/... owned by vcap" droplet_ok
run static; check "static instance answers" grep -q 'Hello from Pier' <(get /)
check "static: generated files are not served" test "$(code /.pier/staticfile/nginx.conf.in)$(code /Staticfile)" = 404404

echo "== python-app"
stage "$REPO/examples/python-app" py
check "python-app stages with python" test "$RC" = 0 -a "$(cat "$W/out-py/buildpack" 2>/dev/null)" = python
run py; check "python-app answers" grep -q 'Hello from Pier! version=1 instance=0' <(get /)
check "python-app /health is 200" test "$(code /health)" = 200

echo "== python-deps-app"
stage "$REPO/examples/python-deps-app" deps
check "python-deps-app stages (cold cache)" test "$RC" = 0
stage "$REPO/examples/python-deps-app" deps
check "python-deps-app restages from the cache" grep -q 'Reusing the installed requirements' "$W/stage-deps.log"
check "droplet does not embed /tmp/app" bash -c "mkdir -p '$W/x' && tar -C '$W/x' -xzf '$W/out-deps/droplet.tgz' && ! grep -rqs /tmp/app '$W/x/app/.pier' '$W/x/app/.profile.d'"
run deps; check "python-deps-app answers with six" grep -q 'six 1.17.0' <(get /)

echo "== nothing detectable"
mkdir -p "$W/apps/nothing" && echo hi >"$W/apps/nothing/README.txt"
stage "$W/apps/nothing" nothing
check "exit 222 with the message" test "$RC" = 222
check "message lists the buildpacks" grep -q 'None of the buildpacks detected a compatible app. Tried: staticfile, python' "$W/stage-nothing.log"

echo "== requirements not vendored"
mkdir -p "$W/apps/novendor" && echo 'flask==3.0.0' >"$W/apps/novendor/requirements.txt" && echo 'print(1)' >"$W/apps/novendor/app.py"
stage "$W/apps/novendor" novendor
check "exit 223" test "$RC" = 223
check "explains vendoring" grep -q 'pip download -r requirements.txt -d vendor' "$W/stage-novendor.log"
check "names the failed buildpack" grep -q 'Buildpack python failed to compile the app (exit status 1)' "$W/stage-novendor.log"

echo
if [[ $FAILS -eq 0 ]]; then echo "smoke test: all passed"; else echo "smoke test: $FAILS failure(s)"; fi
exit $((FAILS > 0))
