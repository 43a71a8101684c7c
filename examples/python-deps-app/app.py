"""A stdlib web app with one vendored dependency (six), installed offline at staging."""
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import six

VERSION = "1"
INSTANCE = os.environ.get("CF_INSTANCE_INDEX", "0")


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/health":
            status, body = 200, "ok\n"
        elif self.path == "/":
            status, body = 200, f"Hello from Pier with six {six.__version__}! version={VERSION} instance={INSTANCE}\n"
        else:
            status, body = 404, "not found\n"
        data = six.ensure_binary(body)
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt, *args):
        print(f"{self.address_string()} {fmt % args}", flush=True)


if __name__ == "__main__":
    port = int(os.environ.get("PORT", "8080"))
    print(f"python-deps-app listening on port {port} (six {six.__version__})", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop promptly as PID 1
    ThreadingHTTPServer(("0.0.0.0", port), Handler).serve_forever()
