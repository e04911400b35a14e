/**
 * Guest memory (src/memory): region validation, region lookup, checked little-endian access,
 * byte-range copies over contiguous regions and gaps, views, the dirty-page bitmap and sharing
 * between threads; then a property that random accesses over random region layouts succeed
 * exactly when they lie in memory and never touch a byte outside their range.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { RawPackedRing } from '../../src/driver/raw-packed.js';
import { RawSplitRing } from '../../src/driver/raw-split.js';
import { GuestMemoryError, isVirtqError } from '../../src/errors.js';
import {
  DIRTY_PAGE_SIZE,
  GuestMemory,
  GuestRegion,
  type RegionSpec,
  U64_UNSAFE,
} from '../../src/memory/index.js';
import { DescriptorChain, VIRTQ_DESC_F_WRITE } from '../../src/queue/index.js';
import { trackedMemory } from '../tracked-memory.js';

const PAGE = DIRTY_PAGE_SIZE;

/** Regions [base, base + length) over fresh buffers. */
function mem(...ranges: [base: number, length: number][]): GuestMemory {
  return trackedMemory(
    ranges.map(([base, length]) => ({ base, length, buffer: new ArrayBuffer(length) })),
  );
}

/** Runs `fn`, which must throw; returns what it threw. */
function thrown(fn: () => unknown): unknown {
  try {
    fn();
  } catch (e) {
    return e;
  }
  throw new Error('expected an exception, none was thrown');
}

/** Asserts `fn` throws a GuestMemoryError for [addr, +len). */
function expectOutOfBounds(fn: () => unknown, addr?: number, len?: number): void {
  const e = thrown(fn);
  expect(e).toBeInstanceOf(GuestMemoryError);
  expect(isVirtqError(e, 'MEMORY_OUT_OF_BOUNDS')).toBe(true);
  if (addr !== undefined) expect((e as GuestMemoryError).address).toBe(addr);
  if (len !== undefined) expect((e as GuestMemoryError).length).toBe(len);
}

/** Every byte of every region, concatenated in address order. */
function contents(m: GuestMemory): number[] {
  const out: number[] = [];
  for (const r of m.regions) out.push(...r.bytes);
  return out;
}

