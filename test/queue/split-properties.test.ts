/**
 * The seed's Kani proof harnesses (Firecracker's queue.rs, `mod verification`) as fast-check
 * properties over arbitrary split-queue states and arbitrary guest memory contents.
 *
 * A "proof context" is generated the way the seed builds its: one guest memory that starts at
 * a non-zero base (so ring addresses can fall before it, inside it or after it), sized for a
 * queue of 256 plus a few spare bytes, filled with arbitrary bytes; a queue with arbitrary size,
 * ring addresses, indices and notification flag. Where a harness assumes `initialize()`
 * succeeds, the property discards the other states with `fc.pre`; the generators are biased so
 * most states are valid. Unlike the seed, the memory may also be split into two contiguous
 * regions, so rings and buffers that straddle a region boundary are exercised too.
 *
 * Memory contents come from a seeded PRNG (the seed is part of the generated value, so a
 * failure replays) and, in "plausible" mode, hold descriptor-shaped entries at every 16-byte
 * slot so that chains are sometimes valid and every validation error is reachable.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  DescriptorError,
  type DescriptorErrorCode,
  QueueConfigError,
  type QueueConfigErrorCode,
  QueueStateError,
  UsedRingError,
} from '../../src/errors.js';
import { GuestMemory } from '../../src/memory/index.js';
import {
  type Descriptor,
  type DescriptorChain,
  SplitQueue,
  silentLogger,
  VIRTQ_AVAIL_F_NO_INTERRUPT,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
} from '../../src/queue/index.js';
import { trackedMemory } from '../tracked-memory.js';

// ---- the proof memory ----

/** Guest address of the first byte of memory: rings may sit below it. */
const MEM_BASE = 512;
/** Bytes of a size-256 split ring laid out contiguously (16 + 2 aligned, used ring 4-aligned). */
const RING_256_BYTES = 16 * 256 + (6 + 2 * 256) + 2 + (6 + 8 * 256);
/** Memory holds one such ring plus spare bytes, so a valid ring can move around a little. */
const MEM_SIZE = RING_256_BYTES + 30;
const MEM_END = MEM_BASE + MEM_SIZE;
const FIRECRACKER_MAX_QUEUE_SIZE = 256;
const TWO_32 = 2 ** 32;
const U64_UNSAFE = 2 ** 53;
const PAGE = 4096;

const RUNS = 500;

// Spec offsets (VIRTIO 1.2 §2.7.6 and §2.7.8), written out here rather than imported, so the
// queue is checked against the spec and not against its own layout module.
const descAddr = (table: number, i: number) => table + 16 * i;
const availIdxAddr = (avail: number) => avail + 2;
const availRingAddr = (avail: number, i: number) => avail + 4 + 2 * i;
const usedEventAddr = (avail: number, size: number) => avail + 4 + 2 * size;
const usedIdxAddr = (used: number) => used + 2;
const usedElemAddr = (used: number, i: number) => used + 4 + 8 * i;
const availEventAddr = (used: number, size: number) => used + 4 + 8 * size;

// ---- a small deterministic PRNG for bulk memory contents ----

function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  };
}

/** Picks an index by weight. */
function weighted(r: () => number, weights: readonly number[]): number {
  let total = 0;
  for (const w of weights) total += w;
  let x = r() % total;
  for (let i = 0; i < weights.length; i++) {
    x -= weights[i]!;
    if (x < 0) return i;
  }
  return weights.length - 1;
}

/** A descriptor that is usually sensible and sometimes breaks exactly one rule. */
function plausibleDescriptor(r: () => number, size: number): Uint8Array {
  const out = new Uint8Array(16);
  const v = new DataView(out.buffer);
  const flagChoices = [
    0,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
    VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE,
    VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT,
    r() & 0xffff,
  ];
  const flags = flagChoices[weighted(r, [6, 10, 4, 6, 3, 1, 1])]!;
  let len: number;
  if ((flags & VIRTQ_DESC_F_INDIRECT) !== 0) {
    len = [16 * (1 + (r() % 6)), r() % 64, 16 * (size + 1)][weighted(r, [10, 1, 1])]!;
  } else {
    len = [0, 1 + (r() % 256), r(), 0xffff_ffff][weighted(r, [1, 14, 1, 2])]!;
  }
  // Address: inside memory (16-aligned for tables), straddling its end, below it, or beyond 2^53.
  let lo: number;
  let hi = 0;
  switch (weighted(r, [16, 1, 1, 1])) {
    case 0:
      lo = MEM_BASE + 16 * (r() % (MEM_SIZE >>> 4));
      break;
    case 1:
      lo = MEM_END - (r() % 32);
      break;
    case 2:
      lo = r() % MEM_BASE;
      break;
    default:
      lo = r();
      hi = r() | 0x20_0000;
  }
  const next = [r() % 8, r() % (size + 1), r() & 0xffff][weighted(r, [3, 4, 1])]!;
  v.setUint32(0, lo >>> 0, true);
  v.setUint32(4, hi >>> 0, true);
  v.setUint32(8, len >>> 0, true);
  v.setUint16(12, flags, true);
  v.setUint16(14, next, true);
  return out;
}

// ---- scenarios (plain data, generated by fast-check) and contexts (built from them) ----

interface Scenario {
  /** Offset at which memory is split into two contiguous regions, or null for one region. */
  split: number | null;
  maxSize: number;
  size: number;
  ready: boolean;
  desc: number;
  avail: number;
  used: number;
  nextAvail: number;
  nextUsed: number;
  numAdded: number;
  suppression: boolean;
  indirect: boolean;
  fillSeed: number;
  /** Descriptor-shaped memory and mostly in-range avail ring heads. */
  plausible: boolean;
  /** avail.idx: nextAvail + (near mod (size + 1)), or a raw value. */
  availIdx: { near: number } | { raw: number };
  availFlags: number;
  /** used_event: nextUsed - 1 - (back mod (size + 2)), or a raw value. */
  usedEvent: { back: number } | { raw: number };
}

