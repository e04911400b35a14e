/**
 * Where the device-level fuzzer (device-fuzz.test.ts) puts things: guest memory as two regions
 * of one buffer with canaries around and between them, the places of rings, tables, headers
 * and data, and a small deterministic generator.
 */
import { GuestMemory } from '../../src/memory/index.js';

export type DeviceKind = 'rng' | 'block' | 'console' | 'net';
export const DEVICE_KINDS: DeviceKind[] = ['rng', 'block', 'console', 'net'];
export type RingFormat = 'split' | 'packed';

/** A small deterministic generator (xorshift32). */
export class Rand {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0 || 0x9e3779b9;
  }
  u32(): number {
    let x = this.s;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.s = x >>> 0;
    return this.s;
  }
  /** An integer in [0, n). */
  int(n: number): number {
    return n <= 1 ? 0 : this.u32() % n;
  }
  chance(p: number): boolean {
    return this.u32() / 2 ** 32 < p;
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)]!;
  }
}

// ---------------------------------------------------------------------------------------------
// Guest memory with canaries

export const REGION_A = { base: 0, length: 1 << 20 };
export const REGION_B = { base: 0x40_0000, length: 256 * 1024 };
export const CANARY = 4096;
/** Offsets in the backing buffer: canary, region A, canary, region B, canary. */
export const OFFSET_A = CANARY;
export const OFFSET_B = CANARY + REGION_A.length + CANARY;
export const BACKING_BYTES = OFFSET_B + REGION_B.length + CANARY;

function canaryByte(i: number): number {
  return (i * 131 + 7) & 0xff;
}

/** The canary ranges of the backing buffer. */
function canaryRanges(): [number, number][] {
  return [
    [0, OFFSET_A],
    [OFFSET_A + REGION_A.length, OFFSET_B],
    [OFFSET_B + REGION_B.length, BACKING_BYTES],
  ];
}

/** Writes the canaries into `backing` (the whole buffer behind guest memory). */
export function plantCanaries(backing: Uint8Array): void {
  for (const [from, to] of canaryRanges())
    for (let i = from; i < to; i++) backing[i] = canaryByte(i);
}

/** Offsets of canary bytes that changed (empty: intact). */
export function damagedCanaries(backing: Uint8Array): number[] {
  const bad: number[] = [];
  for (const [from, to] of canaryRanges()) {
    for (let i = from; i < to; i++) if (backing[i] !== canaryByte(i)) bad.push(i);
  }
  return bad;
}

/** Guest memory as regions A and B of `buffer` (laid out as above). */
export function guestMemoryOver(buffer: ArrayBuffer | SharedArrayBuffer): GuestMemory {
  return new GuestMemory([
    { base: REGION_A.base, length: REGION_A.length, buffer, offset: OFFSET_A },
    { base: REGION_B.base, length: REGION_B.length, buffer, offset: OFFSET_B },
  ]);
}

/** A fresh buffer with canaries, and guest memory over it. */
export function canaryMemory(): { backing: Uint8Array; memory: GuestMemory } {
  const buffer = new ArrayBuffer(BACKING_BYTES);
  const backing = new Uint8Array(buffer);
  plantCanaries(backing);
  return { backing, memory: guestMemoryOver(buffer) };
}

// ---------------------------------------------------------------------------------------------
// Where things live in guest memory

/** Ring areas of queue `i`: descriptors, driver area (avail), device area (used). */
export function ringAt(i: number) {
  const base = 0x1_0000 + i * 0x8000;
  return { desc: base, driver: base + 0x4000, device: base + 0x6000 };
}
/** Indirect tables. */
export const TABLES = { from: 0x4_0000, to: 0x8_0000 };
/** Request headers and small buffers. */
export const HEADERS = { from: 0x8_0000, to: 0x9_0000 };
/** Data buffers. */
export const DATA = { from: 0x9_0000, to: 0xe_0000 };
/** What clean drivers use (never written by the hostile guest's own layout, only by aliasing). */
export const CLEAN = { from: 0xe_0000, to: 0x10_0000 };

export interface RingSpec {
  format: RingFormat;
  size: number;
  desc: number;
  driver: number;
  device: number;
}
