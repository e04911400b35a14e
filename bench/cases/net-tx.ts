/**
 * The network device's transmit path, device side only: what virtq itself spends per frame
 * when the driver keeps a transmit ring full and the backend takes every frame.
 *
 * - 2 MiB of guest memory; a transmit queue of 256 entries, split (table at 0x0, available
 *   ring at 0x1000, used ring at 0x2000) or packed (ring at 0x0); descriptor (or slot) i is
 *   one device-readable buffer at 0x10000 + i * 4096 holding a 12-byte virtio-net header
 *   (all zero) and the frame, as Linux and DPDK send them. VIRTIO_F_VERSION_1.
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
import { RawPackedRing } from '../../src/driver/raw-packed.js';
import { RawSplitRing } from '../../src/driver/raw-split.js';
import { GuestMemory } from '../../src/memory/index.js';
import {
  type Queue,
  SplitQueue,
  usedRingBytes,
  VIRTIO_F_RING_PACKED,
  VIRTIO_F_VERSION_1,
} from '../../src/queue/index.js';
import { type BenchCase, bestOf, describeRuns, fmt, nsPerUnit } from '../lib/harness.js';

const QUEUE_SIZE = 256;
const AVAIL = 0x1000;
const USED = 0x2000;
const BUFFER_BASE = 0x10000;
const BUFFER_STRIDE = 4096;
/** struct virtio_net_hdr with num_buffers (VIRTIO_F_VERSION_1). */
const HEADER = 12;
/** Chains the driver makes available again per round. */
const BATCH = 32;

interface TxDriver {
  post(): void;
  check(): void;
}

/** Buffer i: an all-zero header, then a frame to broadcast with EtherType 0x88b5. */
function fillBuffers(memory: GuestMemory): void {
  for (let i = 0; i < QUEUE_SIZE; i++) {
    const at = BUFFER_BASE + i * BUFFER_STRIDE;
    for (let b = 0; b < 6; b++) memory.writeU8(at + HEADER + b, 0xff);
    memory.writeU8(at + HEADER + 12, 0x88);
    memory.writeU8(at + HEADER + 13, 0xb5);
  }
}

/** A split transmit ring: descriptor i is buffer i; the driver posts heads in ring order. */
function splitRing(memory: GuestMemory, length: number): { queue: Queue; driver: TxDriver } {
  const layout = { desc: 0, avail: AVAIL, used: USED, end: USED + usedRingBytes(QUEUE_SIZE) };
  const raw = new RawSplitRing(memory, 0, QUEUE_SIZE, layout);
  for (let i = 0; i < QUEUE_SIZE; i++)
    raw.setDesc(i, BUFFER_BASE + i * BUFFER_STRIDE, length, 0, 0);
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
          throw new Error(`net-tx: used.idx is ${now}, expected ${(usedIdx + BATCH) & 0xffff}`);
        }
        usedIdx = now;
      },
    },
  };
}

/**
 * A packed transmit ring: slot s carries buffer id s. The driver re-posts BATCH slots a round,
 * length and id with plain stores, the batch's first flags last with a release store
 * (§2.8.21.3), and checks that the device used all of them.
 */
function packedRing(memory: GuestMemory, length: number): { queue: Queue; driver: TxDriver } {
  const raw = new RawPackedRing(memory, 0, QUEUE_SIZE);
  const region = memory.checkRange(0, raw.end());
  const d16 = new Uint16Array(region.buffer, region.offset, QUEUE_SIZE * 8);
  const d32 = new Uint32Array(region.buffer, region.offset, QUEUE_SIZE * 4);
  for (let i = 0; i < QUEUE_SIZE; i++)
    raw.setDesc(i, BUFFER_BASE + i * BUFFER_STRIDE, length, i, 0);
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
          const flags = RawPackedRing.availBits(wrap === 1);
          d32[4 * slot + 2] = length;
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
        const last = slot === 0 ? QUEUE_SIZE - 1 : slot - 1;
        const lastWrap = slot === 0 ? wrap ^ 1 : wrap;
        const f = Atomics.load(d16, 8 * first + 7);
        if (
          (f & 0x8080) !== RawPackedRing.usedBits(firstWrap === 1) ||
          (d16[8 * last + 7]! & 0x8080) !== RawPackedRing.usedBits(lastWrap === 1)
        ) {
          throw new Error('net-tx: the packed batch was not used whole');
        }
      },
    },
  };
}

/** The device, its sink and its same-thread driver; returns the round loop. */
export function buildTxRig(
  frameBytes: number,
  format: 'split' | 'packed' = 'split',
  mem: 'plain' | 'shared' = 'plain',
): { step: (rounds: number) => void; sink: SinkBackend } {
  const memory = GuestMemory.create(2 * 1024 * 1024, { shared: mem === 'shared' });
  fillBuffers(memory);
  const length = HEADER + frameBytes;
  const { queue, driver } =
    format === 'split' ? splitRing(memory, length) : packedRing(memory, length);
  const sink = new SinkBackend();
  const device = new NetDevice({ backend: sink });
  let features = featureBit(VIRTIO_F_VERSION_1);
  if (format === 'packed') features |= featureBit(VIRTIO_F_RING_PACKED);
  if (!device.acceptFeatures(features)) throw new Error('net-tx: features refused');
  device.activate({
    memory,
    queues: [new SplitQueue(QUEUE_SIZE), queue],
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
      if (sink.frames !== before + BATCH) throw new Error('net-tx: the sink missed frames');
    }
  };
  return { step, sink };
}

function txCase(
  format: 'split' | 'packed',
  frameBytes: number,
  mem: 'plain' | 'shared',
): BenchCase {
  const label = `ring=${format} frame=${frameBytes} mem=${mem}`;
  return {
    name: `net-tx/ring=${format}/frame=${frameBytes}/mem=${mem}`,
    run(ctx) {
      const rig = buildTxRig(frameBytes, format, mem);
      const m = bestOf(rig.step, { chunk: 64 });
      const ns = nsPerUnit(m, BATCH);
      ctx.log(`net-tx ${label}: ${describeRuns(m, BATCH)}`);
      return `virtq net-tx ${label} ns_per_frame=${fmt(ns)} frames_per_s=${Math.round(1e9 / ns)}`;
    },
  };
}

export const cases: BenchCase[] = (['split', 'packed'] as const).flatMap((f) =>
  [64, 1514].flatMap((size) => (['plain', 'shared'] as const).map((mem) => txCase(f, size, mem))),
);