describe('GuestMemory: region validation', () => {
  const buf = () => new ArrayBuffer(64);

  it('rejects host misuse with RangeError / TypeError, never a VirtqError', () => {
    const bad: [string, () => unknown, typeof RangeError | typeof TypeError][] = [
      ['no regions', () => trackedMemory([]), RangeError],
      [
        // It could shrink under the device; a growable SharedArrayBuffer only grows (below).
        'a resizable ArrayBuffer',
        () => {
          const Resizable = ArrayBuffer as unknown as new (
            n: number,
            o: { maxByteLength: number },
          ) => ArrayBuffer;
          return trackedMemory([
            { base: 0, length: 64, buffer: new Resizable(64, { maxByteLength: 128 }) },
          ]);
        },
        TypeError,
      ],
      [
        'base not a multiple of 8',
        () => trackedMemory([{ base: 4, length: 8, buffer: buf() }]),
        RangeError,
      ],
      [
        'offset not a multiple of 8',
        () => trackedMemory([{ base: 0, length: 8, buffer: buf(), offset: 4 }]),
        RangeError,
      ],
      ['negative base', () => trackedMemory([{ base: -8, length: 8, buffer: buf() }]), RangeError],
      [
        'fractional base',
        () => trackedMemory([{ base: 8.5, length: 8, buffer: buf() }]),
        RangeError,
      ],
      [
        'unsafe base',
        () => trackedMemory([{ base: 2 ** 53, length: 8, buffer: buf() }]),
        RangeError,
      ],
      ['zero length', () => trackedMemory([{ base: 0, length: 0, buffer: buf() }]), RangeError],
      [
        'negative length',
        () => trackedMemory([{ base: 0, length: -1, buffer: buf() }]),
        RangeError,
      ],
      [
        'NaN length',
        () => trackedMemory([{ base: 0, length: Number.NaN, buffer: buf() }]),
        RangeError,
      ],
      [
        'end beyond 2^53 - 1',
        () => trackedMemory([{ base: 2 ** 53 - 64, length: 64, buffer: buf() }]),
        RangeError,
      ],
      [
        'length beyond the buffer',
        () => trackedMemory([{ base: 0, length: 65, buffer: buf() }]),
        RangeError,
      ],
      [
        'offset + length beyond the buffer',
        () => trackedMemory([{ base: 0, length: 64, buffer: buf(), offset: 8 }]),
        RangeError,
      ],
      [
        'offset beyond the buffer',
        () => trackedMemory([{ base: 0, length: 1, buffer: buf(), offset: 72 }]),
        RangeError,
      ],
      [
        'a typed array instead of a buffer',
        () =>
          trackedMemory([
            { base: 0, length: 8, buffer: new Uint8Array(8) as unknown as ArrayBuffer },
          ]),
        TypeError,
      ],
      [
        'overlapping regions',
        () =>
          trackedMemory([
            { base: 0, length: 64, buffer: buf() },
            { base: 56, length: 8, buffer: buf() },
          ]),
        RangeError,
      ],
      [
        'overlapping regions given out of order',
        () =>
          trackedMemory([
            { base: 128, length: 64, buffer: buf() },
            { base: 64, length: 64, buffer: buf() },
            { base: 0, length: 72, buffer: buf() },
          ]),
        RangeError,
      ],
      [
        'a dirty buffer count that does not match',
        () => trackedMemory([{ base: 0, length: 64, buffer: buf() }], []),
        RangeError,
      ],
      [
        'a dirty buffer of the wrong size',
        () => trackedMemory([{ base: 0, length: 64, buffer: buf() }], [new ArrayBuffer(4)]),
        RangeError,
      ],
    ];
    for (const [what, fn, type] of bad) {
      const e = thrown(fn);
      expect(e, what).toBeInstanceOf(type);
      expect(isVirtqError(e), what).toBe(false);
    }
  });

  it('accepts a growable SharedArrayBuffer, and its region reads and writes the same bytes after the buffer grows', () => {
    const Growable = SharedArrayBuffer as unknown as new (
      n: number,
      o: { maxByteLength: number },
    ) => SharedArrayBuffer & { grow(n: number): void };
    const sab = new Growable(64, { maxByteLength: 4096 });
    const m = new GuestMemory([{ base: 0x1000, length: 64, buffer: sab }]);
    m.writeU32(0x1000 + 60, 0xdeadbeef);
    sab.grow(4096);
    expect(m.readU32(0x1000 + 60)).toBe(0xdeadbeef);
    expect(new DataView(sab).getUint32(60, true)).toBe(0xdeadbeef);
    expect(() => m.readU32(0x1000 + 64)).toThrow(GuestMemoryError);
  });

  it('accepts adjacent regions in any order and sorts them', () => {
    const m = trackedMemory([
      { base: 128, length: 64, buffer: buf() },
      { base: 0, length: 64, buffer: buf() },
      { base: 64, length: 64, buffer: new ArrayBuffer(80), offset: 16 },
    ]);
    expect(m.regions.map((r) => [r.base, r.end])).toEqual([
      [0, 64],
      [64, 128],
      [128, 192],
    ]);
    expect(m.size).toBe(192);
    // The buffer offset maps guest address 64 to buffer byte 16.
    m.writeU8(64, 0x5a);
    expect(new Uint8Array(m.regions[1]!.buffer)[16]).toBe(0x5a);
  });

  it('GuestMemory.create makes one region at the given base', () => {
    const m = GuestMemory.create(4096, { base: 0x10000 });
    expect(m.regions).toHaveLength(1);
    expect(m.regions[0]!.base).toBe(0x10000);
    expect(m.regions[0]!.end).toBe(0x11000);
    expect(m.regions[0]!.buffer).toBeInstanceOf(ArrayBuffer);
    expect(GuestMemory.create(8, { shared: true }).regions[0]!.buffer).toBeInstanceOf(
      SharedArrayBuffer,
    );
  });
});

describe('GuestMemory: region lookup', () => {
  // 300 regions of varying lengths with gaps of varying sizes, some of them adjacent.
  const specs: RegionSpec[] = [];
  let at = 0x1000;
  for (let i = 0; i < 300; i++) {
    const length = 8 + ((i * 37) % 200);
    specs.push({ base: at, length, buffer: new ArrayBuffer(length) });
    at = Math.ceil((at + length) / 8) * 8 + (i % 3 === 0 ? 0 : 8 * (i % 5));
  }
  const m = trackedMemory(specs);

  const linear = (addr: number) => m.regions.find((r) => addr >= r.base && addr < r.end);

  it('finds the region of every first and last byte, and nothing in gaps', () => {
    for (const r of m.regions) {
      expect(m.findRegion(r.base)).toBe(r);
      expect(m.findRegion(r.end - 1)).toBe(r);
      expect(m.findRegion(r.end)).toBe(linear(r.end));
      expect(m.findRegion(r.base - 1)).toBe(linear(r.base - 1));
    }
    for (const bad of [-1, 0, 0xfff, at + 1e6, Number.NaN, Number.POSITIVE_INFINITY, -0.5]) {
      expect(m.findRegion(bad)).toBeUndefined();
    }
  });

  it('agrees with a linear scan for random addresses in random order', () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 0, max: at + 64 }), { maxLength: 200 }), (addrs) => {
        for (const a of addrs) expect(m.findRegion(a)).toBe(linear(a));
      }),
      { numRuns: 200 },
    );
  });
});

