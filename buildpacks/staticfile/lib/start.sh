#!/usr/bin/env bash
# Start nginx for a site built by the staticfile buildpack. Renders the config for this
# instance ($PORT, the app's current location) into a private run dir, then execs nginx.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
APP=$(cd "$HERE/../.." && pwd)
RUN=$(mktemp -d "${TMPDIR:-/tmp}/nginx.XXXXXX")
ROOT=$APP/$(cat "$HERE/root")
sed -e "s|@PORT@|${PORT:-8080}|g" -e "s|@ROOT@|$ROOT|g" -e "s|@RUN@|$RUN|g" \
  "$HERE/nginx.conf.in" >"$RUN/nginx.conf"
echo "Starting nginx on port ${PORT:-8080}, serving $ROOT"
exec nginx -e stderr -p "$RUN" -c "$RUN/nginx.conf"
