/**
 * The same-thread driver of the `net-rx` and `net-tx` cases: one ring of 256 one-buffer chains
 * that the driver makes available again, 32 a round, and checks the device used whole.
 *
 * - Split: table at 0x0, available ring at 0x1000, used ring at 0x2000; descriptor i is
 *   buffer i, and the driver posts heads in ring order with plain stores and a release store of
 *   `avail.idx`.
 * - Packed: ring at 0x0; slot s carries buffer id s; the driver re-posts length and id with
 *   plain stores and the batch's first flags last with a release store (§2.8.21.3).
 *
 * Buffer i lies at 0x10000 + i * stride.
 */

import { RawPackedRing } from '../../src/driver/raw-packed.js';
import { RawSplitRing } from '../../src/driver/raw-split.js';
import type { GuestMemory } from '../../src/memory/index.js';
import { type Queue, usedRingBytes, VIRTQ_DESC_F_WRITE } from '../../src/queue/index.js';
import { type BenchCase, bestOf, describeRuns, fmt, nsPerUnit } from './harness.js';

export const NET_RING_SIZE = 256;
/** Chains the driver makes available again per round. */
export const NET_RING_BATCH = 32;
export const NET_BUFFER_BASE = 0x10000;
const AVAIL = 0x1000;
const USED = 0x2000;

/** The driver's side of one round: post before the device runs, check after. */
export interface NetRingDriver {
  post(): void;
  check(): void;
}

export interface NetRingOptions {
  /** Device-writable buffers (receive) or device-readable ones (transmit). */
  writable: boolean;
  /** Bytes in each buffer's descriptor. */
  length: number;
  /** Bytes from one buffer's start to the next's. */
  stride: number;
  /** Names the case in errors. */
  name: string;
}

/** The buffer of descriptor (or buffer id) `i`. */
export function netBufferAddr(i: number, stride: number): number {
  return NET_BUFFER_BASE + i * stride;
}

export function splitNetRing(
  memory: GuestMemory,
  o: NetRingOptions,
): { queue: Queue; driver: NetRingDriver } {
  const size = NET_RING_SIZE;
  const layout = { desc: 0, avail: AVAIL, used: USED, end: USED + usedRingBytes(size) };
  const raw = new RawSplitRing(memory, 0, size, layout);
  const flags = o.writable ? VIRTQ_DESC_F_WRITE : 0;
  for (let i = 0; i < size; i++) raw.setDesc(i, netBufferAddr(i, o.stride), o.length, flags, 0);
  const region = memory.checkRange(AVAIL, layout.end - AVAIL);
  const at = (addr: number) => region.offset + (addr - region.base);
  const avail16 = new Uint16Array(region.buffer, at(AVAIL), 3 + size);
  const used16 = new Uint16Array(region.buffer, at(USED), 3 + 4 * size);
  let availIdx = 0;
  let head = 0;
  let usedIdx = 0;
  return {
    queue: raw.createQueue(),
    driver: {
      post() {
        for (let k = 0; k < NET_RING_BATCH; k++) {
          avail16[2 + (availIdx & (size - 1))] = head;
          availIdx = (availIdx + 1) & 0xffff;
          head = (head + 1) & (size - 1);
        }
        Atomics.store(avail16, 1, availIdx);
      },
      check() {
        const now = Atomics.load(used16, 1);
        const want = (usedIdx + NET_RING_BATCH) & 0xffff;
        if (now !== want) throw new Error(`${o.name}: used.idx is ${now}, expected ${want}`);
        usedIdx = now;
      },
    },
  };
}

export function packedNetRing(
  memory: GuestMemory,
  o: NetRingOptions,
): { queue: Queue; driver: NetRingDriver } {
  const size = NET_RING_SIZE;
  const raw = new RawPackedRing(memory, 0, size);
  const region = memory.checkRange(0, raw.end());
  const d16 = new Uint16Array(region.buffer, region.offset, size * 8);
  const d32 = new Uint32Array(region.buffer, region.offset, size * 4);
  for (let i = 0; i < size; i++) raw.setDesc(i, netBufferAddr(i, o.stride), o.length, i, 0);
  const write = o.writable ? VIRTQ_DESC_F_WRITE : 0;
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
        for (let k = 0; k < NET_RING_BATCH; k++) {
          const flags = write | RawPackedRing.availBits(wrap === 1);
          d32[4 * slot + 2] = o.length;
          d16[8 * slot + 6] = slot;
          if (k === 0) headFlags = flags;
          else d16[8 * slot + 7] = flags;
          if (++slot === size) {
            slot = 0;
            wrap ^= 1;
          }
        }
        Atomics.store(d16, 8 * first + 7, headFlags);
      },
      check() {
        // The device used the batch in order: its last used descriptor is at slot - 1.
        const last = slot === 0 ? size - 1 : slot - 1;
        const lastWrap = slot === 0 ? wrap ^ 1 : wrap;
        const f = Atomics.load(d16, 8 * first + 7);
        if (
          (f & 0x8080) !== RawPackedRing.usedBits(firstWrap === 1) ||
          (d16[8 * last + 7]! & 0x8080) !== RawPackedRing.usedBits(lastWrap === 1)
        ) {
          throw new Error(`${o.name}: the packed batch was not used whole`);
        }
      },
    },
  };
}

export type NetRingFormat = 'split' | 'packed';
export type NetMemoryKind = 'plain' | 'shared';

/**
 * The cases `<name>/ring=<split|packed>/frame=<64|1514>/mem=<plain|shared>` of a rig whose
 * `step(rounds)` runs that many rounds of {@link NET_RING_BATCH} frames. Output:
 * `virtq <name> ring= frame= mem= ns_per_frame= frames_per_s=`.
 */
export function netRingCases(
  name: string,
  build: (
    frameBytes: number,
    format: NetRingFormat,
    mem: NetMemoryKind,
  ) => { step: (rounds: number) => void },
): BenchCase[] {
  const one = (format: NetRingFormat, frameBytes: number, mem: NetMemoryKind): BenchCase => {
    const label = `ring=${format} frame=${frameBytes} mem=${mem}`;
    return {
      name: `${name}/ring=${format}/frame=${frameBytes}/mem=${mem}`,
      run(ctx) {
        const rig = build(frameBytes, format, mem);
        const m = bestOf(rig.step, { chunk: 64 });
        const ns = nsPerUnit(m, NET_RING_BATCH);
        ctx.log(`${name} ${label}: ${describeRuns(m, NET_RING_BATCH)}`);
        return `virtq ${name} ${label} ns_per_frame=${fmt(ns)} frames_per_s=${Math.round(1e9 / ns)}`;
      },
    };
  };
  return (['split', 'packed'] as const).flatMap((f) =>
    [64, 1514].flatMap((size) => (['plain', 'shared'] as const).map((mem) => one(f, size, mem))),
  );
}
