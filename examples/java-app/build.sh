#!/usr/bin/env bash
# Builds examples/java-app into an executable jar: build.sh [OUT.jar] (default: ./app.jar).
# Needs a JDK (javac and jar); the stack only has a JRE, so the jar is built here and pushed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$(realpath -m "${1:-$here/app.jar}")
classes=$(mktemp -d)
trap 'rm -rf "$classes"' EXIT
javac --release 17 -d "$classes" "$here"/src/hello/*.java
jar --create --file "$out" --main-class hello.Main -C "$classes" .
echo "$out"
