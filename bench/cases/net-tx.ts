/**
 * The network device's transmit path, device side only: what virtq itself spends per frame
 * when the driver keeps a transmit ring full and the backend takes every frame.
 *
 * - 2 MiB of guest memory; a transmit queue of 256 entries, split or packed, laid out and
 *   driven as bench/lib/net-ring.ts says; descriptor (or slot) i is one device-readable buffer
 *   at 0x10000 + i * 4096 holding a 12-byte virtio-net header (all zero) and the frame, as
 *   Linux and DPDK send them. VIRTIO_F_VERSION_1.
 * - The frames go to the `sink` backend, which counts them.
 * - A round: the driver (same thread) makes B = 32 chains available again with plain stores
 *   and a release store of the index, notifies, and checks that the device used all of them
 *   and that the sink counted B more frames.
 *
 * As with `net-rx`, the rates testpmd measures over vhost-user (`npm run bench --
 * vhost-user-net`) also pay for the two processors' caches.
 *
 * Guest memory is an ArrayBuffer (`mem=plain`) or a SharedArrayBuffer (`mem=shared`, as over
 * vhost-user and in a device worker): V8 copies out of shared memory with relaxed word (or,
 * misaligned, byte) loads and stores instead of memmove, which large frames feel.
 *
 * Output: `virtq net-tx ring=<split|packed> frame=<bytes> mem=<plain|shared> ns_per_frame=<f>
 * frames_per_s=<n>`, from the best of 5 runs of at least 0.5 s (bench/lib/harness.ts).
 */

import { featureBit } from '../../src/devices/device.js';
import { NetDevice, SinkBackend } from '../../src/devices/net/index.js';
import { GuestMemory } from '../../src/memory/index.js';
import { SplitQueue, VIRTIO_F_RING_PACKED, VIRTIO_F_VERSION_1 } from '../../src/queue/index.js';
import type { BenchCase } from '../lib/harness.js';
import {
  NET_RING_BATCH,
  NET_RING_SIZE,
  type NetMemoryKind,
  type NetRingFormat,
  netBufferAddr,
  netRingCases,
  packedNetRing,
  splitNetRing,
} from '../lib/net-ring.js';

const STRIDE = 4096;
/** struct virtio_net_hdr with num_buffers (VIRTIO_F_VERSION_1). */
const HEADER = 12;

/** Buffer i: an all-zero header, then a frame to broadcast with EtherType 0x88b5. */
function fillBuffers(memory: GuestMemory): void {
  for (let i = 0; i < NET_RING_SIZE; i++) {
    const at = netBufferAddr(i, STRIDE);
    for (let b = 0; b < 6; b++) memory.writeU8(at + HEADER + b, 0xff);
    memory.writeU8(at + HEADER + 12, 0x88);
    memory.writeU8(at + HEADER + 13, 0xb5);
  }
}

/** The device, its sink and its same-thread driver; returns the round loop. */
export function buildTxRig(
  frameBytes: number,
  format: NetRingFormat = 'split',
  mem: NetMemoryKind = 'plain',
): { step: (rounds: number) => void; sink: SinkBackend } {
  const memory = GuestMemory.create(2 * 1024 * 1024, { shared: mem === 'shared' });
  fillBuffers(memory);
  const length = HEADER + frameBytes;
  const { queue, driver } = (format === 'split' ? splitNetRing : packedNetRing)(memory, {
    writable: false,
    length,
    stride: STRIDE,
    name: 'net-tx',
  });
  const sink = new SinkBackend();
  const device = new NetDevice({ backend: sink });
  let features = featureBit(VIRTIO_F_VERSION_1);
  if (format === 'packed') features |= featureBit(VIRTIO_F_RING_PACKED);
  if (!device.acceptFeatures(features)) throw new Error('net-tx: features refused');
  device.activate({
    memory,
    queues: [new SplitQueue(NET_RING_SIZE), queue],
    features,
    interrupt: { usedBuffer: () => {}, configChanged: () => {} },
    schedule: () => {},
  });
  const step = (rounds: number): void => {
    for (let r = 0; r < rounds; r++) {
      const before = sink.frames;
      driver.post();
      device.queueNotify(1);
      driver.check();
      if (sink.frames !== before + NET_RING_BATCH)
        throw new Error('net-tx: the sink missed frames');
    }
  };
  return { step, sink };
}

export const cases: BenchCase[] = netRingCases('net-tx', buildTxRig);
