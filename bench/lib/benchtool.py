#!/usr/bin/env python3
"""Timing helpers for bench/*.sh: each subcommand takes its own t0, does the thing, polls until it
is done and prints one JSON object (times in seconds since t0) on stdout.

Only talks to 127.0.0.1. Stdlib only.

  timed-run      run a command (e.g. `pier push`), timestamp each output line, poll the router
  floor          N parallel `docker run`s (the argv has {port} placeholders) until every port gives 200
  scale          PUT instances=N (or run a command), until N distinct `instance=K` come through the
                 router and the API lists N RUNNING
  restart        start the controller (detached), until the API lists N RUNNING, GET /v1/routes
                 has N backends for the app's host, and the router answers 200
  stats          median/min/max of numbers on stdin (one per line)
  section        replace (or append) a marked section of BENCHMARKS.md
"""

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time

POLL = 0.005  # seconds between polls: "polling quickly"


def get(port, path, host=None, token=None, timeout=2.0, addr="127.0.0.1"):
    """One GET on a fresh connection; (status, body) or (None, error text)."""
    conn = http.client.HTTPConnection(addr, port, timeout=timeout)
    try:
        headers = {"Connection": "close"}
        if host:
            headers["Host"] = host
        if token:
            headers["Authorization"] = "Bearer " + token
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    except (OSError, http.client.HTTPException) as e:
        return None, str(e).encode()
    finally:
        conn.close()


def request(port, method, path, body, token):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        data = json.dumps(body).encode()
        conn.request(method, path, body=data, headers={
            "Authorization": "Bearer " + token, "Content-Type": "application/json",
            "Content-Length": str(len(data))})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


class Router:
    """Polls NAME through the router from a thread; records status changes and 200s."""

    def __init__(self, port, host, t0, want_instances=0, slow=None, expect=None):
        self.port, self.host, self.t0 = port, host, t0
        self.expect = expect.encode() if expect else None  # first 200 whose body contains it
        self.first_expected = None
        self.other_after_exit = 0  # 200s without `expect` on requests sent after `after`
        self.slow = slow  # poll interval while `after` is unset (warm pushes: the old app answers)
        self.want = want_instances
        self.statuses = {}
        self.first_200 = None
        self.after = None  # set to a time: record the first 200 at or after it
        self.first_200_after = None
        self.seen = {}  # instance index -> first time seen
        self.all_seen = None
        self.requests = 0
        self.stop = threading.Event()
        self.wake = threading.Event()  # set with `after`: stop a slow poll's sleep at once
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop.is_set():
            t = time.time()
            status, body = get(self.port, "/", host=self.host)
            now = time.time() - self.t0
            self.requests += 1
            key = str(status) if status else "conn-error"
            self.statuses[key] = self.statuses.get(key, 0) + 1
            if status == 200:
                if self.first_200 is None:
                    self.first_200 = now
                if self.after is not None and t - self.t0 >= self.after and self.first_200_after is None:
                    self.first_200_after = now
                if self.expect is not None:
                    if self.expect in (body or b""):
                        if self.first_expected is None:
                            self.first_expected = now
                    elif self.after is not None and t - self.t0 >= self.after:
                        self.other_after_exit += 1
                m = re.search(rb"instance=(\d+)", body or b"")
                if m:
                    i = int(m.group(1))
                    if i not in self.seen:
                        self.seen[i] = now
                        if self.want and len(self.seen) >= self.want and self.all_seen is None:
                            self.all_seen = now
            if self.slow and self.after is None:
                self.wake.wait(self.slow)
            else:
                time.sleep(POLL)

    def finish(self):
        self.stop.set()
        self.wake.set()
        self.thread.join(5)


def wait(pred, timeout, step=POLL):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(step)
    return False


