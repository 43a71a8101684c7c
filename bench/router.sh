#!/usr/bin/env bash
# Router benchmark: direct to a backend (the ceiling) vs nginx as reverse proxy vs pier-router,
# interleaved in one run against the same nginx backend, everything on loopback.
#
#   bash bench/router.sh            # about 3 minutes on 2 cores
#
# Knobs (environment): ROUNDS (5), DURATION (5s per measurement), CONNS (64), THREADS (wrk's, 2),
# ROUTER_THREADS (pier-router --threads, default 0: one per core), KEEP (1 keeps the temp dir).
#
# Phase 1, maximum load: each round runs `wrk --latency` once per target, in turn, each round
# starting one target further along (so order effects cancel over a multiple of 4 rounds); the
# report gives the median over rounds of requests/s, p50 and p99, and the ratios.
# Phase 2, fixed load at 50 % of nginx's maximum: wrk has no open-loop mode (wrk2 is not in
# Debian), so each connection waits a fixed think time after each response (wrk's Lua `delay`);
# connections × 1000 / think-ms sets the offered rate. It is a closed loop with think time, not
# wrk2's coordinated-omission-corrected open loop: the achieved rate is printed beside each figure.
# Phase 1 also measures pier-router with 1000 routes in its table (the benchmarked host among
# them) to show what the table size costs.
# Beside wrk's figures the script reads each proxy's CPU time from /proc (user + system, all its
# processes) and divides by the requests served: on a shared 2-core machine that figure moves less
# with other load than requests/s does.
set -euo pipefail

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5s}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
THINK_MS=${THINK_MS:-10}
ROOT=$(cd "$(dirname "$0")/.." && pwd)

need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || need+=(nginx-light)
if ((${#need[@]})); then
    echo "installing ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
fi

echo "building pier-router (release)" >&2
(cd "$ROOT" && cargo build --release -q -p pier-router)
ROUTER_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/pier-router

WORK=$(mktemp -d /tmp/pier-router-bench.XXXXXX)
chmod 755 "$WORK" # nginx workers drop root and must read the files
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    [[ ${KEEP:-0} == 1 ]] && echo "kept $WORK" >&2 || rm -rf "$WORK"
}
trap cleanup EXIT

# Free ports from the kernel, so parallel runs or other services never collide.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
BACKEND_PORT=$(free_port)
NGINX_PORT=$(free_port)
ROUTER_PORT=$(free_port)
ROUTER1K_PORT=$(free_port)
HOST=bench.localhost

# A small static file, like an app's landing page.
mkdir -p "$WORK/www" "$WORK/backend" "$WORK/proxy"
head -c 600 /dev/zero | tr '\0' 'x' >"$WORK/www/index.html"

# The backend: nginx serving the file, two workers (one per core), access log off.
cat >"$WORK/backend/nginx.conf" <<EOF
worker_processes 2;
daemon off;
pid $WORK/backend/nginx.pid;
error_log $WORK/backend/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on;
    keepalive_requests 1000000;
    client_body_temp_path $WORK/backend;
    server {
        listen 127.0.0.1:$BACKEND_PORT reuseport backlog=4096;
        root $WORK/www;
    }
}
EOF

# The reference proxy: nginx with upstream keep-alive, two workers, access log off, setting the
# usual forwarded headers.
cat >"$WORK/proxy/nginx.conf" <<EOF
worker_processes 2;
daemon off;
pid $WORK/proxy/nginx.pid;
error_log $WORK/proxy/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path $WORK/proxy;
    proxy_temp_path $WORK/proxy;
    upstream app {
        server 127.0.0.1:$BACKEND_PORT;
        keepalive 128;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT reuseport backlog=4096;
        server_name $HOST;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
        }
    }
}
EOF

# Route tables: one route, and 1000 routes with the benchmarked one among them.
python3 - "$WORK" "$HOST" "$BACKEND_PORT" <<'EOF'
import json, sys
work, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
def entry(h, path, app, i):
    return {"host": h, "path": path, "app": app, "app_guid": f"guid-{app}",
            "backends": [{"addr": f"127.0.0.1:{port}", "instance_id": f"{app}-0", "index": 0}]}
one = {"epoch": "bench", "version": 1, "routes": [entry(host, "", "bench", 0)]}
many = [entry(f"app{i}.localhost", "/api" if i % 3 == 0 else "", f"app{i}", i) for i in range(999)]
many.insert(500, entry(host, "", "bench", 0))
json.dump(one, open(f"{work}/routes-1.json", "w"))
json.dump({"epoch": "bench", "version": 1, "routes": many}, open(f"{work}/routes-1000.json", "w"))
EOF