describe('GuestMemory: little-endian scalars', () => {
  it('stores every width little-endian and reads it back', () => {
    const m = mem([0x100, 64]);
    m.writeU16(0x100, 0x1234);
    m.writeU32(0x108, 0x89abcdef);
    m.writeU64(0x110, 0x1f_2233_4455_6677);
    m.writeU8(0x118, 0xfe);
    const r = m.regions[0]!;
    expect([...r.bytes.subarray(0, 2)]).toEqual([0x34, 0x12]);
    expect([...r.bytes.subarray(8, 12)]).toEqual([0xef, 0xcd, 0xab, 0x89]);
    expect([...r.bytes.subarray(16, 24)]).toEqual([0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x1f, 0]);
    expect(r.bytes[24]).toBe(0xfe);
    expect(m.readU16(0x100)).toBe(0x1234);
    expect(m.readU32(0x108)).toBe(0x89abcdef);
    expect(m.readU64(0x110)).toBe(0x1f_2233_4455_6677);
    expect(m.readU8(0x118)).toBe(0xfe);
    expect(m.readBigU64(0x110)).toBe(0x1f_2233_4455_6677n);
    // Unaligned addresses are fine for the checked accessors.
    m.writeU32(0x121, 0x01020304);
    expect(m.readU32(0x121)).toBe(0x01020304);
    expect(m.readU16(0x122)).toBe(0x0203);
  });

  it('reads u64 values from 2^53 on as U64_UNSAFE, and bigint reads them exactly', () => {
    const m = mem([0, 32]);
    m.writeU64(0, 2 ** 53 - 1);
    expect(m.readU64(0)).toBe(2 ** 53 - 1);
    m.writeBigU64(0, 2n ** 53n);
    expect(m.readU64(0)).toBe(U64_UNSAFE);
    m.writeBigU64(8, 2n ** 64n - 1n);
    expect(m.readU64(8)).toBe(U64_UNSAFE);
    expect(m.readBigU64(8)).toBe(2n ** 64n - 1n);
    // writeBigU64 keeps the low 64 bits, as a u64 store does.
    m.writeBigU64(16, -1n);
    expect(m.readBigU64(16)).toBe(2n ** 64n - 1n);
    m.writeBigU64(16, 2n ** 64n + 5n);
    expect(m.readBigU64(16)).toBe(5n);
    // U64_UNSAFE is outside every region, so it fails any bounds check.
    expect(m.isValidRange(U64_UNSAFE, 1)).toBe(false);
  });

  it('refuses a u64 number that is not a non-negative safe integer, writing nothing', () => {
    const m = mem([0, 16]);
    for (const v of [2 ** 53, -1, 1.5, Number.NaN, Number.POSITIVE_INFINITY]) {
      expect(() => m.writeU64(0, v)).toThrow(RangeError);
    }
    expect(contents(m).every((b) => b === 0)).toBe(true);
    expect(m.dirtyPages()).toEqual([]);
  });

  it('checks every access against its region, up to the last byte', () => {
    const m = mem([0x1000, 16], [0x1010, 16]);
    m.readU64(0x1008);
    m.readU64(0x1018);
    m.readU8(0x101f);
    // Each of these needs bytes past the end of a region, or outside memory.
    expectOutOfBounds(() => m.readU8(0x1020), 0x1020, 1);
    expectOutOfBounds(() => m.readU16(0x101f), 0x101f, 2);
    expectOutOfBounds(() => m.readU32(0x101d), 0x101d, 4);
    expectOutOfBounds(() => m.readU64(0x1019), 0x1019, 8);
    expectOutOfBounds(() => m.readU8(0xfff), 0xfff, 1);
    // A scalar never spans two regions, even contiguous ones.
    expectOutOfBounds(() => m.readU32(0x100e), 0x100e, 4);
    expectOutOfBounds(() => m.writeU64(0x100c, 1), 0x100c, 8);
    expectOutOfBounds(() => m.readU16(Number.NaN));
    expectOutOfBounds(() => m.readU16(-2));
    expectOutOfBounds(() => m.readU16(4096.5));
    expect(contents(m).every((b) => b === 0)).toBe(true);
    expect(m.dirtyPages()).toEqual([]);
  });
});

