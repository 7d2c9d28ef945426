#!/usr/bin/env bash
# Make `promtool` (Prometheus' checker for metrics text, rules and configs) available,
# without installing the Prometheus server.
#
#   scripts/install-promtool.sh          print the path of a working promtool, installing it if missing
#   scripts/install-promtool.sh --path   print the path if one is available; exit 1 otherwise (no install)
#
# Order: `promtool` in PATH, then <repo>/.cache/promtool/promtool. When neither exists it
# downloads Debian's `prometheus` package with `apt-get download` and extracts only
# /usr/bin/promtool from it with `dpkg-deb -x` into $SA01_CACHE_DIR/promtool (default
# <repo>/.cache/promtool). Installing the package itself is avoided on purpose: it
# would pull a dozen JavaScript packages, create a system user and start a server.
# promtool needs nothing but libc. `apt-get update` runs once if the package lists
# lack `prometheus` (that needs root, as in CI).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${SA01_CACHE_DIR:-$ROOT/.cache}"
DEST="$CACHE/promtool"
BINARY="$DEST/promtool"

log() { printf '[install-promtool] %s\n' "$*" >&2; }
die() { printf '[install-promtool] error: %s\n' "$*" >&2; exit 1; }

works() { [ -x "$1" ] && "$1" --version >/dev/null 2>&1; }

found() {
  local candidate
  candidate="$(command -v promtool 2>/dev/null || true)"
  if [ -n "$candidate" ] && works "$candidate"; then
    printf '%s\n' "$candidate"
    return 0
  fi
  if works "$BINARY"; then
    printf '%s\n' "$BINARY"
    return 0
  fi
  return 1
}

if found; then
  exit 0
fi
if [ "${1:-}" = "--path" ]; then
  exit 1
fi

command -v apt-get >/dev/null || die "apt-get is not available: put promtool in PATH or at $BINARY"
command -v dpkg-deb >/dev/null || die "dpkg-deb is not available: put promtool in PATH or at $BINARY"

update_lists() {
  [ "$(id -u)" = 0 ] || die "$1, and apt-get update needs root: run this script as root once"
  log "apt-get update ($1)"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || die "apt-get update failed"
}

download() { (cd "$WORK" && apt-get download -qq prometheus >&2); }

updated=no
if ! apt-cache show prometheus >/dev/null 2>&1; then
  update_lists "the package lists lack 'prometheus'"
  updated=yes
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
# apt's download sandbox user must be able to write there (else apt warns and runs as root).
if [ "$(id -u)" = 0 ] && id _apt >/dev/null 2>&1; then chown _apt "$WORK"; fi
log "downloading Debian's prometheus package to extract promtool"
if ! download; then
  # Stale package lists name a version the mirror no longer has: refresh them once.
  [ "$updated" = no ] || die "apt-get download prometheus failed"
  update_lists "apt-get download prometheus failed"
  download || die "apt-get download prometheus failed"
fi
deb="$(ls "$WORK"/prometheus_*.deb 2>/dev/null | head -n 1)"
[ -n "$deb" ] || die "apt-get download left no prometheus_*.deb"
dpkg-deb -x "$deb" "$WORK/root" || die "dpkg-deb -x $deb failed"
[ -x "$WORK/root/usr/bin/promtool" ] || die "$deb holds no usr/bin/promtool"

mkdir -p "$DEST"
install -m 0755 "$WORK/root/usr/bin/promtool" "$BINARY.tmp.$$"
mv -f "$BINARY.tmp.$$" "$BINARY"
works "$BINARY" || die "$BINARY does not run"
log "installed $("$BINARY" --version 2>&1 | head -n 1) at $BINARY"
printf '%s\n' "$BINARY"
