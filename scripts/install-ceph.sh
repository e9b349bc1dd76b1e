#!/bin/sh
# Install the Ceph daemons Esker's embedded object storage runs (Debian/Ubuntu packages).
# Idempotent: does nothing when everything is installed; runs `apt-get update` only when a package
# is missing and apt has no candidate for it. Needs root (or sudo). No daemon is started or enabled:
# esker.objectstore.cephd starts its own, under $ESKER_STATE_DIR.
set -eu

PACKAGES="ceph-mon ceph-osd radosgw ceph-common uuid-runtime"

missing=""
for p in $PACKAGES; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done

if [ -z "$missing" ]; then
    echo "install-ceph: already installed:$(for p in $PACKAGES; do printf ' %s' "$p"; done)"
    ceph --version 2>/dev/null || true
    exit 0
fi

SUDO=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "install-ceph: need root to install:$missing" >&2; exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
# Update the package lists only when one of the missing packages has no install candidate.
need_update=0
for p in $missing; do
    cand=$(apt-cache policy "$p" 2>/dev/null | awk '/Candidate:/ {print $2}')
    if [ -z "$cand" ] || [ "$cand" = "(none)" ]; then need_update=1; fi
done
if [ "$need_update" = 1 ]; then
    echo "install-ceph: apt-get update"
    $SUDO apt-get update -q
fi

echo "install-ceph: installing:$missing"
# "Failed to connect to bus" from the postinst scripts is harmless on a machine without systemd.
$SUDO apt-get install -y -q --no-install-recommends $missing
ceph --version
