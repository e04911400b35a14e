#!/bin/sh
# Install what the real-guest harness (test/real/guest.ts) needs: QEMU, a Debian kernel with
# virtio modules, a static busybox, cpio, xz and kmod. Idempotent: does nothing when every
# package is already installed. See docs/REAL-GUEST.md.
set -eu

PACKAGES="qemu-system-x86 qemu-system-common qemu-utils linux-image-amd64 busybox-static cpio xz-utils kmod"

missing=""
for pkg in $PACKAGES; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
  if [ "$status" != "installed" ]; then
    missing="$missing $pkg"
  fi
done

if [ -z "$missing" ]; then
  echo "install-guest-deps: all packages already installed:$(printf ' %s' $PACKAGES)"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "install-guest-deps: missing packages:$missing" >&2
  echo "install-guest-deps: not running as root; install them with:" >&2
  echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends$missing" >&2
  exit 1
fi

echo "install-guest-deps: missing:$missing"
echo "install-guest-deps: running apt-get update"
DEBIAN_FRONTEND=noninteractive apt-get update -q
echo "install-guest-deps: installing (--no-install-recommends):$missing"
# shellcheck disable=SC2086 # word splitting of the package list is intended
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
echo "install-guest-deps: installed:$missing"
