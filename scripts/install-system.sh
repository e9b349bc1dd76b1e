#!/bin/sh
# Install the system packages Esker needs, from Debian: each only when its command is missing.
#   base:    Java (Spark), Node.js + npm (configurable-http-proxy), python3-venv, losetup and mkfs.ext4
#            (each server's scratch is a loop-mounted filesystem of its quota)
#            s3fs + fuse3 (each server's bucket and datasets as files)
#   browser: Chromium (the browser tests)
#   broker:  Redis (the functions' task broker as the chart runs it, for the tests; its system service is
#            not started: the tests start their own redis-server on loopback)
# Idempotent; `apt-get update` runs at most once, and only when something must be installed.
set -eu
want="${*:-base}"
pkgs=""
need() { command -v "$1" >/dev/null 2>&1 || pkgs="$pkgs $2"; }
for part in $want; do
    case "$part" in
        base)
            need java default-jre-headless
            need node nodejs
            need npm npm
            need useradd passwd
            python3 -c 'import ensurepip' 2>/dev/null || pkgs="$pkgs python3-venv"
            # Profile environments are built on the system Python: every account can execute it.
            [ -x /usr/bin/python3 ] || pkgs="$pkgs python3"
            need git git
            need losetup mount
            need mkfs.ext4 e2fsprogs
            # Buckets as files for embedded servers (s3fs-fuse; fusermount3 unmounts them)
            need s3fs s3fs
            need fusermount3 fuse3
            ;;
        browser)
            need chromium chromium
            ;;
        broker)
            need redis-server redis-server
            ;;
        *) echo "install-system: unknown part '$part' (base, browser, broker)" >&2; exit 2 ;;
    esac
done
[ -z "$pkgs" ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "install-system: please install:$pkgs (as root: apt-get install -y$pkgs)" >&2
    exit 1
fi
echo "install-system: installing$pkgs"
export DEBIAN_FRONTEND=noninteractive
# No package's service starts during the install (redis-server's would listen on 6379): policy-rc.d 101 is
# Debian's "not now" for invoke-rc.d. Only ours is removed afterwards.
rcd=/usr/sbin/policy-rc.d
if [ ! -e "$rcd" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$rcd" && chmod 755 "$rcd"
    trap 'rm -f "$rcd"' EXIT
fi
apt-get install -y --no-install-recommends $pkgs || { apt-get update -q && apt-get install -y --no-install-recommends $pkgs; }