def cmd_timed_run(a):
    t0 = time.time()
    router = Router(a.router_port, a.host, t0, slow=a.poll_before_exit, expect=a.expect)
    proc = subprocess.Popen(a.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=a.cwd)
    lines = []
    for raw in proc.stdout:
        lines.append([round(time.time() - t0, 4), raw.decode(errors="replace").rstrip("\n")])
    rc = proc.wait()
    exit_t = time.time() - t0
    router.after = exit_t
    router.wake.set()
    if rc == 0:
        wait(lambda: router.first_200_after is not None
             and (a.expect is None or router.first_expected is not None), a.timeout)
    router.finish()

    def line_time(pattern):
        for t, text in lines:
            if re.search(pattern, text):
                return t
        return None

    print(json.dumps({
        "rc": rc,
        "exit": round(exit_t, 4),
        "first_200": router.first_200,
        "first_200_after_exit": router.first_200_after,
        "first_expected": router.first_expected,
        "old_after_exit": router.other_after_exit,
        "statuses": router.statuses,
        "uploaded": line_time(r"^Uploaded package"),
        "staged": line_time(r"^Starting "),
        "lines": lines if a.keep_lines or rc != 0 else [],
    }))


def cmd_floor(a):
    import socket
    ports = []
    socks = []
    for _ in range(a.n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        ports.append(s.getsockname()[1])
        socks.append(s)
    for s in socks:
        s.close()
    t0 = time.time()
    procs = []
    for i, p in enumerate(ports):
        argv = [x.replace("{port}", str(p)).replace("{i}", str(i)) for x in a.cmd]
        procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    ready = {}
    outs = {}

    def poll(i, p):
        addr, port = "127.0.0.1", p
        if a.bridge:
            # The container's own address on the Docker bridge, port 8080: known once `docker run -d`
            # has printed the id.
            while i not in outs and time.time() - t0 < a.timeout:
                time.sleep(POLL)
            cid = outs.get(i, b"").decode().strip()
            r = subprocess.run(["docker", "inspect", "-f", "{{.NetworkSettings.IPAddress}}", cid],
                               capture_output=True)
            addr, port = r.stdout.decode().strip(), 8080
            if not addr:
                return
        while time.time() - t0 < a.timeout:
            status, _ = get(port, "/", timeout=1, addr=addr)
            if status == 200:
                ready[p] = time.time() - t0
                return
            time.sleep(POLL)

    threads = [threading.Thread(target=poll, args=(i, p)) for i, p in enumerate(ports)]
    for t in threads:
        t.start()
    run_done = []
    errs = []
    for i, pr in enumerate(procs):
        out, err = pr.communicate()
        outs[i] = out
        run_done.append(time.time() - t0)
        if pr.returncode != 0:
            errs.append(err.decode(errors="replace").strip())
    for t in threads:
        t.join()
    ok = len(ready) == a.n and not errs
    print(json.dumps({
        "ok": ok,
        "all_ready": round(max(ready.values()), 4) if ok else None,
        "first_ready": round(min(ready.values()), 4) if ready else None,
        "docker_run_returned": round(max(run_done), 4),
        "errors": errs[:3],
    }))


def app_running(a, n, droplet=None):
    status, body = get(a.api_port, "/v1/apps/" + a.app, token=a.token)
    if status != 200:
        return 0
    app = json.loads(body)
    return sum(1 for i in app["instances"]
               if i["process"] == "web" and i["state"] == "RUNNING"
               and (droplet is None or i.get("droplet") == droplet))


def cmd_scale(a):
    t0 = time.time()
    router = Router(a.router_port, a.host, t0, want_instances=a.n)
    if a.cmd:
        r = subprocess.run(a.cmd, capture_output=True)
        if r.returncode != 0:
            sys.exit("scale command failed: " + r.stderr.decode(errors="replace"))
    else:
        status, body = request(a.api_port, "PUT", "/v1/apps/" + a.app, {"instances": a.n}, a.token)
        if status != 200:
            sys.exit(f"PUT instances={a.n}: {status} {body[:300]!r}")
    answered = time.time() - t0
    all_running = None
    deadline = time.time() + a.timeout
    while time.time() < deadline:
        if all_running is None and app_running(a, a.n) >= a.n:
            all_running = time.time() - t0
        if all_running is not None and router.all_seen is not None:
            break
        time.sleep(0.02)
    router.finish()
    # The controller's side, from its log lines: when the last of the new instances got its
    # container started, printed its "listening" line, and passed its health check.
    steps = {}
    status, body = get(a.api_port, "/v1/apps/" + a.app + "/logs", token=a.token, timeout=5)
    if status == 200:
        ev = [(parse_time(l["time"]) - t0, l["source"], l["text"]) for l in json.loads(body)]
        ev = [e for e in ev if e[0] >= 0]
        for key, src, pat in (("created_first", "CELL", r"^Creating instance"),
                              ("containers_started", "CELL", r"^Started container"),
                              ("apps_listening", "APP", r"listening"),
                              ("healthy", "CELL", r"running and healthy")):
            ts = [t for t, s_, x in ev if s_.startswith(src) and re.search(pat, x)]
            if ts:
                steps[key] = round(min(ts) if key == "created_first" else max(ts), 3)
    print(json.dumps({
        "steps": steps,
        "answered": round(answered, 4),
        "all_running": all_running,
        "all_routed": router.all_seen,
        "seen": sorted(router.seen),
        "requests": router.requests,
        "statuses": router.statuses,
    }))


def cmd_restart(a):
    t0 = time.time()
    log = open(a.log, "ab")
    proc = subprocess.Popen(a.cmd, stdout=log, stderr=log, start_new_session=True)
    with open(a.pidfile, "w") as f:
        f.write(str(proc.pid))
    router = Router(a.router_port, a.host, t0)
    api_up = running = routed = None
    deadline = time.time() + a.timeout
    while time.time() < deadline:
        now = lambda: round(time.time() - t0, 4)  # noqa: E731
        if api_up is None:
            status, _ = get(a.api_port, "/v1/info", timeout=1)
            if status == 200:
                api_up = now()
        if api_up is not None and running is None and app_running(a, a.n) >= a.n:
            running = now()
        if api_up is not None and routed is None:
            status, body = get(a.api_port, "/v1/routes", token=a.token, timeout=1)
            if status == 200:
                table = json.loads(body)
                backends = sum(len(r["backends"]) for r in table["routes"] if r["host"] == a.host)
                if backends >= a.n:
                    routed = now()
        if running is not None and routed is not None and router.first_200 is not None:
            break
        if proc.poll() is not None:
            break
        time.sleep(POLL)
    router.finish()
    converged = None
    if running is not None and routed is not None and router.first_200 is not None:
        converged = max(running, routed, router.first_200)
    print(json.dumps({
        "pid": proc.pid,
        "api_up": api_up,
        "all_running": running,
        "table_has_all": routed,
        "first_200": router.first_200,
        "converged": converged,
        "statuses": router.statuses,
    }))


def parse_time(text):
    """RFC 3339 with up to nanoseconds, Z or offset -> epoch seconds."""
    import datetime
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:?\d\d)$", text)
    base, frac, tz = m.groups()
    tz = "+00:00" if tz == "Z" else tz
    dt = datetime.datetime.fromisoformat(base + tz)
    return dt.timestamp() + (float("0." + frac) if frac else 0.0)