const POWERS_OF_TWO = Array.from({ length: 16 }, (_, i) => 2 ** i);

const isPowerOfTwo = (n: number) => Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;

function ringBytes(size: number) {
  return { desc: 16 * size, avail: 6 + 2 * size, used: 6 + 8 * size };
}

function addressArb(bytes: number, align: number): fc.Arbitrary<number> {
  const placed =
    bytes <= MEM_SIZE
      ? fc
          .integer({ min: 0, max: Math.floor((MEM_SIZE - bytes) / align) })
          .map((k) => MEM_BASE + k * align)
      : fc.constant(MEM_BASE);
  return fc.oneof(
    { arbitrary: placed, weight: 14 },
    // Anywhere around memory: often misaligned, or running past the end.
    { arbitrary: fc.integer({ min: 0, max: MEM_END + 64 }), weight: 1 },
    // Aligned but before memory.
    {
      arbitrary: fc.integer({ min: 0, max: MEM_BASE / align - 1 }).map((k) => k * align),
      weight: 1,
    },
    // Any guest address, including u64 values a JS number cannot hold exactly.
    {
      arbitrary: fc.oneof(fc.maxSafeNat(), fc.constantFrom(2 ** 53, 2 ** 64 - 2 ** 11)),
      weight: 1,
    },
  );
}

const u16 = fc.integer({ min: 0, max: 0xffff });

function scenarioArb(options: { anyReady?: boolean; anyMaxSize?: boolean } = {}) {
  const sizeArb = fc.oneof(
    { arbitrary: fc.constantFrom(...POWERS_OF_TWO.slice(0, 9)), weight: 12 },
    { arbitrary: fc.constantFrom(...POWERS_OF_TWO.slice(9)), weight: 1 },
    { arbitrary: u16, weight: 1 },
  );
  return sizeArb.chain((size) => {
    const bytes = ringBytes(size);
    return fc.record({
      split: fc.oneof(
        { arbitrary: fc.constant(null), weight: 3 },
        {
          arbitrary: fc.integer({ min: 1, max: (MEM_SIZE >>> 3) - 1 }).map((k) => 8 * k),
          weight: 1,
        },
      ),
      maxSize: options.anyMaxSize
        ? fc.oneof(
            { arbitrary: fc.constant(FIRECRACKER_MAX_QUEUE_SIZE), weight: 3 },
            { arbitrary: fc.integer({ min: 1, max: 32768 }), weight: 1 },
          )
        : fc.constant(FIRECRACKER_MAX_QUEUE_SIZE),
      size: fc.constant(size),
      ready: options.anyReady
        ? fc.oneof({ arbitrary: fc.constant(true), weight: 9 }, fc.constant(false))
        : fc.constant(true),
      desc: addressArb(bytes.desc, 16),
      avail: addressArb(bytes.avail, 2),
      used: addressArb(bytes.used, 4),
      nextAvail: u16,
      nextUsed: u16,
      numAdded: fc.oneof(fc.integer({ min: 0, max: 300 }), u16),
      suppression: fc.boolean(),
      indirect: fc.boolean(),
      fillSeed: fc.nat(),
      plausible: fc.oneof({ arbitrary: fc.constant(true), weight: 3 }, fc.constant(false)),
      availIdx: fc.oneof(
        { arbitrary: fc.record({ near: u16 }), weight: 4 },
        { arbitrary: fc.record({ raw: u16 }), weight: 1 },
      ),
      availFlags: fc.oneof(
        { arbitrary: fc.constantFrom(0, VIRTQ_AVAIL_F_NO_INTERRUPT), weight: 4 },
        { arbitrary: u16, weight: 1 },
      ),
      usedEvent: fc.oneof(
        { arbitrary: fc.record({ back: fc.constant(0) }), weight: 1 },
        { arbitrary: fc.record({ back: u16 }), weight: 2 },
        { arbitrary: fc.record({ raw: u16 }), weight: 2 },
      ),
    });
  });
}

interface Ctx {
  s: Scenario;
  memory: GuestMemory;
  /** Guest ranges [start, end) of the regions, ascending. */
  regions: [number, number][];
  q: SplitQueue;
  /** True when initialize() succeeded. */
  ok: boolean;
  initError: unknown;
}

