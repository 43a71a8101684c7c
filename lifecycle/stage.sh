#!/usr/bin/env bash
# Pier staging runner. Runs as vcap inside the staging container (networking off):
#   bash /tmp/lifecycle/stage.sh
# Contract: docs/staging.md. Exit codes:
#   222 no buildpack detected, 223 compile failed, 224 release failed, 225 packing the droplet failed.
# Inputs:  /tmp/app (the app), /tmp/buildpacks/NAME (read-only), /tmp/cache, /tmp/env,
#          PIER_BUILDPACKS="a b c" (order to try; empty = every folder in /tmp/buildpacks, by name).
# Outputs: /tmp/out/{droplet.tgz,release.yml,buildpack,Procfile}
set -uo pipefail

BUILD_DIR=${PIER_BUILD_DIR:-/tmp/app}
BUILDPACKS_DIR=${PIER_BUILDPACKS_DIR:-/tmp/buildpacks}
CACHE_DIR=${PIER_CACHE_DIR:-/tmp/cache}
ENV_DIR=${PIER_ENV_DIR:-/tmp/env}
OUT_DIR=${PIER_OUT_DIR:-/tmp/out}

say() { printf -- '-----> %s\n' "$*"; }
fail() { # EXIT_CODE MESSAGE
  printf '%s\n' "$2" >&2
  exit "$1"
}

[[ -d $BUILD_DIR ]] || fail 1 "Staging error: the app directory $BUILD_DIR is missing"
mkdir -p "$CACHE_DIR" "$ENV_DIR" "$OUT_DIR" 2>/dev/null
[[ -w $OUT_DIR ]] || fail 1 "Staging error: $OUT_DIR is not writable"
[[ -w $CACHE_DIR ]] || printf 'Warning: the buildpack cache %s is not writable\n' "$CACHE_DIR" >&2

# Buildpack processes inherit our stdout/stderr, so their output streams line by line.
export PYTHONUNBUFFERED=1
export STACK=${CF_STACK:-pier-bookworm} CF_STACK=${CF_STACK:-pier-bookworm}

read -r -a ORDER <<<"${PIER_BUILDPACKS:-}"
if [[ ${#ORDER[@]} -eq 0 ]]; then
  for d in "$BUILDPACKS_DIR"/*/; do
    [[ -d $d ]] && ORDER+=("$(basename "$d")")
  done
fi

# 1. Detect: the first buildpack whose bin/detect exits 0 wins.
SELECTED=""
TRIED=()
for name in "${ORDER[@]}"; do
  TRIED+=("$name")
  bp=$BUILDPACKS_DIR/$name
  if [[ ! -x $bp/bin/detect ]]; then
    printf 'Warning: buildpack %s has no executable bin/detect (%s); skipping it\n' "$name" "$bp/bin/detect" >&2
    continue
  fi
  # A buildpack prints its name on stdout when it detects; we print our own line instead.
  if (cd "$BUILD_DIR" && "$bp/bin/detect" "$BUILD_DIR" >/dev/null); then
    SELECTED=$name
    break
  fi
done

if [[ -z $SELECTED ]]; then
  tried=$(printf '%s, ' "${TRIED[@]}")
  fail 222 "None of the buildpacks detected a compatible app. Tried: ${tried%, }"
fi
say "Detected buildpack: $SELECTED"
bp=$BUILDPACKS_DIR/$SELECTED

# 2. Compile, output streamed.
(cd "$BUILD_DIR" && "$bp/bin/compile" "$BUILD_DIR" "$CACHE_DIR" "$ENV_DIR")
rc=$?
if [[ $rc -ne 0 ]]; then
  fail 223 "Buildpack $SELECTED failed to compile the app (exit status $rc)"
fi

# 3. Release.
(cd "$BUILD_DIR" && "$bp/bin/release" "$BUILD_DIR") >"$OUT_DIR/release.yml"
rc=$?
if [[ $rc -ne 0 ]]; then
  fail 224 "Buildpack $SELECTED failed to release the app (exit status $rc)"
fi

# 4. Outputs and the droplet: entries are app/..., owned by vcap.
say "Packing the droplet"
{
  rm -f "$OUT_DIR/Procfile" &&
    if [[ -f $BUILD_DIR/Procfile ]]; then cp "$BUILD_DIR/Procfile" "$OUT_DIR/Procfile"; fi &&
    printf '%s\n' "$SELECTED" >"$OUT_DIR/buildpack" &&
    tar -C "$(dirname "$BUILD_DIR")" -cf - "$(basename "$BUILD_DIR")" | gzip -1 >"$OUT_DIR/droplet.tgz"
} || fail 225 "Staging error: could not pack the droplet"
say "Droplet: $(du -h "$OUT_DIR/droplet.tgz" | cut -f1)"
exit 0
