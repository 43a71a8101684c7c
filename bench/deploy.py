"""Re-push under load: time from `pier push` to every instance serving the new version, and the
requests that failed meanwhile. Rolling (Pier's default) against recreate (stop, then start: what
Cloud Foundry's default push does) in the same run, same app, same load. Also `pier set-env` (a
rolling restart onto a new revision, no staging) with 3 instances under the same load, until
every web instance runs the new revision.

Called by bench/deploy.sh with the controller already up (env: PIER_API, PIER_TOKEN, PIER_HOME,
ROUTER_PORT, BIN, WORK).
"""
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time

ROUTER = int(os.environ["ROUTER_PORT"])
BIN = os.environ["BIN"]
WORK = os.environ["WORK"]
ROUNDS = int(os.environ.get("ROUNDS", "3"))
APP_SRC = sys.argv[1]


def get(host, path):
    c = http.client.HTTPConnection("127.0.0.1", ROUTER, timeout=30)
    try:
        c.request("GET", path, headers={"Host": host})
        r = c.getresponse()
        return r.status, r.read().decode(errors="replace")
    finally:
        c.close()


class Load:
    """Four workers; one request in four takes a second (the app's /slow)."""

    def __init__(self, host):
        self.host, self.stop, self.ok, self.failed = host, False, 0, []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, args=(w,)) for w in range(4)]
        for t in self.threads:
            t.start()

    def run(self, w):
        n = 0
        while not self.stop:
            n += 1
            path = "/slow" if (n + w) % 4 == 0 else "/"
            try:
                s, body = get(self.host, path)
                with self.lock:
                    if s == 200:
                        self.ok += 1
                    else:
                        self.failed.append(f"{path} {s} {body[:80]}")
            except Exception as e:  # noqa: BLE001 - any failure counts
                with self.lock:
                    self.failed.append(f"{path} {e}")

    def finish(self):
        self.stop = True
        for t in self.threads:
            t.join()
        return self.ok, self.failed


def pier(*args, cwd):
    return subprocess.run([f"{BIN}/pier", *args], cwd=cwd, capture_output=True, text=True)


def all_new(name, host, version, n):
    out = pier("app", name, "--json", cwd=WORK)
    if out.returncode != 0:
        return False
    app = json.loads(out.stdout)
    web = [i for i in app["instances"] if i["process"] == "web"]
    if len(web) != n or any(i["state"] != "RUNNING" for i in web):
        return False
    return all(get(host, "/")[1].startswith(f"version={version}") for _ in range(2 * n))


def one(strategy, n, rnd):
    name = f"dep{strategy[:4]}{n}r{rnd}"
    host = f"{name}.localhost"
    app = os.path.join(WORK, name)
    shutil.copytree(APP_SRC, app)
    write = lambda v: open(os.path.join(app, "VERSION"), "w").write(f"{v}\n")  # noqa: E731
    write(1)
    out = pier("push", name, "-i", str(n), cwd=app)
    assert out.returncode == 0, out.stderr
    write(2)
    load = Load(host)
    time.sleep(0.5)
    t0 = time.monotonic()
    out = pier("push", name, "--strategy", strategy, cwd=app)
    assert out.returncode == 0, out.stderr
    while not all_new(name, host, 2, n):
        time.sleep(0.05)
    t1 = time.monotonic()
    time.sleep(1.0)
    ok, failed = load.finish()
    pier("delete", name, "-f", cwd=WORK)
    return t1 - t0, ok, len(failed), failed[:3]


def on_revision(name, revision, n):
    out = pier("app", name, "--json", cwd=WORK)
    if out.returncode != 0:
        return False
    web = [i for i in json.loads(out.stdout)["instances"] if i["process"] == "web"]
    return len(web) == n and all(
        i["state"] == "RUNNING" and (i.get("revision") or 0) >= revision for i in web
    )


def set_env(n, rnd):
    name = f"depenv{n}r{rnd}"
    host = f"{name}.localhost"
    app = os.path.join(WORK, name)
    shutil.copytree(APP_SRC, app)
    open(os.path.join(app, "VERSION"), "w").write("1\n")
    out = pier("push", name, "-i", str(n), cwd=app)
    assert out.returncode == 0, out.stderr
    web = [i for i in json.loads(pier("app", name, "--json", cwd=WORK).stdout)["instances"]]
    before = max(i.get("revision") or 0 for i in web)
    load = Load(host)
    time.sleep(0.5)
    t0 = time.monotonic()
    out = pier("set-env", name, "GREETING", f"hi-{rnd}", cwd=WORK)
    assert out.returncode == 0, out.stderr
    while not on_revision(name, before + 1, n):
        time.sleep(0.05)
    t1 = time.monotonic()
    time.sleep(1.0)
    ok, failed = load.finish()
    pier("delete", name, "-f", cwd=WORK)
    return t1 - t0, ok, len(failed), failed[:3]


def main():
    results = {}
    for rnd in range(ROUNDS):
        for n in (1, 3):
            for strategy in ("rolling", "recreate"):
                secs, ok, nfail, examples = one(strategy, n, rnd)
                results.setdefault((strategy, n), []).append((secs, ok, nfail))
                print(f"round {rnd} {strategy} {n} instance(s): {secs:.2f} s, {ok} ok, "
                      f"{nfail} failed {examples}", file=sys.stderr, flush=True)
        secs, ok, nfail, examples = set_env(3, rnd)
        results.setdefault(("set-env (rolling restart)", 3), []).append((secs, ok, nfail))
        print(f"round {rnd} set-env 3 instance(s): {secs:.2f} s, {ok} ok, "
              f"{nfail} failed {examples}", file=sys.stderr, flush=True)
    print("| strategy | instances | re-push to all new, median (min–max) | failed requests, median (max) | requests served |")
    print("|---|---|---|---|---|")
    for (strategy, n), rows in sorted(results.items()):
        secs = [r[0] for r in rows]
        fails = [r[2] for r in rows]
        oks = [r[1] for r in rows]
        print(f"| {strategy} | {n} | {statistics.median(secs):.2f} s ({min(secs):.2f}–{max(secs):.2f}) "
              f"| {statistics.median(fails):g} ({max(fails)}) | {int(statistics.median(oks))} |")


main()