function build(s: Scenario): Ctx {
  const regions: [number, number][] =
    s.split === null
      ? [[MEM_BASE, MEM_END]]
      : [
          [MEM_BASE, MEM_BASE + s.split],
          [MEM_BASE + s.split, MEM_END],
        ];
  const memory = trackedMemory(
    regions.map(([a, b]) => ({ base: a, length: b - a, buffer: new ArrayBuffer(b - a) })),
  );
  const r = prng(s.fillSeed);
  const bytes = new Uint8Array(MEM_SIZE);
  for (let i = 0; i < MEM_SIZE; i += 4) {
    const x = r();
    bytes[i] = x;
    bytes[i + 1] = x >>> 8;
    bytes[i + 2] = x >>> 16;
    bytes[i + 3] = x >>> 24;
  }
  if (s.plausible) {
    const size = Math.max(1, Math.min(s.size, 0x8000));
    for (let at = 0; at < MEM_SIZE; at += 16) {
      if (r() % 8 === 0) continue;
      const d = plausibleDescriptor(r, size);
      bytes.set(d.subarray(0, Math.min(16, MEM_SIZE - at)), at);
    }
  }
  memory.write(MEM_BASE, bytes);

  const q = new SplitQueue(s.maxSize, { logger: silentLogger });
  q.size = s.size;
  q.ready = s.ready;
  q.descTableAddress = s.desc;
  q.availRingAddress = s.avail;
  q.usedRingAddress = s.used;
  q.nextAvail = s.nextAvail;
  q.nextUsed = s.nextUsed;
  q.numAdded = s.numAdded;
  q.usesNotifSuppression = s.suppression;
  q.indirectDesc = s.indirect;
  let ok = true;
  let initError: unknown;
  try {
    q.initialize(memory);
  } catch (e) {
    ok = false;
    initError = e;
  }
  if (ok) {
    // The rings are valid, so the driver-owned fields can be set through plain memory writes.
    const size = s.size;
    if (s.plausible) {
      for (let i = 0; i < size; i++) {
        const head = r() % 16 === 0 ? r() & 0xffff : r() % size;
        memory.writeU16(availRingAddr(s.avail, i), head);
      }
    }
    const idx =
      'near' in s.availIdx
        ? (s.nextAvail + (s.availIdx.near % (size + 1))) & 0xffff
        : s.availIdx.raw;
    memory.writeU16(availIdxAddr(s.avail), idx);
    memory.writeU16(s.avail, s.availFlags);
    const ue =
      'back' in s.usedEvent
        ? (s.nextUsed - 1 - (s.usedEvent.back % (size + 2))) & 0xffff
        : s.usedEvent.raw;
    memory.writeU16(usedEventAddr(s.avail, size), ue);
  }
  memory.clearDirty();
  return { s, memory, regions, q, ok, initError };
}

// ---- observation helpers ----

function snapshot(memory: GuestMemory): Uint8Array {
  const out = new Uint8Array(MEM_SIZE);
  memory.read(MEM_BASE, out);
  return out;
}

/** Guest addresses whose byte differs between two snapshots. */
function changedAddresses(before: Uint8Array, after: Uint8Array): number[] {
  const out: number[] = [];
  for (let i = 0; i < before.length; i++) if (before[i] !== after[i]) out.push(MEM_BASE + i);
  return out;
}

/** Pages of [addr, addr + len), as guest-physical page numbers. */
function pagesOf(addr: number, len: number): number[] {
  const out: number[] = [];
  for (let p = Math.floor(addr / PAGE); p <= Math.floor((addr + len - 1) / PAGE); p++) out.push(p);
  return out;
}

/** Everything about a queue that a caller can observe without touching guest memory. */
function publicState(q: SplitQueue) {
  return {
    maxSize: q.maxSize,
    size: q.size,
    ready: q.ready,
    descTableAddress: q.descTableAddress,
    availRingAddress: q.availRingAddress,
    usedRingAddress: q.usedRingAddress,
    nextAvail: q.nextAvail,
    nextUsed: q.nextUsed,
    numAdded: q.numAdded,
    usesNotifSuppression: q.usesNotifSuppression,
    indirectDesc: q.indirectDesc,
    resyncCount: q.resyncCount,
    isActive: q.isActive,
    activeSize: q.activeSize,
  };
}

/** Asserts that only bytes in [addr, addr + len) changed, and only pages of it went dirty. */
function expectOnlyTouched(
  ctx: Ctx,
  before: Uint8Array,
  addr: number,
  len: number,
  dirty = true,
): void {
  const changed = changedAddresses(before, snapshot(ctx.memory));
  for (const a of changed) {
    expect(a >= addr && a < addr + len, `byte ${a} outside [${addr}, +${len})`).toBe(true);
  }
  expect(ctx.memory.dirtyPages()).toEqual(dirty ? pagesOf(addr, len) : []);
}

function expectUntouched(ctx: Ctx, before: Uint8Array): void {
  expect(changedAddresses(before, snapshot(ctx.memory))).toEqual([]);
  expect(ctx.memory.dirtyPages()).toEqual([]);
}

function inOneRegion(ctx: Ctx, addr: number | bigint, len: number): boolean {
  const a = BigInt(addr);
  return ctx.regions.some(([lo, hi]) => a >= BigInt(lo) && a + BigInt(len) <= BigInt(hi));
}

// ---- a reference model of chain validation (for verify_checked_new and verify_pop) ----

type ModelOutcome =
  | { ok: true; descriptors: Descriptor[] }
  | { ok: false; code: DescriptorErrorCode; index: number };

interface RawDesc {
  addr: bigint;
  len: number;
  flags: number;
  next: number;
}

function readRawDesc(snap: Uint8Array, addr: number): RawDesc {
  const v = new DataView(snap.buffer, snap.byteOffset + (addr - MEM_BASE), 16);
  return {
    addr: v.getBigUint64(0, true),
    len: v.getUint32(8, true),
    flags: v.getUint16(12, true),
    next: v.getUint16(14, true),
  };
}

class ModelFailure {
  constructor(
    readonly code: DescriptorErrorCode,
    readonly index: number,
  ) {}
}

/**
 * What popping the chain at `head` must produce, from the spec rules, checked in the order a
 * walk meets them: each descriptor's own rules, then its link to the next one.
 */
