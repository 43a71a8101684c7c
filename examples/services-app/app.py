"""A web app backed by Pier's built-in services: rows in PostgreSQL (DATABASE_URL) and a counter
in Redis (REDIS_URL), whichever are bound. Its clients are pure-Python wheels vendored in vendor/
(staging has no network). Every request opens its own connection, so the app rides out restarts
of the service containers."""
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

INSTANCE = os.environ.get("CF_INSTANCE_INDEX", "0")


def postgres():
    import pg8000.native

    url = urlparse(os.environ["DATABASE_URL"])
    return pg8000.native.Connection(
        user=unquote(url.username),
        password=unquote(url.password),
        host=url.hostname,
        port=url.port or 5432,
        database=url.path.lstrip("/"),
        timeout=10,
    )


def redis_client():
    import redis

    return redis.Redis.from_url(os.environ["REDIS_URL"], socket_timeout=10)


def rows(value=None):
    db = postgres()
    try:
        db.run("CREATE TABLE IF NOT EXISTS rows (id serial PRIMARY KEY, value text NOT NULL)")
        if value is not None:
            db.run("INSERT INTO rows (value) VALUES (:v)", v=value)
        return [r[0] for r in db.run("SELECT value FROM rows ORDER BY id")]
    finally:
        db.close()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        url = urlparse(self.path)
        query = parse_qs(url.query)
        try:
            if url.path == "/health":
                self.reply(200, "ok\n")
            elif url.path == "/":
                bound = [k for k in ("DATABASE_URL", "REDIS_URL") if k in os.environ]
                self.reply(200, f"services-app instance={INSTANCE} bound={','.join(bound) or 'none'}\n")
            elif url.path == "/rows":
                values = rows(query.get("add", [None])[0])
                self.reply(200, "rows=" + ",".join(values) + "\n")
            elif url.path == "/incr":
                n = redis_client().incr("counter")
                self.reply(200, f"count={n} instance={INSTANCE}\n")
            else:
                self.reply(404, "not found\n")
        except Exception as e:  # the test reads what went wrong
            self.reply(503, f"error: {type(e).__name__}: {e}\n")

    def reply(self, status, body):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt, *args):
        print(f"{self.address_string()} {fmt % args}", flush=True)


if __name__ == "__main__":
    port = int(os.environ.get("PORT", "8080"))
    print(f"services-app listening on port {port}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    ThreadingHTTPServer(("0.0.0.0", port), Handler).serve_forever()
