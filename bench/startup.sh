#!/usr/bin/env bash
# Where an instance's start time goes on this machine, with plain Docker (no controller): the
# experiments behind the suggestions in the Push and Scale sections of BENCHMARKS.md.
#
#   bench/startup.sh           # ROUNDS=5 interleaved rounds; writes the "Instance start" section
#   BENCH_NO_WRITE=1 ...       # print the section instead
#
# Each round, every case until its port(s) answer HTTP 200 (python3 -m http.server 8080 from /tmp,
# --user vcap --cap-drop ALL, port published on 127.0.0.1):
#   run        docker run of the stack image (the floor of bench/push.sh)
#   run-pyc    docker run of the stack image with the Python stdlib precompiled (a throwaway image
#              made here with `python3 -m compileall`, then removed)
#   run-nopub  docker run without -p (bridge network; polled on the container's bridge address)
#   run-noproxy  docker run --network host (no bridge network, no published port, no docker-proxy)
#   cp         what the controller does per instance: docker create (+ --init, 256 MiB, pids limit),
#              docker cp of a small droplet-like tar into /home/vcap, docker start
#   run x10    10 parallel docker run of the stack image (the floor of bench/scale.sh)
#   run-pyc x10  the same with the precompiled image
source "$(dirname "$0")/lib/common.sh"

ROUNDS=${ROUNDS:-5}
BENCH_NO_BUILD=1 bench_setup
RES=$WORK/startup.tsv
: >"$RES"
PYC_IMAGE=pier-bench-pyc:$BENCH_ID

log "making $PYC_IMAGE (the stack image plus compileall of the Python stdlib)"
docker run --name "$BENCH_ID-pyc" --label "pier.bench=$BENCH_ID" --user root "$STACK_IMAGE" \
  sh -c 'python3 -m compileall -q /usr/lib/python3.* /usr/lib/python3/dist-packages >/dev/null 2>&1; true'
docker commit --change "LABEL pier.bench=$BENCH_ID" "$BENCH_ID-pyc" "$PYC_IMAGE" >/dev/null
docker rm "$BENCH_ID-pyc" >/dev/null

mkdir -p "$WORK/droplet/app" && echo 'print("hi")' >"$WORK/droplet/app/app.py"
tar -C "$WORK/droplet" -cf "$WORK/droplet.tar" app

RUN=(--rm -d --label "pier.bench=$BENCH_ID" --user vcap --cap-drop ALL --security-opt no-new-privileges
  -w /tmp -p '127.0.0.1:{port}:8080')
SERVE=(python3 -m http.server 8080)
# Bridge network but no published port (no docker-proxy, no NAT rule): polled on the container's IP.
NOPORT=(--rm -d --label "pier.bench=$BENCH_ID" --user vcap --cap-drop ALL --security-opt no-new-privileges -w /tmp)
# No bridge network, no published port, no docker-proxy: the server listens on the host's loopback.
NOPUB=(--rm -d --label "pier.bench=$BENCH_ID" --user vcap --cap-drop ALL --security-opt no-new-privileges
  -w /tmp --network host)
CREATE="id=\$(docker create --label pier.bench=$BENCH_ID --user vcap --cap-drop ALL --security-opt no-new-privileges \
--init --memory 256m --pids-limit 1024 -w /tmp -p 127.0.0.1:{port}:8080 $STACK_IMAGE python3 -m http.server 8080) \
&& docker cp - \$id:/home/vcap <$WORK/droplet.tar && docker start \$id >/dev/null"

case_() { # case_ NAME N [--bridge] ARGV...
  local name=$1 n=$2 out opts=()
  shift 2
  [[ $1 != --bridge ]] || { opts=(--bridge); shift; }
  out=$($TOOL floor --n "$n" "${opts[@]}" -- "$@")
  jq -e .ok <<<"$out" >/dev/null || { echo "$name failed: $out" >&2; exit 1; }
  printf '%s\t%s\t%s\n' "$name" "$r" "$(jq -r .all_ready <<<"$out")" >>"$RES"
  local ids
  ids=$(docker ps -aq --filter "label=pier.bench=$BENCH_ID")
  [[ -z $ids ]] || docker rm -f $ids >/dev/null
}

