#!/bin/sh
# Install DPDK's testpmd with the drivers the network tests use (test/real/dpdk-net.test.ts):
# the virtio-user driver (a userspace virtio-net driver that talks vhost-user), the vhost
# back-end driver (the native yardstick) and the ring mempool. Recommends are off, so each
# driver is named. Idempotent. See docs/REAL-GUEST.md.
set -eu
APT_INSTALL_LABEL=install-dpdk exec "$(dirname "$0")/apt-install.sh" \
  dpdk-dev librte-net-vhost23 librte-net-virtio23 librte-mempool-ring23
