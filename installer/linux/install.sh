#!/usr/bin/env bash
# Install (or upgrade) the frozen edgeseg runtime as a systemd service. Idempotent: run it again to upgrade;
# an existing /etc/edgeseg/watch_config.yaml is never overwritten.
#
#   sudo ./install.sh                      # from the unpacked archive edgeseg-<version>-linux-x86_64/
#   ./install.sh --root /tmp/fakeroot      # into a throwaway root (tests, packaging): no user, no systemctl
#   ./install.sh --app installer/dist/edgeseg   # from a build folder of the repo
#
# Options (environment variables in brackets):
#   --root DIR     install below DIR instead of / [DESTDIR]; no user is created and systemd is not touched
#   --prefix DIR   program folder [PREFIX], default /opt/edgeseg
#   --app DIR      the frozen program folder (holds the edgeseg executable), default <this folder>/edgeseg
#   --no-user      do not create the system user edgeseg
#   --no-start     install and enable nothing in systemd, only copy files
#
# Layout: PREFIX/ (program, INSTALL.txt), /etc/edgeseg/watch_config.yaml (config, kept),
# /var/lib/edgeseg/{incoming,state,bundles} (default watch folder, job store and model cache, bundles),
# /var/log/edgeseg (logs), /etc/systemd/system/edgeseg.service, /usr/local/bin/edgeseg -> PREFIX/edgeseg.
set -euo pipefail

say() { printf 'install.sh: %s\n' "$*"; }
die() { printf 'install.sh: ERROR: %s\n' "$*" >&2; exit 1; }

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="${DESTDIR:-}"
PREFIX="${PREFIX:-/opt/edgeseg}"
APP=""
MAKE_USER=1
START=1
SERVICE_USER=edgeseg

while [ $# -gt 0 ]; do
    case "$1" in
        --root) ROOT="${2:?--root needs a folder}"; shift 2 ;;
        --root=*) ROOT="${1#*=}"; shift ;;
        --prefix) PREFIX="${2:?--prefix needs a folder}"; shift 2 ;;
        --prefix=*) PREFIX="${1#*=}"; shift ;;
        --app) APP="${2:?--app needs a folder}"; shift 2 ;;
        --app=*) APP="${1#*=}"; shift ;;
        --no-user) MAKE_USER=0; shift ;;
        --no-start) START=0; shift ;;
        -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done

case "$PREFIX" in
    /?*) ;;
    *) die "--prefix must be an absolute folder other than / (got '$PREFIX')" ;;
esac
PREFIX="${PREFIX%/}"
if [ -n "$ROOT" ]; then
    mkdir -p "$ROOT"
    ROOT="$(cd "$ROOT" && pwd)"
    if [ "$ROOT" = "/" ]; then ROOT=""; fi
fi
FAKE_ROOT=0
if [ -n "$ROOT" ]; then FAKE_ROOT=1; fi

# --- what to install
if [ -z "$APP" ]; then
    for candidate in "$HERE/edgeseg" "$HERE/../dist/edgeseg"; do
        if [ -x "$candidate/edgeseg" ]; then APP="$candidate"; break; fi
    done
fi
[ -n "$APP" ] && [ -x "$APP/edgeseg" ] || die "no frozen program folder found (expected $HERE/edgeseg/edgeseg); pass --app DIR"
APP="$(cd "$APP" && pwd)"
UNIT_SRC="$HERE/edgeseg.service"
[ -f "$UNIT_SRC" ] || die "the systemd unit $UNIT_SRC is missing"
CONFIG_SRC=""
for candidate in "$HERE/watch_config.yaml" "$APP/watch_config.yaml" "$HERE/../../watch_config.yaml"; do
    if [ -f "$candidate" ]; then CONFIG_SRC="$candidate"; break; fi
done
[ -n "$CONFIG_SRC" ] || die "no watch_config.yaml next to $HERE or in $APP"
BUNDLE_SRC=""
if [ -f "$HERE/bundles/demo/bundle.json" ]; then BUNDLE_SRC="$HERE/bundles/demo"; fi

DEST="$ROOT$PREFIX"
ETC="$ROOT/etc/edgeseg"
VARLIB="$ROOT/var/lib/edgeseg"
VARLOG="$ROOT/var/log/edgeseg"
UNIT="$ROOT/etc/systemd/system/edgeseg.service"
LINK="$ROOT/usr/local/bin/edgeseg"

say "installing $APP -> $DEST${ROOT:+ (root $ROOT)}"

# --- the system user
HAVE_USER=0
if [ "$MAKE_USER" = 1 ] && [ "$FAKE_ROOT" = 0 ] && [ "$(id -u)" = 0 ]; then
    if id "$SERVICE_USER" >/dev/null 2>&1; then
        say "system user $SERVICE_USER exists"
    else
        NOLOGIN="$(command -v nologin || echo /usr/sbin/nologin)"
        if command -v useradd >/dev/null 2>&1; then
            useradd --system --user-group --home-dir /var/lib/edgeseg --no-create-home --shell "$NOLOGIN" \
                --comment "edgeseg MRI segmentation watcher" "$SERVICE_USER"
        elif command -v adduser >/dev/null 2>&1; then
            adduser -S -D -H -h /var/lib/edgeseg -s "$NOLOGIN" "$SERVICE_USER"
        else
            die "neither useradd nor adduser is available to create the user $SERVICE_USER"
        fi
        say "created system user $SERVICE_USER"
    fi
    HAVE_USER=1