function modelChain(ctx: Ctx, snap: Uint8Array, head: number): ModelOutcome {
  const { size, desc, indirect } = ctx.s;
  const fail = (code: DescriptorErrorCode, index: number): never => {
    throw new ModelFailure(code, index);
  };
  const descriptors: Descriptor[] = [];
  let sawWritable = false;
  let total = 0;
  const push = (index: number, d: RawDesc, fromIndirect: boolean) => {
    // §2.7.5.3.1: no chain is longer than the queue (this also catches loops).
    if (descriptors.length >= size) fail('DESC_CHAIN_TOO_LONG', index);
    // §2.7.4.2: device-readable descriptors come first.
    if ((d.flags & VIRTQ_DESC_F_WRITE) !== 0) sawWritable = true;
    else if (sawWritable) fail('DESC_WRITABLE_BEFORE_READABLE', index);
    total += d.len;
    if (total > TWO_32) fail('DESC_CHAIN_LENGTH_OVERFLOW', index);
    const inMemory =
      d.len === 0 || (d.addr >= BigInt(MEM_BASE) && d.addr + BigInt(d.len) <= BigInt(MEM_END));
    if (!inMemory) fail('DESC_BUFFER_OUT_OF_MEMORY', index);
    descriptors.push({
      index,
      addr: d.addr >= BigInt(U64_UNSAFE) ? U64_UNSAFE : Number(d.addr),
      len: d.len,
      flags: d.flags,
      next: d.next,
      indirect: fromIndirect,
    });
  };
  try {
    if (head >= size) fail('DESC_HEAD_OUT_OF_RANGE', head);
    let i = head;
    for (;;) {
      const d = readRawDesc(snap, descAddr(desc, i));
      if ((d.flags & VIRTQ_DESC_F_INDIRECT) !== 0) {
        if (!indirect) fail('DESC_INDIRECT_NOT_NEGOTIATED', i);
        if ((d.flags & VIRTQ_DESC_F_NEXT) !== 0) fail('DESC_INDIRECT_WITH_NEXT', i);
        if (d.len === 0 || d.len % 16 !== 0) fail('DESC_INDIRECT_BAD_LENGTH', i);
        const entries = d.len / 16;
        if (entries > size) fail('DESC_INDIRECT_BAD_LENGTH', i);
        if (!inOneRegion(ctx, d.addr, d.len)) fail('DESC_INDIRECT_OUT_OF_MEMORY', i);
        const table = Number(d.addr);
        let j = 0;
        for (let steps = 1; ; steps++) {
          if (steps > entries) fail('DESC_INDIRECT_LOOP', j);
          const e = readRawDesc(snap, table + 16 * j);
          if ((e.flags & VIRTQ_DESC_F_INDIRECT) !== 0) fail('DESC_INDIRECT_NESTED', j);
          push(j, e, true);
          if ((e.flags & VIRTQ_DESC_F_NEXT) === 0) break;
          if (e.next >= entries) fail('DESC_NEXT_OUT_OF_RANGE', j);
          j = e.next;
        }
        break;
      }
      push(i, d, false);
      if ((d.flags & VIRTQ_DESC_F_NEXT) === 0) break;
      if (d.next >= size) fail('DESC_NEXT_OUT_OF_RANGE', i);
      i = d.next;
    }
  } catch (e) {
    if (e instanceof ModelFailure) return { ok: false, code: e.code, index: e.index };
    throw e;
  }
  return { ok: true, descriptors };
}

/** Runs `fn` and describes its outcome in the model's terms. */
function outcomeOf(fn: () => DescriptorChain): ModelOutcome {
  try {
    const c = fn();
    return { ok: true, descriptors: [...c] };
  } catch (e) {
    if (e instanceof DescriptorError) return { ok: false, code: e.code, index: e.index };
    throw e;
  }
}

/** The head the avail ring holds at position `nextAvail`. */
function headAt(ctx: Ctx, nextAvail: number): number {
  return ctx.memory.readU16(availRingAddr(ctx.s.avail, nextAvail % ctx.s.size));
}

function pendingOf(ctx: Ctx): number {
  return (ctx.memory.readU16(availIdxAddr(ctx.s.avail)) - ctx.q.nextAvail) & 0xffff;
}

/** The seed's interval form of "used_event lies in the batch just published". */
function kickModel(usedEvent: number, nextUsed: number, numAdded: number): boolean {
  if (numAdded === 0) return false;
  const start = (nextUsed - numAdded) & 0xffff;
  const end = (nextUsed - 1) & 0xffff;
  if (start > end) return usedEvent <= end || usedEvent >= start;
  return usedEvent >= start && usedEvent <= end;
}

function check<T>(p: fc.IRawProperty<T>, numRuns = RUNS): void {
  fc.assert(p, { numRuns });
}

// ---- the harnesses ----