def cmd_steps(a):
    """The controller's side of one push, from GET /v1/apps/NAME/logs (stdin): times of its log
    lines from --t0 on, as step durations. Prints tab-separated: staging container start (API
    "staging started" -> first STG line), buildpack (-> "Packing the droplet"), droplet (-> API
    "staged"), instance container (CELL "Creating" -> "Started container"), app boot (-> the app's
    "listening" line), then --end minus the "listening" line. "-" when a line is missing."""
    lines = json.load(sys.stdin)
    ev = []
    for l in lines:
        t = parse_time(l["time"])
        if t >= a.t0 - 0.001:
            ev.append((t, l["source"], l["text"]))
    ev.sort()

    def first(src, pat, after=0.0):
        for t, s_, x in ev:
            if t >= after and s_.startswith(src) and re.search(pat, x):
                return t
        return None

    def last(src, pat):
        r = None
        for t, s_, x in ev:
            if s_.startswith(src) and re.search(pat, x):
                r = t
        return r

    stg0 = first("API", r"staging started")
    stg1 = first("STG", r".")
    pack = first("STG", r"Packing the droplet")
    staged = first("API", r"^staged")
    create = last("CELL", r"^Creating instance")
    started = last("CELL", r"^Started container")
    listening = last("APP", r"listening")

    def d(x, y):
        return f"{y - x:.3f}" if x is not None and y is not None else "-"

    print("\t".join([d(stg0, stg1), d(stg1, pack), d(pack, staged), d(create, started),
                     d(started, listening), d(listening, a.end)]))


