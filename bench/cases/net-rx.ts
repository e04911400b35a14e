/**
 * The network device's receive path, device side only: what virtq itself spends per frame
 * when a backend offers frames and the driver keeps receive buffers posted.
 *
 * - 2 MiB of guest memory; a receive queue of 256 entries, split (table at 0x0, available ring
 *   at 0x1000, used ring at 0x2000) or packed (ring at 0x0); descriptor (or slot) i is one
 *   device-writable buffer of 2048 bytes at 0x10000 + i * STRIDE (environment variable
 *   `STRIDE`, 4096 by default). VIRTIO_F_VERSION_1 and VIRTIO_NET_F_MRG_RXBUF.
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
import { RawPackedRing } from '../../src/driver/raw-packed.js';
import { RawSplitRing } from '../../src/driver/raw-split.js';
import { GuestMemory } from '../../src/memory/index.js';
import {
  type Queue,
  SplitQueue,
  usedRingBytes,
  VIRTIO_F_RING_PACKED,
  VIRTIO_F_VERSION_1,
  VIRTQ_DESC_F_WRITE,
} from '../../src/queue/index.js';
import { type BenchCase, bestOf, describeRuns, fmt, nsPerUnit } from '../lib/harness.js';

const QUEUE_SIZE = 256;
const AVAIL = 0x1000;
const USED = 0x2000;
const BUFFER_BASE = 0x10000;
const BUFFER_LEN = 2048;
const BUFFER_STRIDE = Number(process.env.STRIDE ?? 4096);
/** Buffers the driver posts again per round. */
const BATCH = 32;

/** The driver's side of one round: posts BATCH buffers again, returns the check after the device ran. */
interface RxDriver {
  post(): void;
  check(): void;
}

/** A split receive ring: descriptor i is buffer i; the driver re-posts heads in ring order. */
function splitRing(memory: GuestMemory): { queue: Queue; driver: RxDriver } {
  const layout = { desc: 0, avail: AVAIL, used: USED, end: USED + usedRingBytes(QUEUE_SIZE) };
  const raw = new RawSplitRing(memory, 0, QUEUE_SIZE, layout);
  for (let i = 0; i < QUEUE_SIZE; i++) {
    raw.setDesc(i, BUFFER_BASE + i * BUFFER_STRIDE, BUFFER_LEN, VIRTQ_DESC_F_WRITE, 0);
  }
  const region = memory.checkRange(AVAIL, layout.end - AVAIL);
  const at = (addr: number) => region.offset + (addr - region.base);
  const avail16 = new Uint16Array(region.buffer, at(AVAIL), 3 + QUEUE_SIZE);
  const used16 = new Uint16Array(region.buffer, at(USED), 3 + 4 * QUEUE_SIZE);
  let availIdx = 0;
  let head = 0;
  let usedIdx = 0;
  return {
    queue: raw.createQueue(),
    driver: {
      post() {
        for (let k = 0; k < BATCH; k++) {
          avail16[2 + (availIdx & (QUEUE_SIZE - 1))] = head;
          availIdx = (availIdx + 1) & 0xffff;
          head = (head + 1) & (QUEUE_SIZE - 1);
        }
        Atomics.store(avail16, 1, availIdx);
      },
      check() {
        const now = Atomics.load(used16, 1);
        if (now !== ((usedIdx + BATCH) & 0xffff)) {
          throw new Error(`net-rx: used.idx is ${now}, expected ${(usedIdx + BATCH) & 0xffff}`);
        }
        usedIdx = now;
      },
    },
  };
}

/**
 * A packed receive ring: slot s carries buffer id s (its buffer at BUFFER_BASE + s * BUFFER_STRIDE).
 * The driver re-posts BATCH slots a round, length and id with plain stores, the batch's first
 * flags last with a release store (§2.8.21.3), and checks the device used all of them.
 */
function packedRing(memory: GuestMemory): { queue: Queue; driver: RxDriver } {
  const raw = new RawPackedRing(memory, 0, QUEUE_SIZE);
  const region = memory.checkRange(0, raw.end());
  const d16 = new Uint16Array(region.buffer, region.offset, QUEUE_SIZE * 8);
  const d32 = new Uint32Array(region.buffer, region.offset, QUEUE_SIZE * 4);
  for (let i = 0; i < QUEUE_SIZE; i++)
    raw.setDesc(i, BUFFER_BASE + i * BUFFER_STRIDE, BUFFER_LEN, i, 0);
  let slot = 0;
  let wrap = 1;
  let first = 0;
  let firstWrap = 1;
  return {
    queue: raw.createQueue(),
    driver: {
      post() {
        first = slot;
        firstWrap = wrap;
        let headFlags = 0;
        for (let k = 0; k < BATCH; k++) {
          const flags = VIRTQ_DESC_F_WRITE | RawPackedRing.availBits(wrap === 1);
          d32[4 * slot + 2] = BUFFER_LEN;
          d16[8 * slot + 6] = slot;
          if (k === 0) headFlags = flags;
          else d16[8 * slot + 7] = flags;
          if (++slot === QUEUE_SIZE) {
            slot = 0;
            wrap ^= 1;
          }
        }
        Atomics.store(d16, 8 * first + 7, headFlags);
      },
      check() {
        // The device used the batch in order: its last used descriptor is at slot - 1.
        const last = slot === 0 ? QUEUE_SIZE - 1 : slot - 1;
        const lastWrap = slot === 0 ? wrap ^ 1 : wrap;
        const used = RawPackedRing.usedBits(lastWrap === 1);
        const f = Atomics.load(d16, 8 * first + 7);
        if (
          (f & 0x8080) !== RawPackedRing.usedBits(firstWrap === 1) ||
          (d16[8 * last + 7]! & 0x8080) !== used
        ) {
          throw new Error('net-rx: the packed batch was not used whole');
        }
      },
    },
  };
}

/** The device and its same-thread driver; returns the round loop. */
export function buildRxRig(
  frameBytes: number,
  format: 'split' | 'packed' = 'split',
  mem: 'plain' | 'shared' = 'plain',
): {
  step: (rounds: number) => void;
  device: NetDevice;
} {
  const memory = GuestMemory.create(2 * 1024 * 1024, { shared: mem === 'shared' });
  const { queue, driver } = format === 'split' ? splitRing(memory) : packedRing(memory);
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
    queues: [queue, new SplitQueue(QUEUE_SIZE)],
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

function rxCase(
  format: 'split' | 'packed',
  frameBytes: number,
  mem: 'plain' | 'shared',
): BenchCase {
  const label = `ring=${format} frame=${frameBytes} mem=${mem}`;
  return {
    name: `net-rx/ring=${format}/frame=${frameBytes}/mem=${mem}`,
    run(ctx) {
      const rig = buildRxRig(frameBytes, format, mem);
      const m = bestOf(rig.step, { chunk: 64 });
      const ns = nsPerUnit(m, BATCH);
      ctx.log(`net-rx ${label}: ${describeRuns(m, BATCH)}`);
      return `virtq net-rx ${label} ns_per_frame=${fmt(ns)} frames_per_s=${Math.round(1e9 / ns)}`;
    },
  };
}

export const cases: BenchCase[] = (['split', 'packed'] as const).flatMap((f) =>
  [64, 1514].flatMap((size) => (['plain', 'shared'] as const).map((mem) => rxCase(f, size, mem))),
);
