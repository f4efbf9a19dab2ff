#!/usr/bin/env bash
# Remove the edgeseg service and program. Idempotent. Configuration, job store, bundles and logs are KEPT unless
# --purge is given (results beside the series in the watch folders are never touched).
#
#   sudo ./uninstall.sh [--purge]
#   ./uninstall.sh --root /tmp/fakeroot [--purge]
#
# Options (environment variables in brackets):
#   --root DIR     uninstall below DIR instead of / [DESTDIR]; systemd and users are not touched
#   --prefix DIR   program folder [PREFIX], default /opt/edgeseg
#   --purge        also remove /etc/edgeseg, /var/lib/edgeseg (job store, bundles, default watch folder),
#                  /var/log/edgeseg and the system user edgeseg
set -euo pipefail

say() { printf 'uninstall.sh: %s\n' "$*"; }
die() { printf 'uninstall.sh: ERROR: %s\n' "$*" >&2; exit 1; }

ROOT="${DESTDIR:-}"
PREFIX="${PREFIX:-/opt/edgeseg}"
PURGE=0
SERVICE_USER=edgeseg

while [ $# -gt 0 ]; do
    case "$1" in
        --root) ROOT="${2:?--root needs a folder}"; shift 2 ;;
        --root=*) ROOT="${1#*=}"; shift ;;
        --prefix) PREFIX="${2:?--prefix needs a folder}"; shift 2 ;;
        --prefix=*) PREFIX="${1#*=}"; shift ;;
        --purge) PURGE=1; shift ;;
        -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done

case "$PREFIX" in
    /?*) ;;
    *) die "--prefix must be an absolute folder other than / (got '$PREFIX')" ;;
esac
PREFIX="${PREFIX%/}"
if [ -n "$ROOT" ]; then
    [ -d "$ROOT" ] || { say "nothing installed under $ROOT (no such folder)"; exit 0; }
    ROOT="$(cd "$ROOT" && pwd)"
    if [ "$ROOT" = "/" ]; then ROOT=""; fi
fi
FAKE_ROOT=0
if [ -n "$ROOT" ]; then FAKE_ROOT=1; fi

DEST="$ROOT$PREFIX"
UNIT="$ROOT/etc/systemd/system/edgeseg.service"
DROPINS="$ROOT/etc/systemd/system/edgeseg.service.d"
LINK="$ROOT/usr/local/bin/edgeseg"

# --- stop and disable the service
if [ "$FAKE_ROOT" = 0 ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    if systemctl list-unit-files edgeseg.service >/dev/null 2>&1 && [ -f "$UNIT" ]; then
        systemctl disable --now edgeseg.service >/dev/null 2>&1 || say "could not stop/disable edgeseg (already gone?)"
        say "service edgeseg stopped and disabled"
    fi
fi

# --- remove the unit, the command link and the program
if [ -f "$UNIT" ]; then rm -f "$UNIT"; say "removed $UNIT"; fi
if [ -L "$LINK" ] && [ "$(readlink "$LINK")" = "$PREFIX/edgeseg" ]; then rm -f "$LINK"; say "removed $LINK"; fi
if [ -e "$DEST" ]; then rm -rf "$DEST" "$DEST.old"; say "removed $DEST"; else say "no program in $DEST"; fi
if [ "$FAKE_ROOT" = 0 ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    systemctl daemon-reload || true
fi

KEPT="$ROOT/etc/edgeseg $ROOT/var/lib/edgeseg $ROOT/var/log/edgeseg"
if [ "$PURGE" = 1 ]; then
    rm -rf "$ROOT/etc/edgeseg" "$ROOT/var/lib/edgeseg" "$ROOT/var/log/edgeseg" "$DROPINS"
    say "purged configuration, state, bundles and logs ($KEPT)"
    if [ "$FAKE_ROOT" = 0 ] && [ "$(id -u)" = 0 ] && id "$SERVICE_USER" >/dev/null 2>&1; then
        if command -v userdel >/dev/null 2>&1; then userdel "$SERVICE_USER" || say "could not remove user $SERVICE_USER"
        elif command -v deluser >/dev/null 2>&1; then deluser "$SERVICE_USER" || say "could not remove user $SERVICE_USER"
        fi
        say "removed system user $SERVICE_USER"
    fi
else
    say "kept configuration, state, bundles and logs (remove them with --purge): $KEPT"
    if [ -d "$DROPINS" ]; then say "kept the service drop-ins $DROPINS"; fi
fi
say "done"
