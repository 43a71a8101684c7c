#!/usr/bin/env bash
# Build the Pier stack root filesystem (Debian bookworm) and write it as a tar.
#
#   stack/build-rootfs.sh OUT.tar        (as root; works from any cwd)
#   stack/build-rootfs.sh --packages "postgresql redis-server" --commands "psql redis-server" \
#       --release services OUT.tar     (another image from the same base: the services image)
#
# --packages LIST replaces the stack's runtimes (the essentials below are always installed);
# --commands LIST are the commands that must exist afterwards; --release NAME writes
# /etc/pier-NAME-release instead of the stack's release file.
# The Debian mirror is read from the host's apt sources at build time
# (/etc/apt/sources.list and /etc/apt/sources.list.d/*.list|*.sources); set
# PIER_STACK_MIRROR=URL to override it. See docs/staging.md for the contract.
# The result is imported with: docker import OUT.tar pier-stack:bookworm-v2
set -euo pipefail

SUITE=bookworm
# runtimes for the built-in buildpacks
RUNTIMES=(
  python3 python3-pip python3-venv python-is-python3
  nodejs
  openjdk-17-jre-headless
  nginx-light
)
# essentials the buildpacks and apps rely on
ESSENTIALS=(
  ca-certificates netbase tzdata bash coreutils findutils grep sed gawk
  tar gzip bzip2 xz-utils unzip procps
)
COMMANDS=(python3 pip3 node java nginx tar gzip)
RELEASE=stack

say() { printf -- '-----> %s\n' "$*"; }
die() { printf 'build-rootfs: error: %s\n' "$*" >&2; exit 1; }

while [[ $# -gt 1 ]]; do
  case $1 in
    --packages) read -r -a RUNTIMES <<<"$2"; shift 2 ;;
    --commands) read -r -a COMMANDS <<<"$2"; shift 2 ;;
    --release) RELEASE=$2; shift 2 ;;
    *) die "unknown option $1" ;;
  esac
done
[[ $# -eq 1 ]] || die "usage: $0 [--packages LIST] [--commands LIST] [--release NAME] OUT.tar"
PACKAGES=("${RUNTIMES[@]}" "${ESSENTIALS[@]}")
[[ $(id -u) -eq 0 ]] || die "must run as root (debootstrap and chroot need it)"
command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"

# Resolve OUT to an absolute path before anything changes directory.
OUT=$1
case $OUT in /*) ;; *) OUT=$PWD/$OUT ;; esac
[[ -d $(dirname "$OUT") ]] || die "directory of $OUT does not exist"

START=$SECONDS

# ---------------------------------------------------------------------------
# Find the mirror in the host's apt sources.
# Prints lines "URL SUITE COMPONENTS..." for every deb entry (one-line and deb822).
list_apt_sources() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -f $f ]] || continue
    # deb [opts] URL suite comp...
    sed -e 's/#.*//' "$f" | awk '$1 == "deb" {
        i = 2
        if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
        url = $i; suite = $(i+1); comps = ""
        for (j = i+2; j <= NF; j++) comps = comps " " $j
        print url, suite comps }'
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] || continue
    # deb822: paragraphs separated by blank lines.
    awk '
      function flush() {
        if (types ~ /(^| )deb( |$)/ && enabled !~ /^(no|false|0)$/) {
          nu = split(uris, U, " "); ns = split(suites, S, " ")
          for (a = 1; a <= nu; a++) for (b = 1; b <= ns; b++) print U[a], S[b], comps
        }
        types = uris = suites = comps = enabled = ""
      }
      /^[ \t]*#/ { next }
      /^[ \t]*$/ { flush(); next }
      {
        key = tolower($1); sub(/:$/, "", key); $1 = ""; sub(/^ +/, "")
        if (key == "types") types = $0
        else if (key == "uris") uris = $0
        else if (key == "suites") suites = $0
        else if (key == "components") comps = $0
        else if (key == "enabled") enabled = tolower($0)
      }
      END { flush() }' "$f"
  done
}

SOURCES=$(list_apt_sources || true)
if [[ -n ${PIER_STACK_MIRROR:-} ]]; then
  MIRROR=${PIER_STACK_MIRROR%/}
  EXTRA_SOURCES=""
else
  MIRROR=$(awk -v s="$SUITE" '$2 == s { print $1; exit }' <<<"$SOURCES")
  MIRROR=${MIRROR%/}
  [[ -n $MIRROR ]] || die "no '$SUITE' entry found in the host's apt sources; set PIER_STACK_MIRROR=URL"
  # Also use the host's bookworm-updates / bookworm-security entries when it has them.
  EXTRA_SOURCES=$(awk -v s="$SUITE" '$2 == s"-updates" || $2 == s"-security" { print "deb " $1 " " $2 " main" }' <<<"$SOURCES" | sort -u)
fi
say "Mirror: $MIRROR ($SUITE)"

# ---------------------------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/pier-stack.XXXXXX")
ROOT=$WORK/rootfs
MOUNTS=()

