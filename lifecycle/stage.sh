#!/usr/bin/env bash
# Pier staging runner. Runs as vcap inside the staging container (networking off):
#   bash /tmp/lifecycle/stage.sh
# Contract: docs/staging.md. Exit codes:
#   222 no buildpack detected, 223 a buildpack's supply/finalize/compile failed, 224 release failed,
#   225 packing the droplet failed, 226 a named buildpack is unusable (missing scripts).
# Inputs:  /tmp/app (the app), /tmp/buildpacks/NAME (read-only), /tmp/local-buildpacks/NAME (pushed
#          with -b ./path), /tmp/cache, /tmp/env,
#          PIER_BUILDPACKS="a b /tmp/local-buildpacks/c" (names or absolute folders; empty = every
#          folder in /tmp/buildpacks, by name), PIER_BUILDPACKS_EXPLICIT=1 when the user named them
#          (then nothing is detected: with several, all but the last supply and the last finalizes).
# Outputs: /tmp/out/{droplet.tgz,release.yml,buildpack,Procfile}; the droplet holds app/ and deps/.
set -uo pipefail

BUILD_DIR=${PIER_BUILD_DIR:-/tmp/app}
BUILDPACKS_DIR=${PIER_BUILDPACKS_DIR:-/tmp/buildpacks}
CACHE_DIR=${PIER_CACHE_DIR:-/tmp/cache}
ENV_DIR=${PIER_ENV_DIR:-/tmp/env}
OUT_DIR=${PIER_OUT_DIR:-/tmp/out}
# Cloud Foundry's layout: supply buildpacks install into DEPS_DIR/INDEX; the droplet carries it next
# to app/, so it runs at /home/vcap/deps (and .profile.d/000_pier_deps.sh points DEPS_DIR there).
DEPS_DIR=${PIER_DEPS_DIR:-$(dirname "$BUILD_DIR")/deps}
PROFILE_DIR=$BUILD_DIR/.profile.d

say() { printf -- '-----> %s\n' "$*"; }
fail() { # EXIT_CODE MESSAGE
  printf '%s\n' "$2" >&2
  exit "$1"
}

[[ -d $BUILD_DIR ]] || fail 1 "Staging error: the app directory $BUILD_DIR is missing"
mkdir -p "$CACHE_DIR" "$ENV_DIR" "$OUT_DIR" "$DEPS_DIR" 2>/dev/null
[[ -w $OUT_DIR ]] || fail 1 "Staging error: $OUT_DIR is not writable"
[[ -w $CACHE_DIR ]] || printf 'Warning: the buildpack cache %s is not writable\n' "$CACHE_DIR" >&2

# Buildpack processes inherit our stdout/stderr, so their output streams line by line.
export PYTHONUNBUFFERED=1
export STACK=${CF_STACK:-pier-bookworm} CF_STACK=${CF_STACK:-pier-bookworm}
export DEPS_DIR

read -r -a ORDER <<<"${PIER_BUILDPACKS:-}"
if [[ ${#ORDER[@]} -eq 0 ]]; then
  for d in "$BUILDPACKS_DIR"/*/; do
    [[ -d $d ]] && ORDER+=("$(basename "$d")")
  done
fi

bp_dir() { # an entry of ORDER: a name under BUILDPACKS_DIR, or an absolute folder
  case $1 in
    /*) printf '%s' "$1" ;;
    *) printf '%s' "$BUILDPACKS_DIR/$1" ;;
  esac
}
bp_name() { basename "$1"; }

# run_step NAME SCRIPT ARGS...: runs a buildpack script from BUILD_DIR, output streamed; on failure
# prints which buildpack and script failed with its exit status, and exits 223.
run_step() {
  local name=$1 script=$2
  shift 2
  (cd "$BUILD_DIR" && "$script" "$@")
  local rc=$?
  if [[ $rc -ne 0 ]]; then
    local what
    case ${script##*/} in
      compile) what="failed to compile the app" ;;
      *) what="failed in bin/${script##*/}" ;;
    esac
    fail 223 "Buildpack $name $what (exit status $rc)"
  fi
}