describe('GuestMemory: byte ranges', () => {
  // Three contiguous regions, then a gap, then one more.
  const layout = (): GuestMemory => mem([0, 16], [16, 8], [24, 40], [128, 32]);
  const bytes = (n: number, first = 1) =>
    Uint8Array.from({ length: n }, (_, i) => (first + i) & 0xff);

  it('copies across contiguous regions in both directions', () => {
    const m = layout();
    const src = bytes(50);
    m.write(4, src);
    const dst = new Uint8Array(50);
    m.read(4, dst);
    expect(dst).toEqual(src);
    expect(m.regions[0]!.bytes[4]).toBe(1);
    expect(m.regions[1]!.bytes[0]).toBe(13);
    expect(m.regions[2]!.bytes[0]).toBe(21);
    m.fill(10, 20, 0xaa);
    const after = new Uint8Array(64);
    m.read(0, after);
    for (let i = 0; i < 64; i++) {
      const want = i >= 10 && i < 30 ? 0xaa : i >= 4 && i < 54 ? i - 3 : 0;
      expect(after[i]).toBe(want);
    }
  });

  it('refuses a range with a gap in it before copying anything', () => {
    const m = layout();
    m.write(0, bytes(64, 7));
    const before = contents(m);
    const dst = new Uint8Array(80).fill(0xee);
    expectOutOfBounds(() => m.read(60, dst), 60, 80);
    expect(dst.every((b) => b === 0xee)).toBe(true);
    m.clearDirty();
    expectOutOfBounds(() => m.write(60, bytes(80)), 60, 80);
    expectOutOfBounds(() => m.fill(0, 129, 0xff));
    expect(contents(m)).toEqual(before);
    expect(m.dirtyPages()).toEqual([]);
    // Ranges running past the last region, or starting before the first, fail the same way.
    expectOutOfBounds(() => m.read(150, new Uint8Array(11)));
    const low = mem([8, 8]);
    expectOutOfBounds(() => low.write(4, bytes(8)));
    expect(contents(low).every((b) => b === 0)).toBe(true);
  });

  it('allows zero-length ranges inside a region or at its end, nowhere else', () => {
    const m = layout();
    m.read(0, new Uint8Array(0));
    m.read(64, new Uint8Array(0));
    m.write(160, new Uint8Array(0));
    expect(m.slice(160, 0)).toHaveLength(0);
    expect(m.pieces(64, 0)).toEqual([]);
    expectOutOfBounds(() => m.read(100, new Uint8Array(0)));
    expectOutOfBounds(() => m.write(161, new Uint8Array(0)));
    expectOutOfBounds(() => m.pieces(100, 0));
    expect(m.covers(64, 0)).toBe(true);
    expect(m.covers(100, 0)).toBe(false);
    expect(m.dirtyPages()).toEqual([]);
  });

  it('covers() and isValidRange() tell contiguous memory from a single region', () => {
    const m = layout();
    expect(m.covers(0, 64)).toBe(true);
    expect(m.isValidRange(0, 64)).toBe(false);
    expect(m.isValidRange(24, 40)).toBe(true);
    expect(m.covers(0, 65)).toBe(false);
    expect(m.covers(60, 80)).toBe(false);
    expect(m.covers(128, 32)).toBe(true);
    expect(m.covers(127, 2)).toBe(false);
    for (const [a, n] of [
      [Number.NaN, 1],
      [0, Number.NaN],
      [0, -1],
      [-1, 2],
      [0.5, 1],
      [0, 2 ** 53],
    ] as const) {
      expect(m.covers(a, n)).toBe(false);
      expect(m.isValidRange(a, n)).toBe(false);
    }
  });

  it('pieces() splits a range at region boundaries', () => {
    const m = layout();
    const ps = m.pieces(10, 40).map((p) => [p.region.base, p.addr, p.len]);
    expect(ps).toEqual([
      [0, 10, 6],
      [16, 16, 8],
      [24, 24, 26],
    ]);
    expect(m.pieces(130, 4).map((p) => [p.addr, p.len])).toEqual([[130, 4]]);
    expectOutOfBounds(() => m.pieces(10, 200));
    expectOutOfBounds(() => m.pieces(10, -1));
    expectOutOfBounds(() => m.pieces(10, 1.5));
    let calls = 0;
    expectOutOfBounds(() => m.forEachPiece(60, 80, () => calls++));
    expect(calls).toBe(0);
  });

  it('slice() is a live view of one region; writableSlice() also marks it dirty', () => {
    const m = mem([0x2000, 0x2000]);
    const v = m.slice(0x2ffc, 8);
    v.set([1, 2, 3, 4, 5, 6, 7, 8]);
    expect(m.readU32(0x2ffc)).toBe(0x04030201);
    expect(m.dirtyPages()).toEqual([]);
    const w = m.writableSlice(0x2ffc, 8);
    expect(w[4]).toBe(5);
    expect(m.dirtyPages()).toEqual([2, 3]);
    m.writeU8(0x3000, 0x99);
    expect(w[4]).toBe(0x99);
    expectOutOfBounds(() => m.slice(0x3ffc, 8), 0x3ffc, 8);
    // A slice is one region, even where regions are contiguous.
    const two = mem([0, 8], [8, 8]);
    expectOutOfBounds(() => two.slice(4, 8));
    expectOutOfBounds(() => two.writableSlice(4, 8));
    expect(two.dirtyPages()).toEqual([]);
  });
});

