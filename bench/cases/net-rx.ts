/**
 * The network device's receive path, device side only: what virtq itself spends per frame
 * when a backend offers frames and the driver keeps receive buffers posted.
 *
 * - 2 MiB of guest memory; a receive queue of 256 entries, split or packed, laid out and driven
 *   as bench/lib/net-ring.ts says; descriptor (or slot) i is one device-writable buffer of 2048
 *   bytes at 0x10000 + i * STRIDE (environment variable `STRIDE`, 4096 by default).
 *   VIRTIO_F_VERSION_1 and VIRTIO_NET_F_MRG_RXBUF.
 * - The frames come from the `generate` backend (bursts of 32) and go straight from its
 *   buffer into the guest's (the device's pending ring only holds a frame no buffer took).
 * - A round: the driver (same thread) makes B = 32 buffers available again with plain stores
 *   and a release store of `avail.idx`, notifies, and checks that `used.idx` moved by B.
 *
 * Driver work is a few stores per frame. Against the rates testpmd measures over vhost-user
 * (`npm run bench -- vhost-user-net`), the difference is what the two processors' caches
 * cost: the driver writes each line the device reads and reads each line the device writes.
 *
 * Guest memory is an ArrayBuffer (`mem=plain`) or a SharedArrayBuffer (`mem=shared`, as over
 * vhost-user and in a device worker): V8 copies to and from shared memory with relaxed word
 * (or, misaligned, byte) loads and stores instead of memmove, which large frames feel.
 *
 * Output: `virtq net-rx ring=<split|packed> frame=<bytes> mem=<plain|shared> ns_per_frame=<f>
 * frames_per_s=<n>`, from the best of 5 runs of at least 0.5 s (bench/lib/harness.ts).
 */

import { featureBit } from '../../src/devices/device.js';
import { GenerateBackend, NetDevice, VIRTIO_NET_F_MRG_RXBUF } from '../../src/devices/net/index.js';
import { GuestMemory } from '../../src/memory/index.js';
import { SplitQueue, VIRTIO_F_RING_PACKED, VIRTIO_F_VERSION_1 } from '../../src/queue/index.js';
import type { BenchCase } from '../lib/harness.js';
import {
  NET_RING_SIZE,
  type NetMemoryKind,
  type NetRingFormat,
  netRingCases,
  packedNetRing,
  splitNetRing,
} from '../lib/net-ring.js';

/** The device and its same-thread driver; returns the round loop. */
export function buildRxRig(
  frameBytes: number,
  format: NetRingFormat = 'split',
  mem: NetMemoryKind = 'plain',
): {
  step: (rounds: number) => void;
  device: NetDevice;
} {
  const memory = GuestMemory.create(2 * 1024 * 1024, { shared: mem === 'shared' });
  const ring = { writable: true, length: 2048, stride: Number(process.env.STRIDE ?? 4096) };
  const { queue, driver } = (format === 'split' ? splitNetRing : packedNetRing)(memory, {
    ...ring,
    name: 'net-rx',
  });
  const generate = new GenerateBackend({
    count: Number.MAX_SAFE_INTEGER,
    size: frameBytes,
    // The rig's loop drives everything: no continuation in a later task.
    schedule: () => {},
  });
  const device = new NetDevice({ backend: generate, pendingFrames: 64 });
  let features = featureBit(VIRTIO_F_VERSION_1) | featureBit(VIRTIO_NET_F_MRG_RXBUF);
  if (format === 'packed') features |= featureBit(VIRTIO_F_RING_PACKED);
  if (!device.acceptFeatures(features)) throw new Error('net-rx: features refused');
  device.activate({
    memory,
    queues: [queue, new SplitQueue(NET_RING_SIZE)],
    features,
    interrupt: { usedBuffer: () => {}, configChanged: () => {} },
    schedule: () => {},
  });
  const step = (rounds: number): void => {
    for (let r = 0; r < rounds; r++) {
      driver.post();
      device.queueNotify(0);
      driver.check();
    }
  };
  return { step, device };
}

export const cases: BenchCase[] = netRingCases('net-rx', buildRxRig);
