/**
 * The network device's receive path, device side only: what virtq itself spends per frame
 * when a backend offers frames and the driver keeps receive buffers posted.
 *
 * - 2 MiB of guest memory; a split receive queue of 256 entries (table at 0x0, available ring
 *   at 0x1000, used ring at 0x2000); descriptor i is one device-writable buffer of 2048 bytes
 *   at 0x10000 + i * 4096. VIRTIO_F_VERSION_1 and VIRTIO_NET_F_MRG_RXBUF.
 * - The frames come from the `generate` backend (bursts of 32), into the device's pending
 *   ring, then into the guest's buffers.
 * - A round: the driver (same thread) makes B = 32 buffers available again with plain stores
 *   and a release store of `avail.idx`, notifies, and checks that `used.idx` moved by B.
 *
 * Driver work is a few stores per frame. Against the rates testpmd measures over vhost-user
 * (`npm run bench -- vhost-user-net`), the difference is what the two processors' caches
 * cost: the driver writes each line the device reads and reads each line the device writes.
 *
 * Output: `virtq net-rx frame=<bytes> ns_per_frame=<f> frames_per_s=<n>`, from the best of 5
 * runs of at least 0.5 s (bench/lib/harness.ts).
 */

import { featureBit } from '../../src/devices/device.js';
import { GenerateBackend, NetDevice, VIRTIO_NET_F_MRG_RXBUF } from '../../src/devices/net/index.js';
import { RawSplitRing } from '../../src/driver/raw-split.js';
import { GuestMemory } from '../../src/memory/index.js';
import {
  SplitQueue,
  usedRingBytes,
  VIRTIO_F_VERSION_1,
  VIRTQ_DESC_F_WRITE,
} from '../../src/queue/index.js';
import { type BenchCase, bestOf, describeRuns, fmt, nsPerUnit } from '../lib/harness.js';

const QUEUE_SIZE = 256;
const AVAIL = 0x1000;
const USED = 0x2000;
const BUFFER_BASE = 0x10000;
const BUFFER_LEN = 2048;
/** Buffers the driver posts again per round. */
const BATCH = 32;

/** The device and its same-thread driver; returns the round loop. */
export function buildRxRig(frameBytes: number): {
  step: (rounds: number) => void;
  device: NetDevice;
} {
  const memory = GuestMemory.create(2 * 1024 * 1024);
  const layout = { desc: 0, avail: AVAIL, used: USED, end: USED + usedRingBytes(QUEUE_SIZE) };
  const raw = new RawSplitRing(memory, 0, QUEUE_SIZE, layout);
  for (let i = 0; i < QUEUE_SIZE; i++) {
    raw.setDesc(i, BUFFER_BASE + i * 4096, BUFFER_LEN, VIRTQ_DESC_F_WRITE, 0);
  }
  const generate = new GenerateBackend({
    count: Number.MAX_SAFE_INTEGER,
    size: frameBytes,
    // The rig's loop drives everything: no continuation in a later task.
    schedule: () => {},
  });
  const device = new NetDevice({ backend: generate, pendingFrames: 64 });
  const features = featureBit(VIRTIO_F_VERSION_1) | featureBit(VIRTIO_NET_F_MRG_RXBUF);
  if (!device.acceptFeatures(features)) throw new Error('net-rx: features refused');
  device.activate({
    memory,
    queues: [raw.createQueue(), new SplitQueue(QUEUE_SIZE)],
    features,
    interrupt: { usedBuffer: () => {}, configChanged: () => {} },
    schedule: () => {},
  });
  const region = memory.checkRange(AVAIL, layout.end - AVAIL);
  const at = (addr: number) => region.offset + (addr - region.base);
  const avail16 = new Uint16Array(region.buffer, at(AVAIL), 3 + QUEUE_SIZE);
  const used16 = new Uint16Array(region.buffer, at(USED), 3 + 4 * QUEUE_SIZE);
  let availIdx = 0;
  let head = 0;
  let usedIdx = 0;
  const step = (rounds: number): void => {
    for (let r = 0; r < rounds; r++) {
      for (let k = 0; k < BATCH; k++) {
        avail16[2 + (availIdx & (QUEUE_SIZE - 1))] = head;
        availIdx = (availIdx + 1) & 0xffff;
        head = (head + 1) & (QUEUE_SIZE - 1);
      }
      Atomics.store(avail16, 1, availIdx);
      device.queueNotify(0);
      const now = Atomics.load(used16, 1);
      if (now !== ((usedIdx + BATCH) & 0xffff)) {
        throw new Error(`net-rx: used.idx is ${now}, expected ${(usedIdx + BATCH) & 0xffff}`);
      }
      usedIdx = now;
    }
  };
  return { step, device };
}

function rxCase(frameBytes: number): BenchCase {
  return {
    name: `net-rx/frame=${frameBytes}`,
    run(ctx) {
      const rig = buildRxRig(frameBytes);
      const m = bestOf(rig.step, { chunk: 64 });
      const ns = nsPerUnit(m, BATCH);
      ctx.log(`net-rx frame=${frameBytes}: ${describeRuns(m, BATCH)}`);
      return `virtq net-rx frame=${frameBytes} ns_per_frame=${fmt(ns)} frames_per_s=${Math.round(1e9 / ns)}`;
    },
  };
}

export const cases: BenchCase[] = [rxCase(64), rxCase(1514)];
