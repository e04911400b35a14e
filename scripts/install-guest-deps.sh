#!/bin/sh
# Install what the real-guest harness (test/real/guest.ts) needs: QEMU, a Debian kernel with
# virtio modules, a static busybox, cpio, xz and kmod; and what the tap backend's tests
# (test/node/net-tap.test.ts) need: ip (iproute2) and ping (iputils-ping). Idempotent: does
# nothing when every package is already installed. See docs/REAL-GUEST.md.
set -eu
APT_INSTALL_LABEL=install-guest-deps exec "$(dirname "$0")/apt-install.sh" \
  qemu-system-x86 qemu-system-common qemu-utils linux-image-amd64 busybox-static cpio xz-utils kmod \
  iproute2 iputils-ping