describe('GuestMemory: dirty pages', () => {
  it('numbers pages by guest-physical address, also for a region not on a page boundary', () => {
    const m = mem([0x1ff8, 0x2010]);
    const r = m.regions[0]!;
    expect(r.firstPage).toBe(1);
    expect(r.pageCount).toBe(4);
    m.readU64(0x1ff8);
    expect(m.dirtyPages()).toEqual([]);
    // Eight bytes straddling the boundary between guest pages 1 and 2.
    m.writeU64(0x1ffc, 1);
    expect(m.dirtyPages()).toEqual([1, 2]);
    expect(m.isPageDirty(0x2000)).toBe(true);
    expect(m.isPageDirty(0x3000)).toBe(false);
    expect(m.isPageDirty(0x1ff8)).toBe(true);
    const [bitmap, ...rest] = m.takeDirtyBitmaps();
    expect(rest).toEqual([]);
    expect(bitmap!.firstPage).toBe(1);
    expect(bitmap!.pages).toBe(4);
    expect([...bitmap!.bits]).toEqual([0b11]);
    // Taking clears.
    expect(m.dirtyPages()).toEqual([]);
    expect([...m.takeDirtyBitmaps()[0]!.bits]).toEqual([0]);
  });

  it('marks every page a write touches, with one bitmap per region', () => {
    const m = mem([0, 64 * PAGE], [100 * PAGE, PAGE]);
    m.writeU8(40 * PAGE + 5, 1);
    m.write(2 * PAGE - 1, new Uint8Array(PAGE + 2));
    m.fill(100 * PAGE, 1);
    m.markDirty(10 * PAGE, 1);
    expect(m.dirtyPages()).toEqual([1, 2, 3, 10, 40, 100]);
    const [a, b] = m.takeDirtyBitmaps();
    expect(a!.firstPage).toBe(0);
    expect(a!.pages).toBe(64);
    expect([...a!.bits]).toEqual([(1 << 1) | (1 << 2) | (1 << 3) | (1 << 10), 1 << 8]);
    expect(b!.firstPage).toBe(100);
    expect([...b!.bits]).toEqual([1]);
    m.writeU16(PAGE, 1);
    m.clearDirty();
    expect(m.dirtyPages()).toEqual([]);
  });

  it('reports a page shared by two regions once, dirty from either side', () => {
    const m = mem([0, 16], [16, 16]);
    m.writeU8(20, 1);
    expect(m.dirtyPages()).toEqual([0]);
    expect(m.isPageDirty(0)).toBe(true);
    m.writeU8(0, 1);
    expect(m.dirtyPages()).toEqual([0]);
  });
});