for r in $(seq 1 "$ROUNDS"); do
  quiet_gate "$r"
  case_ run 1 docker run "${RUN[@]}" "$STACK_IMAGE" "${SERVE[@]}"
  case_ run-pyc 1 docker run "${RUN[@]}" "$PYC_IMAGE" "${SERVE[@]}"
  case_ run-nopub 1 --bridge docker run "${NOPORT[@]}" "$STACK_IMAGE" "${SERVE[@]}"
  case_ run-noproxy 1 docker run "${NOPUB[@]}" "$STACK_IMAGE" python3 -m http.server '{port}' --bind 127.0.0.1
  case_ cp 1 bash -c "$CREATE"
  case_ run-x10 10 docker run "${RUN[@]}" "$STACK_IMAGE" "${SERVE[@]}"
  case_ run-pyc-x10 10 docker run "${RUN[@]}" "$PYC_IMAGE" "${SERVE[@]}"
done
mkdir -p "$BENCH/results"
cp "$RES" "$BENCH/results/startup.tsv"

col() { awk -F'\t' -v k="$1" '$1 == k { print $3 }' "$RES"; }
fmt() { local med lo hi; read -r med lo hi _ <<<"$(col "$1" | stats)"; printf '%s s (%s–%s)' "$med" "$lo" "$hi"; }
med() { col "$1" | stats | cut -d' ' -f1; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f×", a / b }'; }
section=$(cat <<EOF
Command: \`bench/startup.sh\` (ROUNDS=$ROUNDS, interleaved; $(date -u +%Y-%m-%d), rev $GIT_REV, $(nproc) cores, Docker
$(docker version -f '{{.Server.Version}}'), storage driver $(docker info -f '{{.Driver}}')). Plain Docker, no controller:
each case until its published port(s) answer 200 with \`python3 -m http.server 8080\` (\`--user vcap --cap-drop ALL\`).
$(gate_summary).

| case | median (min–max) | × \`docker run\` |
|---|---|---|
| \`docker run\` of $STACK_IMAGE (the push floor) | $(fmt run) | 1× |
| \`docker run\` of the same image with the Python stdlib precompiled (\`compileall\`) | $(fmt run-pyc) | $(ratio "$(med run-pyc)" "$(med run)") |
| \`docker run\` without \`-p\` (bridge network, no published port, no docker-proxy; polled on the container's bridge address, as the router reaches instances) | $(fmt run-nopub) | $(ratio "$(med run-nopub)" "$(med run)") |
| \`docker run --network host\` (no bridge, no published port, no docker-proxy; server on the host's loopback) | $(fmt run-noproxy) | $(ratio "$(med run-noproxy)" "$(med run)") |
| the controller's sequence: \`docker create\` (\`--init\`, 256 MiB, pids limit) + \`docker cp\` of a droplet tar + \`docker start\` | $(fmt cp) | $(ratio "$(med cp)" "$(med run)") |
| 10 parallel \`docker run\` (the scale floor) | $(fmt run-x10) | $(ratio "$(med run-x10)" "$(med run)") |
| 10 parallel \`docker run\`, stdlib precompiled | $(fmt run-pyc-x10) | $(ratio "$(med run-pyc-x10)" "$(med run)") |

<details><summary>Raw rows (bench/results/startup.tsv)</summary>

\`\`\`
$(cat "$RES")
\`\`\`
</details>
EOF
)
if [[ -n ${BENCH_NO_WRITE:-} ]]; then
  echo "$section"
else
  $TOOL section --file "$ROOT/BENCHMARKS.md" --key startup --title "Instance start (where the time goes)" <<<"$section"
  log "wrote the Instance start section of BENCHMARKS.md"
  echo "$section"
fi
