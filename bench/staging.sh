#!/usr/bin/env bash
# Staging benchmark (issue 6): how long `POST /v1/apps/NAME/builds` takes, from the request until
# the `done` event, for each built-in buildpack on its example app, with a cold buildpack cache
# (a new app, so a new cache volume) and a warm one (the same package staged again).
#
#   bench/staging.sh             # 5 interleaved rounds; writes the "Staging" section of BENCHMARKS.md
#   ROUNDS=3 bench/staging.sh
#   BENCH_NO_BUILD=1 ...         # use target/release as it is
#   BENCH_NO_WRITE=1 ...         # print the section instead of writing BENCHMARKS.md
#
# Apps (packed once with tar | gzip -1, uploaded once; each round stages the same package):
#   staticfile  examples/static-site
#   python      examples/python-deps-app   (pip install from vendor/ wheels; the cache keeps the install)
#   nodejs      examples/nodejs-app        (vendored node_modules)
#   java        examples/java-app          (app.jar built with the host's javac/jar; skipped without)
#   binary      examples/binary-app        (-b binary)
# Round R, for each buildpack: cold = PUT app stg-BP-R + build; warm = build the same app again.
# Apps are kept until the end (deleting one deletes its package, which later rounds stage again);
# the cleanup removes their containers and cache volumes.
source "$(dirname "$0")/lib/common.sh"

ROUNDS=${ROUNDS:-5}
bench_setup
start_controller
RES=$WORK/staging.tsv
: >"$RES"

declare -A DIR BPS SHA
DIR[staticfile]=$ROOT/examples/static-site
DIR[python]=$ROOT/examples/python-deps-app
DIR[nodejs]=$ROOT/examples/nodejs-app
DIR[binary]=$ROOT/examples/binary-app
BPS[binary]='["binary"]'
KINDS=(staticfile python nodejs binary)
if command -v javac >/dev/null && command -v jar >/dev/null; then
  mkdir -p "$WORK/java"
  bash "$ROOT/examples/java-app/build.sh" "$WORK/java/app.jar" >/dev/null
  DIR[java]=$WORK/java
  KINDS=(staticfile java nodejs python binary)
else
  log "no javac/jar on this machine: the java row is skipped"
fi

for k in "${KINDS[@]}"; do
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "${DIR[$k]}" --exclude=.git -cf - . |
    gzip -1 -n >"$WORK/$k.tgz"
  SHA[$k]=$(curl -sS -f -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/gzip' \
    --data-binary "@$WORK/$k.tgz" "http://127.0.0.1:$API_PORT/v1/packages" | jq -r .sha256)
done

build() { # build APP SHA → seconds from the request to `done`
  local app=$1 sha=$2 t0 t1 ok
  t0=$EPOCHREALTIME
  ok=$(curl -sS -f -N -X POST -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
    --data "{\"package\":\"$sha\"}" "http://127.0.0.1:$API_PORT/v1/apps/$app/builds" |
    while IFS= read -r line; do
      case $line in
        '{"done"'*) echo ok; break ;;
        '{"error"'*) echo "staging $app failed: $line" >&2; break ;;
      esac
    done)
  t1=$EPOCHREALTIME
  [[ $ok == ok ]] || return 1
  dt "$t0" "$t1"
}

for r in $(seq 1 "$ROUNDS"); do
  for k in "${KINDS[@]}"; do
    app=stg-$k-$r
    api PUT "/v1/apps/$app" "{\"no_route\":true${BPS[$k]:+,\"buildpacks\":${BPS[$k]}}}" >/dev/null
    for temp in cold warm; do
      secs=$(build "$app" "${SHA[$k]}") || { echo "staging $app ($temp) failed" >&2; exit 1; }
      printf '%s\t%s\t%s\n' "$k" "$temp" "$secs" >>"$RES"
    done
  done
  log "round $r/$ROUNDS done"
done

row() { # row KIND → | kind | cold median (min–max) | warm median (min–max) |
  local k=$1 cold warm
  cold=$(awk -F'\t' -v k="$k" '$1 == k && $2 == "cold" { print $3 }' "$RES" | stats)
  warm=$(awk -F'\t' -v k="$k" '$1 == k && $2 == "warm" { print $3 }' "$RES" | stats)
  fmt() { read -r med min max n <<<"$1"; printf '%s s (%s–%s, n=%s)' "$med" "$min" "$max" "$n"; }
  printf '| %s | %s | %s |\n' "$k" "$(fmt "$cold")" "$(fmt "$warm")"
}

rows=$(for k in "${KINDS[@]}"; do row "$k"; done)
section=$(cat <<SECTION
\`bench/staging.sh\` (rev $GIT_REV, $(date -u +%Y-%m-%d), $ROUNDS rounds, 2-core machine). Time from
\`POST /v1/apps/NAME/builds\` to its \`done\` event: staging container created, app uploaded,
detect, build, release, droplet packed, downloaded and stored. Cold: a new app, so an empty buildpack
cache; warm: the same package staged again with the cache the first staging left. Median (min–max).

| buildpack | cold cache | warm cache |
|---|---|---|
$rows

Only the python buildpack caches (its installed requirements, keyed by requirements.txt and
vendor/); the others read nothing from the cache, so cold and warm differ by noise. Most of the
time of a small app is the staging container's fixed cost (create, upload, start, download).
SECTION
)
if [[ -n ${BENCH_NO_WRITE:-} ]]; then
  echo "$section"
else
  $TOOL section --file "$ROOT/BENCHMARKS.md" --key staging --title Staging <<<"$section"
  log "wrote the Staging section of BENCHMARKS.md"
  echo "$section"
fi