nginx -c "$WORK/backend/nginx.conf" -p "$WORK/backend" >/dev/null 2>&1 &
BACKEND_PID=$!
PIDS+=($BACKEND_PID)
nginx -c "$WORK/proxy/nginx.conf" -p "$WORK/proxy" >/dev/null 2>&1 &
NGINX_PID=$!
PIDS+=($NGINX_PID)
PIER_ROUTER_LOG=warn "$ROUTER_BIN" --listen "127.0.0.1:$ROUTER_PORT" --threads "${ROUTER_THREADS:-0}" \
    --routes-file "$WORK/routes-1.json" >/dev/null 2>"$WORK/router.log" &
ROUTER_PID=$!
PIDS+=($ROUTER_PID)
PIER_ROUTER_LOG=warn "$ROUTER_BIN" --listen "127.0.0.1:$ROUTER1K_PORT" --threads "${ROUTER_THREADS:-0}" \
    --routes-file "$WORK/routes-1000.json" >/dev/null 2>"$WORK/router1k.log" &
ROUTER1K_PID=$!
PIDS+=($ROUTER1K_PID)

wait_ok() {
    for _ in $(seq 100); do
        if python3 -c "import urllib.request; urllib.request.urlopen(urllib.request.Request('http://127.0.0.1:$1/index.html', headers={'Host': '$HOST'}), timeout=1)" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    echo "nothing answered 200 on port $1" >&2
    exit 1
}
for p in $BACKEND_PORT $NGINX_PORT $ROUTER_PORT $ROUTER1K_PORT; do wait_ok "$p"; done

declare -A PORT=([direct]=$BACKEND_PORT [nginx]=$NGINX_PORT [pier]=$ROUTER_PORT [pier_1000]=$ROUTER1K_PORT)
declare -A PID=([direct]=$BACKEND_PID [nginx]=$NGINX_PID [pier]=$ROUTER_PID [pier_1000]=$ROUTER1K_PID)

# CPU clock ticks (user + system) used so far by a process and its children (nginx's workers).
ticks() {
    local t=0 p
    for p in "$1" $(pgrep -P "$1"); do
        t=$((t + $(awk '{ print $14 + $15 }' "/proc/$p/stat")))
    done
    echo "$t"
}
HZ=$(getconf CLK_TCK)
TARGETS=(direct nginx pier pier_1000)

# wrk output → "req_per_s p50_ms p99_ms requests"
parse() {
    awk '
        function ms(v) {
            if (v ~ /us$/) { sub(/us$/, "", v); return v / 1000 }
            if (v ~ /ms$/) { sub(/ms$/, "", v); return v + 0 }
            if (v ~ /m$/) { sub(/m$/, "", v); return v * 60000 }
            if (v ~ /s$/) { sub(/s$/, "", v); return v * 1000 }
            return v
        }
        /^ +50%/ { p50 = ms($2) }
        /^ +99%/ { p99 = ms($2) }
        /^Requests\/sec:/ { rps = $2 }
        / requests in / { n = $1 }
        /Non-2xx or 3xx responses/ { bad = $NF }
        /Socket errors/ { errs = $0 }
        END {
            if (bad != "") { print "non-2xx responses: " bad > "/dev/stderr"; exit 1 }
            printf "%s %.3f %.3f %d\n", rps, p50, p99, n
        }'
}

run_wrk() { # target conns [script] → "req_per_s p50_ms p99_ms cpu_us_per_request"
    local args=(-t"$THREADS" -c"$2" -d"$DURATION" --latency -H "Host: $HOST") before out
    [[ -n ${3:-} ]] && args+=(-s "$3")
    before=$(ticks "${PID[$1]}")
    out=$(wrk "${args[@]}" "http://127.0.0.1:${PORT[$1]}/index.html" | tee -a "$WORK/wrk.log" | parse)
    awk -v o="$out" -v t="$(($(ticks "${PID[$1]}") - before))" -v hz="$HZ" \
        'BEGIN { split(o, f, " "); printf "%s %s %s %.1f\n", f[1], f[2], f[3], t * 1e6 / hz / f[4] }'
}

median() { sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

echo "warming up" >&2
for t in "${TARGETS[@]}"; do DURATION=2s run_wrk "$t" "$CONNS" >/dev/null; done

echo "phase 1: maximum load, $ROUNDS interleaved rounds of ${DURATION} per target, $CONNS connections" >&2
# Each round starts one target further along (round 1: direct nginx pier pier_1000, round 2:
# nginx pier pier_1000 direct, ...), so no target always runs first or last after the others.
rotated() { # rotated ROUND TARGET... -> the targets starting at index (ROUND-1) mod count
    local r=$1; shift
    local n=$# i
    local all=("$@")
    for ((i = 0; i < n; i++)); do echo "${all[$(((r - 1 + i) % n))]}"; done
}
for r in $(seq "$ROUNDS"); do
    for t in $(rotated "$r" "${TARGETS[@]}"); do
        read -r rps p50 p99 cpu < <(run_wrk "$t" "$CONNS")
        echo "$rps" >>"$WORK/$t.rps"; echo "$p50" >>"$WORK/$t.p50"; echo "$p99" >>"$WORK/$t.p99"
        echo "$cpu" >>"$WORK/$t.cpu"
        printf '  round %d %-10s %10.0f req/s  p50 %6.3f ms  p99 %7.3f ms  %5.1f CPU-us/req\n' \
            "$r" "$t" "$rps" "$p50" "$p99" "$cpu" >&2
    done
done

declare -A RPS P50 P99 CPU
for t in "${TARGETS[@]}"; do
    RPS[$t]=$(median <"$WORK/$t.rps"); P50[$t]=$(median <"$WORK/$t.p50"); P99[$t]=$(median <"$WORK/$t.p99")
    CPU[$t]=$(median <"$WORK/$t.cpu")
done

# Phase 2: 50 % of nginx's maximum, offered as CONNS2 connections each pausing THINK_MS.
RATE=$(awk -v r="${RPS[nginx]}" 'BEGIN { printf "%d", r / 2 }')
CONNS2=$(awk -v r="$RATE" -v t="$THINK_MS" 'BEGIN { c = int(r * t / 1000 + 0.5); if (c < 2) c = 2; print c }')
cat >"$WORK/think.lua" <<EOF
function delay()
    return $THINK_MS
end
EOF
FIXED=(nginx pier)
echo "phase 2: ~$RATE req/s offered ($CONNS2 connections, ${THINK_MS} ms think time), $ROUNDS rounds" >&2
for r in $(seq "$ROUNDS"); do
    for t in $(rotated "$r" "${FIXED[@]}"); do
        read -r rps p50 p99 cpu < <(run_wrk "$t" "$CONNS2" "$WORK/think.lua")
        echo "$rps" >>"$WORK/$t.frps"; echo "$p50" >>"$WORK/$t.fp50"; echo "$p99" >>"$WORK/$t.fp99"
        printf '  round %d %-10s %10.0f req/s  p50 %6.3f ms  p99 %7.3f ms  %5.1f CPU-us/req\n' \
            "$r" "$t" "$rps" "$p50" "$p99" "$cpu" >&2
    done
done
declare -A FRPS FP50 FP99
for t in "${FIXED[@]}"; do
    FRPS[$t]=$(median <"$WORK/$t.frps"); FP50[$t]=$(median <"$WORK/$t.fp50"); FP99[$t]=$(median <"$WORK/$t.fp99")
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
pct() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%+.1f%%", (a / b - 1) * 100 }'; }
diffms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%+.3f", a - b }'; }

cat <<EOF

## Router benchmark ($(date -u +%Y-%m-%d), $(nproc) cores, $(uname -r))
Command: \`bash bench/router.sh\` (ROUNDS=$ROUNDS DURATION=$DURATION CONNS=$CONNS THREADS=$THREADS)
Backend: nginx, 2 workers, 600-byte static file. nginx proxy: 2 workers, upstream keepalive 128.
pier-router: release build, \`--threads ${ROUTER_THREADS:-0}\` (0: one per core), access log off in both proxies.
Medians over $ROUNDS interleaved rounds of \`wrk -t$THREADS -c$CONNS -d$DURATION --latency\`.

Maximum load:

| target | req/s | p50 ms | p99 ms | req/s vs direct | req/s vs nginx | server CPU µs/req |
|---|---:|---:|---:|---:|---:|---:|
EOF
for t in "${TARGETS[@]}"; do
    printf '| %s | %.0f | %.3f | %.3f | %s | %s | %.1f |\n' "$t" "${RPS[$t]}" "${P50[$t]}" "${P99[$t]}" \
        "$(ratio "${RPS[$t]}" "${RPS[direct]}")" "$(ratio "${RPS[$t]}" "${RPS[nginx]}")" "${CPU[$t]}"
done
cat <<EOF

Fixed load at 50 % of nginx's maximum (~$RATE req/s offered: $CONNS2 connections, ${THINK_MS} ms think time):

| target | achieved req/s | p50 ms | p99 ms |
|---|---:|---:|---:|
EOF
for t in "${FIXED[@]}"; do
    printf '| %s | %.0f | %.3f | %.3f |\n' "$t" "${FRPS[$t]}" "${FP50[$t]}" "${FP99[$t]}"
done
cat <<EOF

Targets:
- pier-router / nginx req/s: $(ratio "${RPS[pier]}" "${RPS[nginx]}") (target ≥ 1.00); CPU per request:
  $(ratio "${CPU[pier]}" "${CPU[nginx]}")× nginx's ("server CPU" is the proxy's own, or the backend's for direct)
- p99 at 50 % load, pier-router − nginx: $(diffms "${FP99[pier]}" "${FP99[nginx]}") ms (target ≤ +1 ms)
- 1000 routes vs 1 route: $(pct "${RPS[pier_1000]}" "${RPS[pier]}") req/s (target ≥ −5 %)
EOF
