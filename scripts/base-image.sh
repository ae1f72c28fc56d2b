#!/bin/bash
# Makes the two base images the Containerfile starts FROM, from Debian
# packages only (mmdebstrap), so no image is pulled from a container registry:
#   localhost/keyhaven-base:<suite>        Node.js from Debian, CA certificates
#   localhost/keyhaven-base-build:<suite>  the same plus npm and a C++ toolchain
#                                          (better-sqlite3 and pkcs11js compile)
# Debian 13 (trixie) ships Node.js 20.19, inside package.json "engines"
# (>=20.18.1 <21 || >=22); Debian 12 (bookworm) ships 18, too old.
#
# Usage: scripts/base-image.sh   (as root, or where mmdebstrap can unshare)
# Environment: SUITE (trixie), MIRROR (http://deb.debian.org/debian; a local
# mirror or apt-cacher makes it work without the internet), ENGINE (podman;
# docker works too), SOURCE_DATE_EPOCH (fixed file times for repeatable bases).
set -euo pipefail

SUITE=${SUITE:-trixie}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
ENGINE=${ENGINE:-podman}

for tool in mmdebstrap "$ENGINE"; do
  command -v "$tool" >/dev/null 2>&1 || { echo "base-image.sh: $tool is not installed (apt-get install $tool)" >&2; exit 1; }
done

# $1: image name, $2: comma-separated packages. mmdebstrap writes a tarball
# to stdout and the engine imports it as a one-layer image. Docs, man pages
# and translations are left out, and apt's lists and caches removed: a
# container never runs apt, its root is read-only.
make_base() {
  echo "base-image.sh: building $1 ($SUITE: $2)" >&2
  mmdebstrap --variant=minbase --include="$2" \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/log/*' \
    "$SUITE" - "$MIRROR" \
    | "$ENGINE" import \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'CMD ["/bin/bash"]' \
      - "$1"
}

make_base "localhost/keyhaven-base:$SUITE" nodejs,ca-certificates
make_base "localhost/keyhaven-base-build:$SUITE" nodejs,npm,node-gyp,libnode-dev,python3,make,g++,ca-certificates