def cmd_stats(a):
    xs = [float(x) for x in sys.stdin.read().split() if x not in ("", "null", "None", "-")]
    if not xs:
        print("n/a")
        return
    print(f"{statistics.median(xs):.{a.digits}f} {min(xs):.{a.digits}f} {max(xs):.{a.digits}f} {len(xs)}")


def cmd_section(a):
    """Put stdin between `<!-- bench:KEY:begin -->` and `<!-- bench:KEY:end -->` in FILE; if the
    markers are missing, append `## TITLE` and the marked block. Text outside them is untouched."""
    body = sys.stdin.read().rstrip("\n") + "\n"
    begin, end = f"<!-- bench:{a.key}:begin -->", f"<!-- bench:{a.key}:end -->"
    block = f"{begin}\n{body}{end}\n"
    try:
        with open(a.file) as f:
            text = f.read()
    except FileNotFoundError:
        text = "# Benchmarks\n\nMeasured on the 2-core development machine. Each section names the command that reproduces it.\n"
    if begin in text and end in text:
        i, j = text.index(begin), text.index(end) + len(end)
        if j < len(text) and text[j] == "\n":
            j += 1
        text = text[:i] + block + text[j:]
    else:
        text = text.rstrip("\n") + f"\n\n## {a.title}\n\n" + block
    tmp = a.file + f".tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, a.file)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="sub", required=True)

    s = sub.add_parser("timed-run")
    s.add_argument("--router-port", type=int, required=True)
    s.add_argument("--host", required=True)
    s.add_argument("--cwd")
    s.add_argument("--timeout", type=float, default=120)
    s.add_argument("--keep-lines", action="store_true")
    s.add_argument("--poll-before-exit", type=float, help="poll interval until the command exits")
    s.add_argument("--expect", help="also record the first 200 whose body contains this")
    s.add_argument("cmd", nargs="+")

    s = sub.add_parser("floor")
    s.add_argument("--n", type=int, default=1)
    s.add_argument("--timeout", type=float, default=60)
    s.add_argument("--bridge", action="store_true",
                   help="poll each container's bridge address on port 8080 (argv prints its id)")
    s.add_argument("cmd", nargs="+")

    for name in ("scale", "restart"):
        s = sub.add_parser(name)
        s.add_argument("--api-port", type=int, required=True)
        s.add_argument("--router-port", type=int, required=True)
        s.add_argument("--token", required=True)
        s.add_argument("--app", required=True)
        s.add_argument("--host", required=True)
        s.add_argument("--n", type=int, required=True)
        s.add_argument("--timeout", type=float, default=120)
        if name == "restart":
            s.add_argument("--log", required=True)
            s.add_argument("--pidfile", required=True)
        s.add_argument("cmd", nargs="*")

    s = sub.add_parser("steps")
    s.add_argument("--t0", type=float, required=True)
    s.add_argument("--end", type=float, required=True)

    s = sub.add_parser("stats")
    s.add_argument("--digits", type=int, default=2)

    s = sub.add_parser("section")
    s.add_argument("--file", required=True)
    s.add_argument("--key", required=True)
    s.add_argument("--title", required=True)

    a = p.parse_args()
    {"timed-run": cmd_timed_run, "floor": cmd_floor, "scale": cmd_scale,
     "restart": cmd_restart, "steps": cmd_steps, "stats": cmd_stats, "section": cmd_section}[a.sub](a)


if __name__ == "__main__":
    main()