describe('GuestMemory: dirty tracking on request', () => {
  it('is off by default: writes, chains and views mark nothing until it is switched on', () => {
    const m = new GuestMemory([{ base: 0, length: 8 * PAGE, buffer: new ArrayBuffer(8 * PAGE) }]);
    expect(m.dirtyTracking).toBe(false);
    m.writeU32(PAGE, 1);
    m.write(2 * PAGE, new Uint8Array(PAGE));
    m.fill(5 * PAGE, 8);
    m.writableSlice(6 * PAGE, 8);
    m.markDirty(7 * PAGE, 1);
    expect(m.dirtyPages()).toEqual([]);
    m.setDirtyTracking(true);
    expect(m.dirtyTracking).toBe(true);
    m.writeU8(3 * PAGE, 1);
    expect(m.dirtyPages()).toEqual([3]);
    // Off again: what was recorded stays, nothing new is.
    m.setDirtyTracking(false);
    m.writeU8(4 * PAGE, 1);
    expect(m.dirtyPages()).toEqual([3]);
    expect(GuestMemory.create(PAGE, { trackDirty: true }).dirtyTracking).toBe(true);
  });

  it('used ring updates are marked before the used index that publishes them, only when on', () => {
    for (const on of [false, true]) {
      const m = GuestMemory.create(0x10000, { trackDirty: on });
      const ring = new RawSplitRing(m, 0x1000, 8);
      const q = ring.createQueue();
      ring.setDesc(0, 0x8000, 64, VIRTQ_DESC_F_WRITE, 0);
      ring.setAvailRing(0, 0);
      ring.setAvailIdx(1);
      const c = q.pop(new DescriptorChain());
      expect(c).not.toBeNull();
      m.clearDirty();
      c!.slice(0).fill(1); // a device-writable view: the device marks it when it writes
      q.addUsed(c!.head, 64);
      q.advanceUsedRingIdx();
      const used = Math.floor(ring.usedStart() / PAGE);
      // The buffer's page (8) and the used ring's.
      expect(m.dirtyPages()).toEqual(on ? [used, 8] : []);
    }
  });

  it('switched on while queues run: their next used entries are marked (split and packed)', () => {
    const m = GuestMemory.create(0x10000);
    const split = new RawSplitRing(m, 0x1000, 8);
    const sq = split.createQueue();
    const packed = new RawPackedRing(m, 0x4000, 8);
    const pq = packed.createQueue();
    split.setDesc(0, 0x8000, 64, 0, 0);
    split.setDesc(1, 0x8000, 64, 0, 0);
    split.setAvailRing(0, 0);
    split.setAvailRing(1, 1);
    split.setAvailIdx(2);
    packed.setAvail(0, 0x9000, 64, 5, 0, true);
    packed.setAvail(1, 0x9000, 64, 6, 0, true);
    const chain = new DescriptorChain();
    // Off: a used entry of each marks nothing.
    sq.addUsed(sq.pop(chain)!.head, 0);
    pq.addUsed(pq.pop(chain)!.head, 0);
    expect(m.dirtyPages()).toEqual([]);
    // On, with the queues as they are: the next used entry of each marks its ring's page.
    m.setDirtyTracking(true);
    sq.addUsed(sq.pop(chain)!.head, 0);
    pq.addUsed(pq.pop(chain)!.head, 0);
    expect(m.dirtyPages()).toEqual([
      Math.floor(split.usedStart() / PAGE),
      Math.floor(packed.descStart() / PAGE),
    ]);
  });

  it('threads that share the memory share the switch', () => {
    const m = new GuestMemory([{ base: 0, length: PAGE, buffer: new SharedArrayBuffer(PAGE) }]);
    const other = GuestMemory.fromShared(structuredClone(m.toShared()));
    other.writeU8(0, 1);
    expect(m.dirtyPages()).toEqual([]);
    m.setDirtyTracking(true);
    expect(other.dirtyTracking).toBe(true);
    other.writeU8(0, 1);
    expect(m.dirtyPages()).toEqual([0]);
  });
});

describe('GuestMemory: sharing between threads', () => {
  it('rebuilds the same memory, dirty bitmap included, from a structured clone', () => {
    const m = trackedMemory([
      { base: 0, length: 2 * PAGE, buffer: new SharedArrayBuffer(2 * PAGE) },
      { base: 4 * PAGE, length: 64, buffer: new SharedArrayBuffer(128), offset: 32 },
    ]);
    const handle = structuredClone(m.toShared());
    const other = GuestMemory.fromShared(handle);
    expect(other.regions.map((r) => [r.base, r.length, r.offset])).toEqual([
      [0, 2 * PAGE, 0],
      [4 * PAGE, 64, 32],
    ]);
    other.writeU32(PAGE + 4, 0xdeadbeef);
    expect(m.readU32(PAGE + 4)).toBe(0xdeadbeef);
    m.writeU16(4 * PAGE + 62, 0xbeef);
    expect(other.readU16(4 * PAGE + 62)).toBe(0xbeef);
    expect(m.dirtyPages()).toEqual([1, 4]);
    expect(other.dirtyPages()).toEqual([1, 4]);
    other.takeDirtyBitmaps();
    expect(m.dirtyPages()).toEqual([]);
  });

  it('refuses to share memory backed by a plain ArrayBuffer', () => {
    const m = trackedMemory([
      { base: 0, length: 8, buffer: new SharedArrayBuffer(8) },
      { base: 8, length: 8, buffer: new ArrayBuffer(8) },
    ]);
    expect(() => m.toShared()).toThrow(TypeError);
  });
});

// ---- random layouts, random accesses ----

interface LayoutSpec {
  /** Extra bytes between the previous region's 8-aligned end and this base (multiple of 8). */
  gap: number;
  length: number;
  /** Guard bytes before and after the region inside its buffer. */
  offset: number;
  tail: number;
}

type Access =
  | { kind: 'readU8' | 'readU16' | 'readU32' | 'readU64'; addr: number }
  | { kind: 'slice' | 'writableSlice'; addr: number; len: number }
  | { kind: 'writeU8' | 'writeU16' | 'writeU32' | 'writeU64'; addr: number; value: number }
  | { kind: 'read' | 'covers' | 'isValidRange' | 'pieces'; addr: number; len: number }
  | { kind: 'write'; addr: number; data: Uint8Array }
  | { kind: 'fill'; addr: number; len: number; value: number };