describe('split queue: the seed proof harnesses as properties', () => {
  it('verify_spec_2_6_7_2', () => {
    let mustNotify = 0;
    check(
      fc.property(scenarioArb(), (s) => {
        const ctx = build(s);
        fc.pre(ctx.ok);
        const { q } = ctx;
        const numAddedOld = q.numAdded;
        const usedEvent = q.availRingUsedEventGet();
        const kick = q.prepareKick();
        if (!q.usesNotifSuppression) {
          // §2.7.7.2: flags 0 means the device MUST notify. virtq also honours the SHOULD NOT
          // for VIRTQ_AVAIL_F_NO_INTERRUPT (the seed always notifies).
          expect(kick).toBe((s.availFlags & VIRTQ_AVAIL_F_NO_INTERRUPT) === 0);
        } else if (usedEvent === ((q.nextUsed - 1) & 0xffff) && numAddedOld > 0) {
          // The last element went to the slot used_event names: a notification is a MUST.
          expect(kick).toBe(true);
          mustNotify++;
        }
      }),
    );
    // The interesting branch was reached.
    expect(mustNotify).toBeGreaterThan(0);
  });

  it('verify_prepare_kick', () => {
    check(
      fc.property(scenarioArb(), (s) => {
        const ctx = build(s);
        fc.pre(ctx.ok);
        const { q } = ctx;
        q.enableNotifSuppression();
        expect(q.usesNotifSuppression).toBe(true);
        const before = snapshot(ctx.memory);
        const expected = kickModel(q.availRingUsedEventGet(), q.nextUsed, q.numAdded);
        const nextUsed = q.nextUsed;
        expect(q.prepareKick()).toBe(expected);
        expect(q.numAdded).toBe(0);
        expect(q.nextUsed).toBe(nextUsed);
        expectUntouched(ctx, before);
      }),
    );
  });

  it('verify_prepare_kick, exhaustively over every used_event', () => {
    // The result depends on (nextUsed - used_event) mod 2^16 and numAdded. For each nextUsed
    // below (chosen around the wrap) every used_event value is tried, so every distance is
    // covered, against a dense set of batch sizes.
    const memory = GuestMemory.create(0x10000, { base: 0x1000, trackDirty: true });
    const size = 256;
    const q = new SplitQueue(size, { logger: silentLogger });
    q.ready = true;
    q.descTableAddress = 0x1000;
    q.availRingAddress = 0x2000;
    q.usedRingAddress = 0x3000;
    q.enableNotifSuppression();
    q.initialize(memory);
    const r = memory.findRegion(usedEventAddr(0x2000, size))!;
    const usedEvent = new Uint16Array(r.buffer, r.offset + usedEventAddr(0x2000, size) - r.base, 1);

    const nextUseds = [0, 1, 0x7fff, 0x8000, 0xfffe, 0xffff, 0x1234];
    // Every batch size a queue of up to 256 can produce, then a sparse sweep of the rest of
    // the u16 range with its wrap points.
    const numAddeds = new Set<number>();
    for (let n = 0; n <= 257; n++) numAddeds.add(n);
    for (const n of [0x7ffe, 0x7fff, 0x8000, 0x8001, 0xfffe, 0xffff]) numAddeds.add(n);
    for (let n = 0; n < 0x10000; n += 1021) numAddeds.add(n);

    const mismatches: string[] = [];
    for (const nextUsed of nextUseds) {
      for (const numAdded of numAddeds) {
        let kicks = 0;
        for (let ue = 0; ue < 0x10000; ue++) {
          usedEvent[0] = ue;
          q.nextUsed = nextUsed;
          q.numAdded = numAdded;
          const got = q.prepareKick();
          if (got) kicks++;
          if (got !== kickModel(ue, nextUsed, numAdded) || q.numAdded !== 0) {
            if (mismatches.length < 5) mismatches.push(`${nextUsed}/${numAdded}/${ue}: ${got}`);
          }
        }
        // A batch of n elements crosses exactly n used_event values.
        if (kicks !== numAdded && mismatches.length < 5) {
          mismatches.push(`${nextUsed}/${numAdded}: ${kicks} used_event values notify`);
        }
      }
    }
    expect(mismatches).toEqual([]);
  });

  it('verify_add_used', () => {
    const idArb = fc.oneof(
      { arbitrary: fc.record({ below: u16 }), weight: 3 },
      { arbitrary: fc.record({ around: fc.integer({ min: -2, max: 2 }) }), weight: 1 },
      { arbitrary: fc.record({ raw: u16 }), weight: 1 },
    );
    let added = 0;
    let refused = 0;
    check(
      fc.property(scenarioArb(), idArb, fc.nat(0xffff_ffff), (s, idSpec, len) => {
        const ctx = build(s);
        fc.pre(ctx.ok);
        const { q } = ctx;
        const id =
          'below' in idSpec
            ? idSpec.below % s.size
            : 'around' in idSpec
              ? Math.max(0, s.size + idSpec.around)
              : idSpec.raw;
        const before = snapshot(ctx.memory);
        const state = publicState(q);
        const slot = q.nextUsed % s.size;
        let error: unknown = null;
        try {
          q.addUsed(id, len);
        } catch (e) {
          error = e;
        }
        if (error === null) {
          added++;
          expect(id).toBeLessThan(s.size);
          expect(publicState(q)).toEqual({
            ...state,
            nextUsed: (state.nextUsed + 1) & 0xffff,
            numAdded: (state.numAdded + 1) & 0xffff,
          });
          // The element went to ring[nextUsed % size] and nowhere else; used.idx is untouched
          // until advanceUsedRingIdx().
          const at = usedElemAddr(s.used, slot);
          expect(ctx.memory.readU32(at)).toBe(id);
          expect(ctx.memory.readU32(at + 4)).toBe(len);
          expectOnlyTouched(ctx, before, at, 8);
        } else {
          refused++;
          expect(error).toBeInstanceOf(UsedRingError);
          expect((error as UsedRingError).id).toBe(id);
          expect(id).toBeGreaterThanOrEqual(s.size);
          // What the seed could not check: nothing was written, nothing moved.
          expect(publicState(q)).toEqual(state);
          expectUntouched(ctx, before);
        }
      }),
    );
    expect(added).toBeGreaterThan(0);
    expect(refused).toBeGreaterThan(0);
  });

  it('verify_is_empty', () => {
    check(
      fc.property(scenarioArb(), (s) => {
        const ctx = build(s);
        fc.pre(ctx.ok);
        const { q } = ctx;
        const before = snapshot(ctx.memory);
        const state = publicState(q);
        const len = q.len();
        expect(len).toBe(pendingOf(ctx));
        expect(q.isEmpty()).toBe(len === 0);
        // Neither call resynchronises or writes anything.
        expect(publicState(q)).toEqual(state);
        expectUntouched(ctx, before);
      }),
    );
  });

  it('verify_initialize', () => {
    const seen = new Set<string>();
    check(
      fc.property(scenarioArb({ anyReady: true, anyMaxSize: true }), (s) => {
        const ctx = build(s);
        const { q } = ctx;
        // What §2.7 requires, checked in the order initialize() reports it.
        let expected: { code: QueueConfigErrorCode; field: string } | null = null;
        if (!s.ready) expected = { code: 'QUEUE_NOT_READY', field: 'ready' };
        else if (!(isPowerOfTwo(s.size) && s.size <= s.maxSize))
          expected = { code: 'QUEUE_INVALID_SIZE', field: 'size' };
        else {
          const bytes = ringBytes(s.size);
          const parts = [
            ['descTableAddress', s.desc, bytes.desc, 16],
            ['availRingAddress', s.avail, bytes.avail, 2],
            ['usedRingAddress', s.used, bytes.used, 4],
          ] as const;
          for (const [field, addr, len, align] of parts) {
            if (!Number.isSafeInteger(addr)) expected = { code: 'QUEUE_RING_OUT_OF_MEMORY', field };
            else if (addr % align !== 0) expected = { code: 'QUEUE_MISALIGNED', field };
            else if (!inOneRegion(ctx, addr, len))
              expected = { code: 'QUEUE_RING_OUT_OF_MEMORY', field };
            if (expected !== null) break;
          }
        }
        seen.add(expected?.code ?? 'ok');
        if (ctx.ok) {
          expect(expected).toBeNull();
          // The seed's assertions: alignment of each part, a power-of-two size of at most 2^15.
          expect(q.descTableAddress % 16).toBe(0);
          expect(q.availRingAddress % 2).toBe(0);
          expect(q.usedRingAddress % 4).toBe(0);
          expect(isPowerOfTwo(q.size)).toBe(true);
          expect(q.size).toBeLessThanOrEqual(2 ** 15);
          expect(q.isActive).toBe(true);
          expect(q.activeSize).toBe(s.size);
          // The views read the configured addresses.
          expect(q.availRingIdxGet()).toBe(ctx.memory.readU16(availIdxAddr(s.avail)));
          // Initialising marks the three rings dirty, and nothing else.
          ctx.memory.clearDirty();
          q.initialize(ctx.memory);
          const bytes = ringBytes(s.size);
          const pages = new Set([
            ...pagesOf(s.desc, bytes.desc),
            ...pagesOf(s.avail, bytes.avail),
            ...pagesOf(s.used, bytes.used),
          ]);
          expect(ctx.memory.dirtyPages()).toEqual([...pages].sort((a, b) => a - b));
        } else {
          expect(ctx.initError).toBeInstanceOf(QueueConfigError);
          const e = ctx.initError as QueueConfigError;
          expect({ code: e.code, field: e.field }).toEqual(expected);
          expect(q.isActive).toBe(false);
          // An inactive queue refuses ring access with a typed error.
          expect(() => q.pop()).toThrow(QueueStateError);
          expect(() => q.availRingIdxGet()).toThrow(QueueStateError);
        }
      }),
    );
    // Every outcome was generated.
    for (const k of [
      'ok',
      'QUEUE_NOT_READY',
      'QUEUE_INVALID_SIZE',
      'QUEUE_MISALIGNED',
      'QUEUE_RING_OUT_OF_MEMORY',
    ]) {
      expect(seen).toContain(k);
    }
  });

  it('verify_avail_ring_idx_get', () => {
    check(
      fc.property(scenarioArb(), (s) => {
        const ctx = build(s);
        fc.pre(ctx.ok);
        const before = snapshot(ctx.memory);
        expect(ctx.q.availRingIdxGet()).toBe(ctx.memory.readU16(availIdxAddr(s.avail)));
        expectUntouched(ctx, before);
      }),
    );
  });

  it('verify_avail_ring_ring_get', () => {
    check(
      fc.property(scenarioArb(), u16, (s, pick) => {
        const ctx = build(s);
        fc.pre(ctx.ok);
        const before = snapshot(ctx.memory);
        const x = pick % s.size;
        expect(ctx.q.availRingRingGet(x)).toBe(ctx.memory.readU16(availRingAddr(s.avail, x)));
        // Outside [0, size) is host misuse, refused before any access.
        expect(() => ctx.q.availRingRingGet(s.size + (pick % 4))).toThrow(RangeError);
        expect(() => ctx.q.availRingRingGet(-1 - (pick % 4))).toThrow(RangeError);
        expectUntouched(ctx, before);
      }),
    );
  });

  it('verify_avail_ring_used_event_get', () => {
    check(
      fc.property(scenarioArb(), (s) => {
        const ctx = build(s);
        fc.pre(ctx.ok);
        const before = snapshot(ctx.memory);
        expect(ctx.q.availRingUsedEventGet()).toBe(
          ctx.memory.readU16(usedEventAddr(s.avail, s.size)),
        );
        expectUntouched(ctx, before);
      }),
    );
  });

  it('verify_used_ring_idx_set', () => {
    check(
      fc.property(scenarioArb(), u16, (s, value) => {
        const ctx = build(s);
        fc.pre(ctx.ok);
        const before = snapshot(ctx.memory);
        const state = publicState(ctx.q);
        ctx.q.usedRingIdxSet(value);
        expect(ctx.memory.readU16(usedIdxAddr(s.used))).toBe(value);
        expect(ctx.q.usedRingIdxGet()).toBe(value);
        expectOnlyTouched(ctx, before, usedIdxAddr(s.used), 2);
        expect(publicState(ctx.q)).toEqual(state);
      }),
    );
  });

  it('verify_used_ring_ring_set', () => {
    check(
      fc.property(
        scenarioArb(),
        u16,
        fc.nat(0xffff_ffff),
        fc.nat(0xffff_ffff),
        (s, pick, id, len) => {
          const ctx = build(s);
          fc.pre(ctx.ok);
          const before = snapshot(ctx.memory);
          const x = pick % s.size;
          ctx.q.usedRingRingSet(x, id, len);
          const at = usedElemAddr(s.used, x);
          expect(ctx.memory.readU32(at)).toBe(id);
          expect(ctx.memory.readU32(at + 4)).toBe(len);
          expect(ctx.q.usedRingRingGet(x)).toEqual([id, len]);
          expectOnlyTouched(ctx, before, at, 8);
          const after = snapshot(ctx.memory);
          expect(() => ctx.q.usedRingRingSet(s.size, id, len)).toThrow(RangeError);
          expect(changedAddresses(after, snapshot(ctx.memory))).toEqual([]);
        },
      ),
    );
  });

  it('verify_used_ring_avail_event', () => {
    check(
      fc.property(scenarioArb(), u16, (s, value) => {
        const ctx = build(s);
        fc.pre(ctx.ok);
        const before = snapshot(ctx.memory);
        ctx.q.usedRingAvailEventSet(value);
        expect(ctx.q.usedRingAvailEventGet()).toBe(value);
        expect(ctx.memory.readU16(availEventAddr(s.used, s.size))).toBe(value);
        expectOnlyTouched(ctx, before, availEventAddr(s.used, s.size), 2);
      }),
    );
  });

  it('verify_pop', () => {
    const outcomes = new Set<string>();
    check(
      fc.property(scenarioArb(), (s) => {
        const ctx = build(s);
        fc.pre(ctx.ok);
        const { q } = ctx;
        const before = snapshot(ctx.memory);
        const state = publicState(q);
        const pending = pendingOf(ctx);
        const availIdx = ctx.memory.readU16(availIdxAddr(s.avail));
        if (pending > s.size) {
          // The seed assumes this away; both resynchronise to the driver's index and pop nothing.
          expect(q.pop()).toBeNull();
          expect(publicState(q)).toEqual({
            ...state,
            nextAvail: availIdx,
            numAdded: 0,
            resyncCount: state.resyncCount + 1,
          });
          outcomes.add('resync');
        } else if (pending === 0) {
          expect(q.pop()).toBeNull();
          expect(publicState(q)).toEqual(state);
          outcomes.add('empty');
        } else {
          const head = headAt(ctx, state.nextAvail);
          const expected = modelChain(ctx, before, head);
          // A valid chain is popped; a malformed one throws its DescriptorError (the seed
          // returns None and stalls). Either way the ring entry is consumed.
          const got = outcomeOf(() => q.pop()!);
          expect(got).toEqual(expected);
          expect(publicState(q)).toEqual({ ...state, nextAvail: (state.nextAvail + 1) & 0xffff });
          outcomes.add(got.ok ? 'chain' : got.code);
        }
        // Popping reads the rings and the table; it writes nothing.
        expectUntouched(ctx, before);
      }),
    );
    for (const k of ['resync', 'empty', 'chain', 'DESC_HEAD_OUT_OF_RANGE']) {
      expect(outcomes).toContain(k);
    }
  });

  it('verify_undo_pop', () => {
    let undone = 0;
    check(
      fc.property(scenarioArb(), (s) => {
        const ctx = build(s);
        fc.pre(ctx.ok);
        const { q } = ctx;
        // As in the seed: the driver claims no more chains than the ring holds.
        fc.pre(pendingOf(ctx) <= s.size);
        const before = snapshot(ctx.memory);
        const state = publicState(q);
        const popped = (() => {
          try {
            return q.pop();
          } catch (e) {
            expect(e).toBeInstanceOf(DescriptorError);
            return e as DescriptorError;
          }
        })();
        if (popped === null) {
          // Empty queue: nothing was consumed, nothing to undo.
          expect(pendingOf(ctx)).toBe(0);
          expect(publicState(q)).toEqual(state);
        } else {
          const first =
            popped instanceof DescriptorError
              ? { ok: false, code: popped.code, index: popped.index }
              : { ok: true, descriptors: [...popped] };
          q.undoPop();
          undone++;
          expect(publicState(q)).toEqual(state);
          expect(q.len()).toBe(pendingOf(ctx));
          // The same chain (or the same error) comes out again.
          expect(outcomeOf(() => q.pop()!)).toEqual(first);
        }
        expectUntouched(ctx, before);
      }),
    );
    expect(undone).toBeGreaterThan(0);
  });

  it('verify_try_enable_notification', () => {
    const branches = new Set<string>();
    check(
      fc.property(scenarioArb(), (s) => {
        const ctx = build(s);
        fc.pre(ctx.ok);
        const { q } = ctx;
        const before = snapshot(ctx.memory);
        const state = publicState(q);
        const pending = pendingOf(ctx);
        const availIdx = ctx.memory.readU16(availIdxAddr(s.avail));
        const result = q.tryEnableNotification();
        const eventAt = availEventAddr(s.used, s.size);
        if (!s.suppression) {
          // Notifications are always on without EVENT_IDX.
          expect(result).toBe(true);
          expect(publicState(q)).toEqual(state);
          expectUntouched(ctx, before);
          branches.add('off');
        } else if (pending > 0 && pending <= s.size) {
          // Chains are waiting: no guarantee of a notification, nothing written.
          expect(result).toBe(false);
          expect(publicState(q)).toEqual(state);
          expectUntouched(ctx, before);
          branches.add('pending');
        } else {
          // Empty (after resynchronising a wrapped index, if need be): the seed's assertion,
          // plus avail_event now names the next index the device will read.
          expect(result).toBe(true);
          expect(q.isEmpty()).toBe(true);
          expect(q.availRingIdxGet()).toBe(q.nextAvail);
          expect(q.nextAvail).toBe(availIdx);
          expect(ctx.memory.readU16(eventAt)).toBe(q.nextAvail);
          expectOnlyTouched(ctx, before, eventAt, 2);
          branches.add(pending === 0 ? 'empty' : 'resync');
        }
      }),
    );
    expect([...branches].sort()).toEqual(['empty', 'off', 'pending', 'resync']);
  });

  it('verify_checked_new', () => {
    const codes = new Set<string>();
    check(
      fc.property(scenarioArb(), u16, fc.integer({ min: 0, max: 9 }), (s, pick, mode) => {
        const inRange = mode > 1;
        const ctx = build(s);
        fc.pre(ctx.ok);
        const index = inRange ? pick % s.size : pick;
        const before = snapshot(ctx.memory);
        if (index < s.size) {
          // An in-range head has a whole descriptor inside the table, inside one region.
          expect(ctx.memory.isValidRange(descAddr(s.desc, index), 16)).toBe(true);
        }
        const expected = modelChain(ctx, before, index);
        const got = outcomeOf(() => ctx.q.chainAt(index));
        expect(got).toEqual(expected);
        if (index >= s.size) expect(got).toMatchObject({ code: 'DESC_HEAD_OUT_OF_RANGE' });
        codes.add(got.ok ? 'ok' : got.code);
        if (got.ok) {
          // Every link of a valid chain follows the table, NEXT on all but the last.
          const ds = got.descriptors;
          expect(ds.length).toBeGreaterThan(0);
          expect(ds.length).toBeLessThanOrEqual(s.size);
          for (let k = 0; k + 1 < ds.length; k++) {
            expect(ds[k]!.flags & VIRTQ_DESC_F_NEXT).toBe(VIRTQ_DESC_F_NEXT);
            if (ds[k]!.indirect === ds[k + 1]!.indirect) expect(ds[k + 1]!.index).toBe(ds[k]!.next);
          }
        }
        // chainAt only reads.
        expectUntouched(ctx, before);
      }),
      2000,
    );
    // The generator reaches every rule that random tables break often; the rarer indirect-table
    // rules are pinned down by the next test.
    for (const k of [
      'ok',
      'DESC_HEAD_OUT_OF_RANGE',
      'DESC_NEXT_OUT_OF_RANGE',
      'DESC_CHAIN_TOO_LONG',
      'DESC_BUFFER_OUT_OF_MEMORY',
      'DESC_INDIRECT_NOT_NEGOTIATED',
      'DESC_INDIRECT_WITH_NEXT',
      'DESC_INDIRECT_BAD_LENGTH',
      'DESC_WRITABLE_BEFORE_READABLE',
      'DESC_CHAIN_LENGTH_OVERFLOW',
    ]) {
      expect(codes, `no case produced ${k}`).toContain(k);
    }
  });

  it('verify_checked_new, indirect-table rules from hand-built tables', () => {
    const ctx = build({
      split: null,
      maxSize: 256,
      size: 16,
      ready: true,
      desc: MEM_BASE,
      avail: MEM_BASE + 256,
      used: MEM_BASE + 512,
      nextAvail: 0,
      nextUsed: 0,
      numAdded: 0,
      suppression: false,
      indirect: true,
      fillSeed: 1,
      plausible: false,
      availIdx: { raw: 0 },
      availFlags: 0,
      usedEvent: { raw: 0 },
    });
    expect(ctx.ok).toBe(true);
    const m = ctx.memory;
    const put = (at: number, addr: number, len: number, flags: number, next: number) => {
      m.writeU64(at, addr);
      m.writeU32(at + 8, len);
      m.writeU16(at + 12, flags);
      m.writeU16(at + 14, next);
    };
    const table = MEM_BASE + 4096;
    const buf = MEM_BASE + 5000;
    const cases: [string, () => void, ModelOutcome['ok'] | DescriptorErrorCode][] = [
      [
        'a readable then a writable entry',
        () => {
          put(descAddr(MEM_BASE, 0), table, 32, VIRTQ_DESC_F_INDIRECT, 0);
          put(table, buf, 8, VIRTQ_DESC_F_NEXT, 1);
          put(table + 16, buf + 8, 8, VIRTQ_DESC_F_WRITE, 0);
        },
        true,
      ],
      [
        'entries linked in a cycle',
        () => {
          put(table, buf, 8, VIRTQ_DESC_F_NEXT, 1);
          put(table + 16, buf + 8, 8, VIRTQ_DESC_F_NEXT, 0);
        },
        'DESC_INDIRECT_LOOP',
      ],
      [
        'an indirect entry inside the table',
        () => put(table, table, 32, VIRTQ_DESC_F_INDIRECT, 0),
        'DESC_INDIRECT_NESTED',
      ],
      [
        'a table running past the end of memory',
        () => put(descAddr(MEM_BASE, 0), MEM_END - 16, 32, VIRTQ_DESC_F_INDIRECT, 0),
        'DESC_INDIRECT_OUT_OF_MEMORY',
      ],
      [
        'a table longer than the queue',
        () => put(descAddr(MEM_BASE, 0), table, 16 * 17, VIRTQ_DESC_F_INDIRECT, 0),
        'DESC_INDIRECT_BAD_LENGTH',
      ],
    ];
    for (const [what, setUp, expected] of cases) {
      setUp();
      const snap = snapshot(m);
      const got = outcomeOf(() => ctx.q.chainAt(0));
      expect(got, what).toEqual(modelChain(ctx, snap, 0));
      expect(got.ok ? true : got.code, what).toBe(expected);
    }
  });
});