elif [ "$MAKE_USER" = 0 ]; then
    say "not creating the system user $SERVICE_USER (--no-user); the unit runs as User=$SERVICE_USER"
elif [ "$FAKE_ROOT" = 1 ]; then
    say "skipping the system user $SERVICE_USER: installing into the throwaway root $ROOT"
else
    say "skipping the system user $SERVICE_USER: not running as root (re-run with sudo for a service install)"
fi

# --- the program: copied next to the old one, then swapped in, so a failed copy leaves the old one working
mkdir -p "$(dirname "$DEST")"
NEW="$DEST.new.$$"
rm -rf "$NEW"
cp -a "$APP" "$NEW"
if [ -f "$HERE/INSTALL.txt" ]; then cp "$HERE/INSTALL.txt" "$NEW/INSTALL.txt"; fi
cp "$CONFIG_SRC" "$NEW/watch_config.yaml.default"
if [ -e "$DEST" ]; then
    rm -rf "$DEST.old"
    mv "$DEST" "$DEST.old"
fi
mv "$NEW" "$DEST"
rm -rf "$DEST.old"
chmod 0755 "$DEST" "$DEST/edgeseg"
mkdir -p "$(dirname "$LINK")"
ln -sfn "$PREFIX/edgeseg" "$LINK"
say "program in $DEST; command $LINK"

# --- state, log, watch and bundle folders
mkdir -p "$VARLIB/incoming" "$VARLIB/state" "$VARLIB/bundles" "$VARLOG"
if [ -n "$BUNDLE_SRC" ]; then
    rm -rf "$VARLIB/bundles/demo.new"
    cp -a "$BUNDLE_SRC" "$VARLIB/bundles/demo.new"
    rm -rf "$VARLIB/bundles/demo"
    mv "$VARLIB/bundles/demo.new" "$VARLIB/bundles/demo"
    say "default bundle in $VARLIB/bundles/demo"
fi
chmod 0750 "$VARLIB" "$VARLIB/state" "$VARLOG"
chmod 0770 "$VARLIB/incoming"
if [ "$HAVE_USER" = 1 ]; then
    chown -R "$SERVICE_USER:$SERVICE_USER" "$VARLIB" "$VARLOG"
fi

# --- configuration: never overwrite an existing one
mkdir -p "$ETC"
if [ -f "$ETC/watch_config.yaml" ]; then
    say "keeping the existing configuration $ETC/watch_config.yaml (new default: $PREFIX/watch_config.yaml.default)"
else
    TMP_CONFIG="$ETC/.watch_config.yaml.$$"
    {
        echo "# Installed by edgeseg install.sh. Set roots: to the folder(s) the scanner console exports to, and add"
        echo "# each of them to ReadWritePaths= of the service (systemctl edit edgeseg), then: systemctl restart edgeseg"
        echo "# Check with: edgeseg doctor --config /etc/edgeseg/watch_config.yaml"
        sed -e 's#^\(  *- \)\./incoming *$#\1/var/lib/edgeseg/incoming#' \
            -e 's#^state_dir: .*#state_dir: /var/lib/edgeseg/state#' \
            -e 's#^log_dir: .*#log_dir: /var/log/edgeseg#' \
            "$CONFIG_SRC"
    } > "$TMP_CONFIG"
    for want in "/var/lib/edgeseg/incoming" "state_dir: /var/lib/edgeseg/state" "log_dir: /var/log/edgeseg"; do
        grep -q -- "$want" "$TMP_CONFIG" || say "WARNING: could not set '$want' in the configuration; edit it by hand"
    done
    chmod 0640 "$TMP_CONFIG"
    mv "$TMP_CONFIG" "$ETC/watch_config.yaml"
    say "configuration $ETC/watch_config.yaml (watch folder /var/lib/edgeseg/incoming; edit roots:)"
fi
if [ "$HAVE_USER" = 1 ]; then
    chown "root:$SERVICE_USER" "$ETC" "$ETC/watch_config.yaml"
    chmod 0750 "$ETC"
fi

# --- the systemd unit (paths follow --prefix)
mkdir -p "$(dirname "$UNIT")"
sed -e "s#/opt/edgeseg/#$PREFIX/#g" "$UNIT_SRC" > "$UNIT.tmp.$$"
chmod 0644 "$UNIT.tmp.$$"
mv "$UNIT.tmp.$$" "$UNIT"
say "systemd unit $UNIT"

if [ "$START" = 0 ]; then
    say "not enabling the service (--no-start)"
elif [ "$FAKE_ROOT" = 1 ]; then
    say "not enabling the service: installed into the throwaway root $ROOT"
elif [ ! -d /run/systemd/system ] || ! command -v systemctl >/dev/null 2>&1; then
    say "systemd is not running here: start the watcher later with: systemctl enable --now edgeseg"
elif [ "$(id -u)" != 0 ]; then
    say "not root: enable the service with: sudo systemctl enable --now edgeseg"
else
    systemctl daemon-reload
    systemctl enable edgeseg.service >/dev/null
    systemctl restart edgeseg.service
    say "service edgeseg enabled and (re)started; status: systemctl status edgeseg; queue: edgeseg status --config /etc/edgeseg/watch_config.yaml"
fi
say "done"