const GUARD = 0xa5;
/** Where the random layouts start: just below a page boundary, so accesses cross it. */
const START = PAGE - 256;
const WIDTH = { U8: 1, U16: 2, U32: 4, U64: 8 } as const;

describe('GuestMemory: random accesses over random layouts', () => {
  const layoutArb: fc.Arbitrary<LayoutSpec[]> = fc.array(
    fc.record({
      gap: fc.oneof(
        fc.constant(0),
        fc.integer({ min: 1, max: 8 }).map((k) => 8 * k),
      ),
      length: fc.integer({ min: 1, max: 80 }),
      offset: fc.integer({ min: 0, max: 2 }).map((k) => 8 * k),
      tail: fc.integer({ min: 0, max: 9 }),
    }),
    { minLength: 1, maxLength: 6 },
  );

  function accessArb(end: number): fc.Arbitrary<Access> {
    const addr = fc.oneof(
      { arbitrary: fc.integer({ min: START - 16, max: end + 16 }), weight: 9 },
      { arbitrary: fc.integer({ min: 0, max: end + 16 }), weight: 1 },
    );
    const len = fc.oneof(fc.integer({ min: 0, max: 24 }), fc.integer({ min: 0, max: end + 8 }));
    const width = fc.constantFrom('U8', 'U16', 'U32', 'U64');
    return fc.oneof(
      fc.record({ kind: width.map((w) => `read${w}` as const), addr }),
      fc.record({
        kind: width.map((w) => `write${w}` as const),
        addr,
        value: fc.maxSafeNat(),
      }),
      fc.record({ kind: fc.constantFrom('slice', 'writableSlice'), addr, len }),
      fc.record({ kind: fc.constantFrom('read', 'covers', 'isValidRange', 'pieces'), addr, len }),
      fc.record({ kind: fc.constant('write'), addr, data: fc.uint8Array({ maxLength: 40 }) }),
      fc.record({ kind: fc.constant('fill'), addr, len, value: fc.nat(255) }),
    ) as fc.Arbitrary<Access>;
  }

  it('an access succeeds iff it lies in memory, and touches only its own bytes', () => {
    const scenario = layoutArb.chain((layout) => {
      let end = START;
      for (const l of layout) end = Math.ceil(end / 8) * 8 + l.gap + l.length;
      return fc.tuple(fc.constant(layout), fc.array(accessArb(end), { maxLength: 30 }));
    });
    fc.assert(
      fc.property(scenario, ([layout, accesses]) => {
        // Build the regions, each inside a buffer with guard bytes around it.
        const specs: RegionSpec[] = [];
        let at = START;
        for (const l of layout) {
          const base = Math.ceil(at / 8) * 8 + l.gap;
          const buffer = new ArrayBuffer(l.offset + l.length + l.tail);
          new Uint8Array(buffer).fill(GUARD);
          specs.push({ base, length: l.length, buffer, offset: l.offset });
          at = base + l.length;
        }
        const memory = trackedMemory(specs);
        // The model: which addresses exist, which region each is in, and what each holds.
        const size = at + 64;
        const regionOf = new Int32Array(size).fill(-1);
        specs.forEach((s, i) => {
          regionOf.fill(i, s.base, s.base + s.length);
        });
        const model = new Uint8Array(size);
        for (const s of specs) model.fill(GUARD, s.base, s.base + s.length);
        const dirty = new Set<number>();

        const present = (a: number) => a >= 0 && a < size && regionOf[a]! >= 0;
        /** Every byte of [a, a + n) in memory (regions may be contiguous). */
        const coversModel = (a: number, n: number) => {
          if (n === 0) return present(a) || present(a - 1);
          for (let k = a; k < a + n; k++) if (!present(k)) return false;
          return true;
        };
        /** [a, a + n) inside a single region. */
        const oneRegion = (a: number, n: number) => {
          // A zero-length range may also sit at the end of a region.
          let r = present(a) ? regionOf[a]! : -1;
          if (r < 0 && n === 0 && present(a - 1)) r = regionOf[a - 1]!;
          if (r < 0) return false;
          for (let k = a; k < a + n; k++) if (regionOf[k] !== r) return false;
          return true;
        };
        const le = (a: number, n: number) => {
          let v = 0;
          for (let k = n - 1; k >= 0; k--) v = v * 256 + model[a + k]!;
          return v;
        };
        const markModel = (a: number, n: number) => {
          for (let k = a; k < a + n; k++) dirty.add(Math.floor(k / PAGE));
        };

        for (const acc of accesses) {
          let expectOk: boolean;
          let run: () => void;
          let apply = () => {};
          switch (acc.kind) {
            case 'readU8':
            case 'readU16':
            case 'readU32':
            case 'readU64': {
              const n = WIDTH[acc.kind.slice(4) as keyof typeof WIDTH];
              expectOk = oneRegion(acc.addr, n);
              run = () => {
                const got = memory[acc.kind](acc.addr);
                const want = le(acc.addr, n);
                expect(got).toBe(want >= 2 ** 53 ? U64_UNSAFE : want);
              };
              break;
            }
            case 'writeU8':
            case 'writeU16':
            case 'writeU32':
            case 'writeU64': {
              const n = WIDTH[acc.kind.slice(5) as keyof typeof WIDTH];
              const value = n === 8 ? acc.value : acc.value % 2 ** (8 * n);
              expectOk = oneRegion(acc.addr, n);
              run = () => memory[acc.kind](acc.addr, value);
              apply = () => {
                let v = value;
                for (let k = 0; k < n; k++) {
                  model[acc.addr + k] = v % 256;
                  v = Math.floor(v / 256);
                }
                markModel(acc.addr, n);
              };
              break;
            }
            case 'slice':
            case 'writableSlice':
              expectOk = oneRegion(acc.addr, acc.len);
              run = () => {
                const v = memory[acc.kind](acc.addr, acc.len);
                expect([...v]).toEqual([...model.subarray(acc.addr, acc.addr + acc.len)]);
              };
              if (acc.kind === 'writableSlice') apply = () => markModel(acc.addr, acc.len);
              break;
            case 'covers':
              expectOk = true;
              run = () =>
                expect(memory.covers(acc.addr, acc.len)).toBe(coversModel(acc.addr, acc.len));
              break;
            case 'isValidRange':
              expectOk = true;
              run = () =>
                expect(memory.isValidRange(acc.addr, acc.len)).toBe(oneRegion(acc.addr, acc.len));
              break;
            case 'pieces':
              expectOk = coversModel(acc.addr, acc.len);
              run = () => {
                const ps = memory.pieces(acc.addr, acc.len);
                // Pieces tile the range in order, each inside its region.
                let a = acc.addr;
                for (const p of ps) {
                  expect(p.addr).toBe(a);
                  expect(p.len).toBeGreaterThan(0);
                  expect(p.addr >= p.region.base && p.addr + p.len <= p.region.end).toBe(true);
                  a += p.len;
                }
                expect(a).toBe(acc.addr + acc.len);
              };
              break;
            case 'read':
              expectOk = coversModel(acc.addr, acc.len);
              run = () => {
                const dst = new Uint8Array(acc.len);
                memory.read(acc.addr, dst);
                expect([...dst]).toEqual([...model.subarray(acc.addr, acc.addr + acc.len)]);
              };
              break;
            case 'write':
              expectOk = coversModel(acc.addr, acc.data.length);
              run = () => memory.write(acc.addr, acc.data);
              apply = () => {
                model.set(acc.data, acc.addr);
                markModel(acc.addr, acc.data.length);
              };
              break;
            case 'fill':
              expectOk = coversModel(acc.addr, acc.len);
              run = () => memory.fill(acc.addr, acc.len, acc.value);
              apply = () => {
                model.fill(acc.value, acc.addr, acc.addr + acc.len);
                markModel(acc.addr, acc.len);
              };
              break;
          }
          let error: unknown = null;
          try {
            run();
          } catch (e) {
            error = e;
          }
          if (expectOk) {
            expect(error).toBeNull();
            apply();
          } else {
            expect(error, `${acc.kind} @${acc.addr}`).toBeInstanceOf(GuestMemoryError);
          }
          // Every region holds what the model says, and every guard byte is intact.
          specs.forEach((s, i) => {
            const all = new Uint8Array(s.buffer);
            const off = s.offset ?? 0;
            expect([...all.subarray(off, off + s.length)]).toEqual([
              ...model.subarray(s.base, s.base + s.length),
            ]);
            expect(all.subarray(0, off).every((b) => b === GUARD)).toBe(true);
            expect(all.subarray(off + s.length).every((b) => b === GUARD)).toBe(true);
            expect(memory.regions[i]!.base).toBe(s.base);
          });
          expect(memory.dirtyPages()).toEqual([...dirty].sort((x, y) => x - y));
        }
      }),
      { numRuns: 300 },
    );
  });

  it('keeps GuestRegion views inside the region even with an offset', () => {
    const buffer = new ArrayBuffer(48);
    const r = new GuestRegion({ base: 64, length: 16, buffer, offset: 16 });
    expect(r.bytes.byteOffset).toBe(16);
    expect(r.bytes.length).toBe(16);
    expect(r.view.byteOffset).toBe(16);
    expect(r.view.byteLength).toBe(16);
    expect(r.contains(64)).toBe(true);
    expect(r.contains(80)).toBe(false);
  });
});
