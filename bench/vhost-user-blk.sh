#!/bin/sh
# Guest-measured vhost-user-blk throughput, virtq against qemu-storage-daemon, alternating
# boots of the same guest on the same image. Options: see bench/vhost-user-blk.ts
# (e.g. --rounds=5; VIRTQ_BENCH_ROUNDS=5 works too). Same as `npm run bench -- vhost-user-blk`.
set -e
cd "$(dirname "$0")/.."
exec node --import tsx bench/vhost-user-blk.ts "$@"