cleanup() {
  local rc=$? i
  set +e
  for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
    umount "${MOUNTS[i]}" 2>/dev/null || umount -l "${MOUNTS[i]}" 2>/dev/null
  done
  if grep -q " $WORK/" /proc/mounts; then
    echo "build-rootfs: warning: something is still mounted under $WORK; leaving it in place" >&2
  else
    [[ $rc -eq 0 ]] && say "Removing the build directory $WORK"
    rm -rf --one-file-system "$WORK"
  fi
  rm -f "$OUT.partial"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mount_in_root() { # TYPE SOURCE DIR [OPTS]
  mkdir -p "$ROOT$3"
  mount -t "$1" ${4:+-o "$4"} "$2" "$ROOT$3"
  MOUNTS+=("$ROOT$3")
}

# Show only the interesting lines of a noisy tool; never fails, so under
# pipefail a pipeline's status is the tool's.
only() { grep --line-buffered -E "$1" || true; }

in_root() {
  chroot "$ROOT" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
    DEBIAN_FRONTEND=noninteractive "$@"
}

say "debootstrap --variant=minbase $SUITE into $ROOT"
t=$SECONDS
debootstrap --variant=minbase "$SUITE" "$ROOT" "$MIRROR" 2>&1 \
  | only '^I: (Retrieving Release|Validating Packages|Resolving dependencies of base|Installing core|Unpacking the base|Configuring the base|Base system installed)|^E:|^W:' \
  || die "debootstrap failed (see $WORK/rootfs/debootstrap/debootstrap.log)"
say "debootstrap done in $((SECONDS - t))s"

say "Configuring apt and dpkg"
{
  echo "deb $MIRROR $SUITE main"
  [[ -n $EXTRA_SOURCES ]] && echo "$EXTRA_SOURCES"
} >"$ROOT/etc/apt/sources.list"
cp /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true
# Keep documentation and man pages out of the image (copyright files stay).
cat >"$ROOT/etc/dpkg/dpkg.cfg.d/01-pier-nodoc" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
EOF
cat >"$ROOT/etc/apt/apt.conf.d/01-pier" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
EOF
# No daemons may start inside the chroot (nginx's postinst would try).
printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
chmod 755 "$ROOT/usr/sbin/policy-rc.d"

mount_in_root proc proc /proc
mount_in_root sysfs sysfs /sys ro
mount_in_root devpts devpts /dev/pts newinstance,ptmxmode=0666

say "apt-get update"
in_root apt-get -q update 2>&1 | only '^(Get|Err|E:|W:)' || die "apt-get update failed"

say "Installing: ${PACKAGES[*]}"
t=$SECONDS
in_root apt-get -q -y --no-install-recommends -o Dpkg::Use-Pty=0 install "${PACKAGES[@]}" 2>&1 \
  | only '^(Need to get|After this operation|Setting up |E:|W:|dpkg: |Errors were)|rror' || die "apt-get install failed"
for bin in "${COMMANDS[@]}"; do
  in_root sh -c "command -v $bin" >/dev/null || die "package install failed: $bin missing from the image"
done
say "Packages installed in $((SECONDS - t))s"

say "Creating user vcap (2000:2000)"
in_root groupadd -g 2000 vcap
in_root useradd -u 2000 -g 2000 -d /home/vcap -m -s /bin/bash vcap
install -d -o 2000 -g 2000 -m 0755 "$ROOT/home/vcap" "$ROOT/home/vcap/app" "$ROOT/tmp/cache"
chmod 1777 "$ROOT/tmp" "$ROOT/var/tmp"

say "Cleaning up"
in_root apt-get clean
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin "$ROOT"/var/log/apt/* \
  "$ROOT"/var/log/dpkg.log "$ROOT"/var/log/alternatives.log "$ROOT"/var/cache/debconf/*-old \
  "$ROOT"/usr/sbin/policy-rc.d "$ROOT"/root/.cache
find "$ROOT/usr/lib" -name __pycache__ -type d -prune -exec rm -rf {} + 2>/dev/null || true
# Python compiles what it imports at every start and, running as vcap, cannot save the bytecode
# under /usr/lib: compile the standard library and Debian's Python packages once, here (a Python
# app's first imports go from ~220 ms to ~80 ms). The JRE already ships its class-data archive.
if [[ -x $ROOT/usr/bin/python3 ]]; then
  say "Compiling the Python standard library"
  in_root python3 -m compileall -q -j 0 /usr/lib/python3.11 /usr/lib/python3/dist-packages >/dev/null \
    || die "compiling the Python standard library failed"
fi
# Docker provides these at run time.
: >"$ROOT/etc/resolv.conf"
: >"$ROOT/etc/hostname"
if [[ $RELEASE == stack ]]; then
  printf 'PIER_STACK=pier-bookworm\nPIER_STACK_VERSION=2\n' >"$ROOT/etc/pier-stack-release"
else
  printf 'PIER_IMAGE=pier-%s-bookworm\n' "$RELEASE" >"$ROOT/etc/pier-$RELEASE-release"
fi

for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do umount "${MOUNTS[i]}"; done
MOUNTS=()

say "Writing $OUT"
t=$SECONDS
tar --numeric-owner --one-file-system -C "$ROOT" \
  --exclude='./proc/*' --exclude='./sys/*' --exclude='./dev/*' \
  -cf "$OUT.partial" .
mv "$OUT.partial" "$OUT"
say "Wrote $(du -h "$OUT" | cut -f1) in $((SECONDS - t))s"
say "Image root filesystem built in $((SECONDS - START))s; import it with docker import $OUT"
