/**
 * Hostile contents of a split ring for the vhost-user socket fuzzers: descriptors, the
 * available ring, the used index and raw noise, written into a case's guest RAM (the 'ram'
 * memfd, see {@link ramOffset}) around the chains a device-specific writer lays out.
 */
import fc from 'fast-check';
import type { SplitLayout } from '../../src/queue/split/layout.js';
import { HALF, QSIZE, RAM, REGION1_GPA } from './frontend.js';
import { RING0, u32, u64Any } from './socket-fuzz-gen.js';
import { ramOffset } from './socket-fuzz-wire.js';

export const DESC_NEXT = 1;
export const DESC_WRITE = 2;
export const DESC_INDIRECT = 4;
export const PACKED_AVAIL = 1 << 7;

/** A split descriptor as it lies in memory (a packed one puts id and flags where next is). */
export interface Desc {
  addr: number;
  len: number;
  flags: number;
  next: number;
}

/** Writes descriptor `d` at byte `off` of the case's RAM. */
export function putDesc(ram: DataView, off: number, d: Desc): void {
  ram.setBigUint64(off, BigInt(d.addr), true);
  ram.setUint32(off + 8, d.len, true);
  ram.setUint16(off + 12, d.flags, true);
  ram.setUint16(off + 14, d.next, true);
}

/** A guest address for a descriptor: near the session's buffers and rings, or anything. */
export const descAddr = fc.oneof(
  {
    weight: 4,
    arbitrary: fc
      .constantFrom(
        0,
        0x1000,
        0x2000,
        0x3000,
        HALF - 16,
        HALF - 1,
        HALF,
        REGION1_GPA,
        RING0.desc + 8,
        RING0.used,
        REGION1_GPA + HALF - 8,
        REGION1_GPA + HALF,
        2 ** 53 - 1,
      )
      .map(BigInt),
  },
  { weight: 2, arbitrary: fc.nat(2 * RAM).map(BigInt) },
  { weight: 1, arbitrary: u64Any },
);
/** Hostile contents of one split ring, around what a device-specific writer lays out. */
export interface RingWrites {
  descs: { index: number; addr: bigint; len: number; flags: number; next: number }[];
  availFlags: number;
  /** The published available index; null: as many as the device-specific writer published. */
  availIdx: number | null;
  heads: number[];
  usedIdx: number | null;
  noise: { at: number; bytes: Uint8Array }[];
}

/**
 * The arbitraries of each field of {@link RingWrites} for `ring`, for a device's fc.record
 * that adds its own fields among them.
 */
export function ringWritesModel(ring: SplitLayout) {
  const ringBytes = ring.end - ring.desc;
  return {
    descs: fc.array(
      fc.record({
        index: fc.nat(QSIZE + 1),
        addr: descAddr,
        len: fc.oneof(fc.constantFrom(0, 1, 16, 20, 512, 513, 4096, HALF, 0xffff_ffff), u32),
        flags: fc.oneof(
          { weight: 4, arbitrary: fc.nat(7) },
          { weight: 1, arbitrary: fc.nat(0xffff) },
        ),
        next: fc.oneof(
          { weight: 4, arbitrary: fc.nat(QSIZE) },
          { weight: 1, arbitrary: fc.nat(0xffff) },
        ),
      }),
      { maxLength: QSIZE + 4 },
    ),
    availFlags: fc.nat(3),
    availIdx: fc.oneof(
      { weight: 8, arbitrary: fc.constant(null) },
      { weight: 2, arbitrary: fc.nat(QSIZE + 2) },
      { weight: 1, arbitrary: fc.nat(0xffff) },
    ),
    heads: fc.array(
      fc.oneof(
        { weight: 4, arbitrary: fc.nat(QSIZE - 1) },
        { weight: 1, arbitrary: fc.nat(0xffff) },
      ),
      { maxLength: QSIZE },
    ),
    usedIdx: fc.option(fc.nat(0xffff), { nil: null }),
    // Raw garbage over the ring, in one case of four (it breaks the chains of the writer).
    noise: fc.oneof(
      { weight: 3, arbitrary: fc.constant<RingWrites['noise']>([]) },
      {
        weight: 1,
        arbitrary: fc.array(
          fc.record({
            at: fc.nat(ringBytes - 1),
            bytes: fc.uint8Array({ minLength: 1, maxLength: 64 }),
          }),
          { minLength: 1, maxLength: 3 },
        ),
      },
    ),
  };
}

/**
 * Writes `w` into `ring`: descriptors, available flags and heads and the used index, then what
 * `device` lays out (it returns how many chains it made available), the noise, and the
 * available index last: it publishes the entries (as a driver would, or not).
 */
export function writeRing(
  ram: DataView,
  ring: SplitLayout,
  w: RingWrites,
  device: () => number,
): void {
  const at = (gpa: number, bytes: number): number | null => {
    const off = ramOffset(gpa);
    return off === null || off + bytes > RAM ? null : off;
  };
  for (const d of w.descs) {
    const off = at(ring.desc + 16 * d.index, 16);
    if (off === null) continue;
    ram.setBigUint64(off, d.addr, true);
    ram.setUint32(off + 8, d.len, true);
    ram.setUint16(off + 12, d.flags, true);
    ram.setUint16(off + 14, d.next, true);
  }
  const avail = ramOffset(ring.avail)!;
  ram.setUint16(avail, w.availFlags, true);
  w.heads.forEach((head, i) => {
    ram.setUint16(avail + 4 + 2 * (i % QSIZE), head, true);
  });
  if (w.usedIdx !== null) ram.setUint16(ramOffset(ring.used)! + 2, w.usedIdx, true);
  const chains = device();
  for (const z of w.noise) {
    const off = ramOffset(ring.desc + z.at)!;
    const bytes = z.bytes.subarray(0, RAM - off);
    new Uint8Array(ram.buffer, off, bytes.length).set(bytes);
  }
  ram.setUint16(avail + 2, w.availIdx ?? chains, true);
}