SELECTED=()
if [[ ${PIER_BUILDPACKS_EXPLICIT:-} == 1 && ${#ORDER[@]} -gt 0 ]]; then
  # Named buildpacks run without detection, as on Cloud Foundry (`cf push -b a -b b`).
  for entry in "${ORDER[@]}"; do
    [[ -d $(bp_dir "$entry") ]] || fail 226 "Buildpack $(bp_name "$entry") is not installed"
  done
  SELECTED=("${ORDER[@]}")
  if [[ ${#SELECTED[@]} -eq 1 ]]; then
    say "Using buildpack: $(bp_name "${SELECTED[0]}") (named with -b, not detected)"
  else
    names=()
    for e in "${SELECTED[@]}"; do names+=("$(bp_name "$e")"); done
    say "Using buildpacks: ${names[*]} (named; the last one finalizes)"
  fi
else
  # 1. Detect: the first buildpack whose bin/detect exits 0 wins.
  TRIED=()
  for entry in "${ORDER[@]}"; do
    name=$(bp_name "$entry")
    TRIED+=("$name")
    bp=$(bp_dir "$entry")
    if [[ ! -x $bp/bin/detect ]]; then
      printf 'Warning: buildpack %s has no executable bin/detect (%s); skipping it\n' "$name" "$bp/bin/detect" >&2
      continue
    fi
    # A buildpack prints its name on stdout when it detects; we print our own line instead.
    if (cd "$BUILD_DIR" && "$bp/bin/detect" "$BUILD_DIR" >/dev/null); then
      SELECTED=("$entry")
      break
    fi
  done
  if [[ ${#SELECTED[@]} -eq 0 ]]; then
    tried=$(printf '%s, ' "${TRIED[@]}")
    fail 222 "None of the buildpacks detected a compatible app. Tried: ${tried%, }"
  fi
  say "Detected buildpack: $(bp_name "${SELECTED[0]}")"
fi

# Check every script exists before running any, so a bad combination fails before it builds.
LAST=$((${#SELECTED[@]} - 1))
for i in "${!SELECTED[@]}"; do
  bp=$(bp_dir "${SELECTED[$i]}")
  name=$(bp_name "${SELECTED[$i]}")
  if [[ $i -lt $LAST ]]; then
    [[ -x $bp/bin/supply ]] || fail 226 "Buildpack $name has no executable bin/supply, so it cannot run before another buildpack; put it last, or use a buildpack that supports multi-buildpack staging"
  else
    [[ -x $bp/bin/finalize || -x $bp/bin/compile ]] || fail 226 "Buildpack $name has neither bin/finalize nor bin/compile, so it cannot be the last buildpack"
  fi
done

# 2. Build. Several buildpacks each get their own cache folder; a single one gets the whole cache.
cache_for() {
  if [[ $LAST -eq 0 ]]; then printf '%s' "$CACHE_DIR"; else printf '%s/%s' "$CACHE_DIR" "$1"; fi
}
for i in "${!SELECTED[@]}"; do mkdir -p "$DEPS_DIR/$i"; done
for i in "${!SELECTED[@]}"; do
  bp=$(bp_dir "${SELECTED[$i]}")
  name=$(bp_name "${SELECTED[$i]}")
  cache=$(cache_for "$name")
  mkdir -p "$cache" 2>/dev/null
  if [[ $i -lt $LAST ]]; then
    say "Supplying with $name"
    run_step "$name" "$bp/bin/supply" "$BUILD_DIR" "$cache" "$DEPS_DIR" "$i"
  elif [[ -x $bp/bin/finalize ]]; then
    if [[ -x $bp/bin/supply ]]; then
      run_step "$name" "$bp/bin/supply" "$BUILD_DIR" "$cache" "$DEPS_DIR" "$i"
    fi
    mkdir -p "$PROFILE_DIR"
    run_step "$name" "$bp/bin/finalize" "$BUILD_DIR" "$cache" "$DEPS_DIR" "$i" "$PROFILE_DIR"
  else
    run_step "$name" "$bp/bin/compile" "$BUILD_DIR" "$cache" "$ENV_DIR"
  fi
done
FINAL=${SELECTED[$LAST]}
FINAL_NAME=$(bp_name "$FINAL")

# 3. Release (the last buildpack's).
if [[ -x $(bp_dir "$FINAL")/bin/release ]]; then
  (cd "$BUILD_DIR" && "$(bp_dir "$FINAL")/bin/release" "$BUILD_DIR") >"$OUT_DIR/release.yml"
  rc=$?
  if [[ $rc -ne 0 ]]; then
    fail 224 "Buildpack $FINAL_NAME failed to release the app (exit status $rc)"
  fi
else
  printf 'Warning: buildpack %s has no bin/release; the start command must come from the Procfile or -c\n' "$FINAL_NAME" >&2
  : >"$OUT_DIR/release.yml"
fi

# config_vars from the release become defaults the app's own env overrides (as on Heroku).
# Only flat `KEY: value` lines under `config_vars:` are read; values are written shell-quoted.
write_config_vars() {
  local vars
  vars=$(awk '
    /^config_vars:[[:space:]]*$/ { on = 1; next }
    on && /^[^[:space:]#]/ { on = 0 }
    on && /^[[:space:]]+[A-Za-z_][A-Za-z0-9_]*:/ {
      line = $0; sub(/^[[:space:]]+/, "", line)
      key = line; sub(/:.*/, "", key)
      val = line; sub(/^[^:]*:[[:space:]]*/, "", val); sub(/[[:space:]]+$/, "", val)
      if (val ~ /^".*"$/ || val ~ /^'\''.*'\''$/) val = substr(val, 2, length(val) - 2)
      print key "\t" val
    }' "$OUT_DIR/release.yml")
  [[ -n $vars ]] || return 0
  mkdir -p "$PROFILE_DIR"
  {
    echo "# config_vars from the $FINAL_NAME buildpack's bin/release: defaults; the app's env wins."
    while IFS=$'\t' read -r k v; do
      printf 'if [ -z "${%s+x}" ]; then export %s=%q; fi\n' "$k" "$k" "$v"
    done <<<"$vars"
  } >"$PROFILE_DIR/000_config_vars.sh"
}
write_config_vars

# Supplied dependencies: DEPS_DIR at run time, their bin/ and lib/ on the paths, and the profile.d
# scripts supply buildpacks left in DEPS_DIR/INDEX/profile.d, sourced before the app's own.
write_deps_profile() {
  local any=0 i f
  for i in "${!SELECTED[@]}"; do
    [[ -n $(ls -A "$DEPS_DIR/$i" 2>/dev/null) ]] && any=1
  done
  [[ $any -eq 1 ]] || return 0
  mkdir -p "$PROFILE_DIR"
  cat >"$PROFILE_DIR/000_pier_deps.sh" <<'PROFILE'
# Written by Pier's staging: dependencies supplied by buildpacks live in /home/vcap/deps/INDEX.
export DEPS_DIR="$(cd "$HOME/.." && pwd)/deps"
for d in "$DEPS_DIR"/*/; do
  [ -d "${d}bin" ] && PATH="${d}bin:$PATH"
  [ -d "${d}lib" ] && LD_LIBRARY_PATH="${d}lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
export PATH
[ -n "${LD_LIBRARY_PATH:-}" ] && export LD_LIBRARY_PATH
PROFILE
  for i in "${!SELECTED[@]}"; do
    for f in "$DEPS_DIR/$i"/profile.d/*.sh; do
      [[ -f $f ]] && cp "$f" "$PROFILE_DIR/00_deps_${i}_$(basename "$f")"
    done
  done
}
write_deps_profile

# 4. Outputs and the droplet: entries are app/... and deps/..., owned by vcap.
say "Packing the droplet"
{
  rm -f "$OUT_DIR/Procfile" &&
    if [[ -f $BUILD_DIR/Procfile ]]; then cp "$BUILD_DIR/Procfile" "$OUT_DIR/Procfile"; fi &&
    names=() && for e in "${SELECTED[@]}"; do names+=("$(bp_name "$e")"); done &&
    (IFS=,; printf '%s\n' "${names[*]}") >"$OUT_DIR/buildpack" &&
    if [[ $(dirname "$DEPS_DIR") == "$(dirname "$BUILD_DIR")" ]]; then
      tar -C "$(dirname "$BUILD_DIR")" -cf - "$(basename "$BUILD_DIR")" "$(basename "$DEPS_DIR")"
    else
      tar -C "$(dirname "$BUILD_DIR")" -cf - "$(basename "$BUILD_DIR")"
    fi | gzip -1 >"$OUT_DIR/droplet.tgz"
} || fail 225 "Staging error: could not pack the droplet"
say "Droplet: $(du -h "$OUT_DIR/droplet.tgz" | cut -f1)"
exit 0
