"""The measuring half of bench/tenancy.sh: fills the `teams` controller with users, orgs, spaces,
roles and apps, then times `GET /v1/apps` and `pier push` against both controllers, interleaved.
Prints one JSON object: for each mode its median, p99 and count (milliseconds for GETs, seconds for
pushes)."""

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.parse

PASSWORD = "bench-Password-4242"
ORGS, SPACES_PER_ORG, USERS, APPS_PER_SPACE = 4, 5, 50, 10


class Api:
    def __init__(self, url, token):
        u = urllib.parse.urlparse(url)
        self.host, self.port, self.token = u.hostname, u.port, token
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)

    def call(self, method, path, body=None, token=None, form=None):
        headers = {"Authorization": f"Bearer {token or self.token}"}
        data = None
        if body is not None:
            data = json.dumps(body)
            headers["Content-Type"] = "application/json"
        if form is not None:
            data = urllib.parse.urlencode(form)
            headers = {"Content-Type": "application/x-www-form-urlencoded"}
        self.conn.request(method, path, body=data, headers=headers)
        r = self.conn.getresponse()
        raw = r.read()
        if r.status >= 300:
            raise SystemExit(f"{method} {path}: {r.status} {raw[:300]!r}")
        return json.loads(raw) if raw else None


def space_names():
    return [(f"org{o}", f"space{s}") for o in range(ORGS) for s in range(SPACES_PER_ORG)]


def populate_teams(api):
    spaces = space_names()
    for org in sorted({o for o, _ in spaces}):
        api.call("POST", "/v1/orgs", {"name": org})
    for org, space in spaces:
        api.call("POST", f"/v1/orgs/{org}/spaces", {"name": space})
    for i in range(USERS):
        name = f"user{i}"
        api.call("POST", "/v1/users", {"name": name, "password": PASSWORD})
        for role, (org, space) in (
            ("SpaceDeveloper", spaces[i % len(spaces)]),
            ("SpaceAuditor", spaces[(i + 7) % len(spaces)]),
        ):
            api.call("PUT", f"/v1/orgs/{org}/spaces/{space}/users/{name}/roles/{role}")
    for k in range(APPS_PER_SPACE * len(spaces)):
        org, space = spaces[k % len(spaces)]
        api.call("PUT", f"/v1/apps/app{k}?org={org}&space={space}", {})
    tok = api.call("POST", "/oauth/token", form={
        "grant_type": "password", "username": "user0", "password": PASSWORD})
    return tok


def populate_single(api):
    for k in range(APPS_PER_SPACE):
        api.call("PUT", f"/v1/apps/app{k}", {})


def time_gets(api, path, n, token=None):
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        apps = api.call("GET", path, token=token)
        out.append((time.perf_counter() - t0) * 1000)
        assert len(apps) == APPS_PER_SPACE, f"{path}: {len(apps)} apps"
    return out


def push(pier, app_dir, home, env_extra, name, args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIER_")}
    env.update({"PIER_HOME": home, **env_extra})
    t0 = time.perf_counter()
    p = subprocess.run([pier, "push", name, *args], cwd=app_dir, env=env,
                       capture_output=True, text=True)
    took = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"pier push {name} failed:\n{p.stdout}\n{p.stderr}")
    subprocess.run([pier, "delete", name, "-f", *args], cwd=app_dir, env=env,
                   capture_output=True, check=True)
    return took


def summary(xs):
    xs = sorted(xs)
    p99 = xs[min(len(xs) - 1, int(round(0.99 * (len(xs) - 1))))]
    return {"median": statistics.median(xs), "p99": p99, "n": len(xs)}


def main():
    a = argparse.ArgumentParser()
    a.add_argument("--pier", required=True)
    a.add_argument("--app", required=True)
    a.add_argument("--work", required=True)
    a.add_argument("--rounds", type=int, default=5)
    a.add_argument("--n", type=int, default=300)
    a.add_argument("--single", nargs=2, required=True)
    a.add_argument("--teams", nargs=2, required=True)
    o = a.parse_args()
    single, teams = Api(*o.single), Api(*o.teams)
    t0 = time.perf_counter()
    populate_single(single)
    populate_teams(teams)
    print(f"populated in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    # The user's CLI: its own login, as a user would have.
    user_home = os.path.join(o.work, "user-cli")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIER_")}
    env["PIER_HOME"] = user_home
    subprocess.run([o.pier, "login", "--api", o.teams[0], "-u", "user0", "-p", PASSWORD],
                   env=env, check=True, capture_output=True)
    tok = json.load(open(os.path.join(user_home, "config.json")))
    user_token = tok.get("token") or tok.get("access_token")
    org0, space0 = space_names()[0]
    q = f"?org={org0}&space={space0}"
    res = {k: [] for k in ("single_get", "teams_admin_get", "teams_user_get",
                           "single_push", "teams_user_push")}
    single_home = os.path.join(o.work, "single-cli")
    for r in range(o.rounds):
        res["single_get"] += time_gets(single, "/v1/apps", o.n)
        res["teams_admin_get"] += time_gets(teams, f"/v1/apps{q}", o.n)
        res["teams_user_get"] += time_gets(teams, f"/v1/apps{q}", o.n, token=user_token)
        res["single_push"].append(push(o.pier, o.app, single_home,
                                       {"PIER_API": o.single[0], "PIER_TOKEN": o.single[1]},
                                       f"push{r}", []))
        res["teams_user_push"].append(push(o.pier, o.app, user_home, {}, f"push{r}",
                                           ["-o", org0, "-s", space0]))
        print(f"round {r + 1}/{o.rounds} done", file=sys.stderr)
    print(json.dumps({k: summary(v) for k, v in res.items()}))


if __name__ == "__main__":
    main()
