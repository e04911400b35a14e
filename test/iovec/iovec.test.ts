import { beforeEach, describe, expect, it } from 'vitest';
import {
  ChainReader,
  ChainWriter,
  DescriptorError,
  GuestMemory,
  IovecError,
  isVirtqError,
  U64_UNSAFE,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
} from '../../src/index.js';
import { concatBuffers, contiguousMemory, Env, fillPattern, guestBytes } from './env.js';

/** Data regions: [0x4000, 0x5000), [0x5000, 0x6000), [0x6000, 0x7000), each its own buffer. */
const R1 = 0x5000;
const R2 = 0x6000;

/** Little-endian value of flat[off, off + n) as a bigint. */
function le(flat: Uint8Array, off: number, n: number): bigint {
  let v = 0n;
  for (let i = n - 1; i >= 0; i--) v = (v << 8n) | BigInt(flat[off + i]!);
  return v;
}

/** A full copy of every region's bytes, in region order. */
function snapshot(memory: GuestMemory): Uint8Array[] {
  return memory.regions.map((r) => r.bytes.slice());
}

/** Asserts two snapshots are byte-identical (fast: vitest's deep equality is slow on 16 KiB). */
function expectSame(a: Uint8Array[], b: Uint8Array[]): void {
  expect(a.length).toBe(b.length);
  for (let i = 0; i < a.length; i++) {
    const x = a[i]!;
    const y = b[i]!;
    const same = x.length === y.length && Buffer.compare(x, y) === 0;
    if (!same) expect(x).toEqual(y); // for the diff
    expect(same).toBe(true);
  }
}

function expectShort(f: () => unknown, requested?: number, available?: number): IovecError {
  let caught: unknown;
  try {
    f();
  } catch (e) {
    caught = e;
  }
  expect(caught).toBeInstanceOf(IovecError);
  const e = caught as IovecError;
  expect(isVirtqError(e, 'IOVEC_SHORT')).toBe(true);
  if (requested !== undefined) expect(e.requested).toBe(requested);
  if (available !== undefined) expect(e.available).toBe(available);
  return e;
}

let memory: GuestMemory;
let env: Env;

beforeEach(() => {
  memory = contiguousMemory([0x1000, 0x1000, 0x1000]);
  fillPattern(memory);
  env = new Env(memory);
  memory.clearDirty();
});

describe('ChainReader', () => {
  it('reads the readable part across descriptors and stops before the writable part', () => {
    const readable = [
      { addr: 0x4000, len: 10 },
      { addr: 0x4100, len: 20 },
      { addr: 0x4200, len: 5 },
    ];
    const chain = env.pop(readable, [{ addr: 0x4300, len: 16 }]);
    const r = new ChainReader(chain);
    expect(r.remaining).toBe(35);
    expect(r.bytesRead).toBe(0);
    const dst = new Uint8Array(50).fill(0xee);
    expect(r.read(dst)).toBe(35);
    expect(dst.subarray(0, 35)).toEqual(concatBuffers(memory, readable));
    expect(dst.subarray(35).every((b) => b === 0xee)).toBe(true);
    expect(r.remaining).toBe(0);
    expect(r.bytesRead).toBe(35);
    expect(r.read(dst)).toBe(0);
    expect(memory.dirtyPages()).toEqual([]);
  });

  it('serves a buffer that spans two regions as two pieces', () => {
    const buf = { addr: R1 - 0x13, len: 0x40 };
    const chain = env.pop([buf]);
    expect(chain.regions[0]).toBeNull();
    const r = new ChainReader(chain);
    const dst = new Uint8Array(0x40);
    r.readExact(dst);
    expect(dst).toEqual(guestBytes(memory, buf.addr, buf.len));
    // A u64 that straddles the region boundary.
    const flat = concatBuffers(memory, [buf]);
    for (let off = 0x13 - 7; off <= 0x13; off++) {
      r.reset(chain).skipExact(off);
      expect(r.readBigU64()).toBe(le(flat, off, 8));
      r.reset(chain).skipExact(off);
      expect(r.readU32()).toBe(Number(le(flat, off, 4)));
    }
  });

  it('reads one buffer spanning three regions', () => {
    const buf = { addr: R1 - 8, len: 0x1000 + 16 };
    const chain = env.pop([buf]);
    const r = new ChainReader(chain);
    const dst = new Uint8Array(buf.len);
    expect(r.read(dst)).toBe(buf.len);
    expect(dst).toEqual(guestBytes(memory, buf.addr, buf.len));
  });

  it('serves descriptors that continue each other as one piece, never across regions', () => {
    // 0x4ff0..0x5000 then 0x5000..0x5010 are adjacent in guest-physical space but in two
    // regions; the others are adjacent inside one region, with an empty descriptor between.
    const readable = [
      { addr: 0x4f00, len: 0xe0 },
      { addr: 0x4fe0, len: 0 },
      { addr: 0x4fe0, len: 0x10 },
      { addr: 0x4ff0, len: 0x10 },
      { addr: R1, len: 0x10 },
      { addr: R1 + 0x10, len: 5 },
      { addr: R1 + 0x100, len: 3 },
    ];
    const writable = [
      { addr: R2 - 6, len: 2 },
      { addr: R2 - 4, len: 4 },
      { addr: R2, len: 4 },
      { addr: R2 + 4, len: 4 },
    ];
    const chain = env.pop(readable, writable);
    const flat = concatBuffers(memory, readable);
    const r = new ChainReader(chain);
    const all = new Uint8Array(flat.length);
    expect(r.read(all)).toBe(flat.length);
    expect(all).toEqual(flat);
    // Integers across every joint, and splits inside the joined pieces.
    for (let off = 0; off + 8 <= flat.length; off++) {
      r.reset(chain).skipExact(off);
      expect(r.readBigU64()).toBe(le(flat, off, 8));
      const front = new ChainReader(chain);
      const back = front.split(off);
      expect(back.readU16()).toBe(Number(le(flat, off, 2)));
      expect(front.remaining).toBe(off);
    }
    const w = new ChainWriter(chain);
    w.writeBigU64(0x0102030405060708n);
    w.writeU32(0x11121314);
    w.writeU16(0x2122);
    expect(Array.from(concatBuffers(memory, writable))).toEqual([
      8, 7, 6, 5, 4, 3, 2, 1, 0x14, 0x13, 0x12, 0x11, 0x22, 0x21,
    ]);
    expect(memory.dirtyPages()).toEqual([5, 6]);
  });

  it('skips zero-length descriptors wherever they are', () => {
    const readable = [
      { addr: 0x4000, len: 0 },
      { addr: 0x4010, len: 3 },
      { addr: 0x4020, len: 0 },
      { addr: 0x4030, len: 0 },
      { addr: 0x4040, len: 2 },
      { addr: 0x4050, len: 0 },
    ];
    const chain = env.pop(readable, [{ addr: 0x4100, len: 0 }]);
    const flat = concatBuffers(memory, readable);
    const r = new ChainReader(chain);
    expect(r.remaining).toBe(5);
    for (let i = 0; i < 5; i++) expect(r.readU8()).toBe(flat[i]);
    expectShort(() => r.readU8(), 1, 0);
    r.reset(chain).skipExact(1);
    expect(r.readU32()).toBe(Number(le(flat, 1, 4)));
    const w = new ChainWriter(chain);
    expect(w.remaining).toBe(0);
    expect(w.write(new Uint8Array(4))).toBe(0);
  });

  it('is empty over nothing, over an all-empty chain and over a writable-only chain', () => {
    const empty = new ChainReader();
    expect(empty.remaining).toBe(0);
    expect(empty.read(new Uint8Array(8))).toBe(0);
    empty.readExact(new Uint8Array(0));
    expect(empty.skip(5)).toBe(0);
    expectShort(() => empty.readU16(), 2, 0);
    expectShort(() => empty.readExact(new Uint8Array(1)), 1, 0);
    expect(empty.split(0).remaining).toBe(0);

    const zeros = env.pop([{ addr: 0x4000, len: 0 }]);
    expect(new ChainReader(zeros).remaining).toBe(0);
    expect(new ChainWriter(zeros).remaining).toBe(0);

    const writableOnly = env.pop([], [{ addr: 0x4000, len: 16 }]);
    expect(writableOnly.writableStart).toBe(0);
    const r = new ChainReader(writableOnly);
    expect(r.remaining).toBe(0);
    expectShort(() => r.readU8());
    expect(new ChainWriter(writableOnly).remaining).toBe(16);
  });

  it('returns the count of a short read; a failed readExact consumes and copies nothing', () => {
    const readable = [
      { addr: 0x4000, len: 12 },
      { addr: R1 - 6, len: 18 },
    ];
    const flat = concatBuffers(memory, readable);
    const r = new ChainReader(env.pop(readable));
    const a = new Uint8Array(10);
    expect(r.read(a)).toBe(10);
    expect(a).toEqual(flat.subarray(0, 10));
    const big = new Uint8Array(25).fill(0xee);
    expectShort(() => r.readExact(big), 25, 20);
    expect(big.every((b) => b === 0xee)).toBe(true);
    expect(r.remaining).toBe(20);
    expect(r.bytesRead).toBe(10);
    expect(r.read(big)).toBe(20);
    expect(big.subarray(0, 20)).toEqual(flat.subarray(10));
    expect(big.subarray(20).every((b) => b === 0xee)).toBe(true);
  });

  it('reads into a given offset and length of the destination', () => {
    const readable = [
      { addr: 0x4000, len: 7 },
      { addr: 0x4800, len: 8 },
    ];
    const flat = concatBuffers(memory, readable);
    const chain = env.pop(readable);
    const r = new ChainReader(chain);
    const dst = new Uint8Array(40).fill(0xee);
    expect(r.read(dst, 5, 10)).toBe(10);
    expect(dst.subarray(5, 15)).toEqual(flat.subarray(0, 10));
    expect(dst.subarray(0, 5).every((b) => b === 0xee)).toBe(true);
    expect(dst.subarray(15).every((b) => b === 0xee)).toBe(true);
    expect(r.read(dst, 30, 10)).toBe(5);
    expect(dst.subarray(30, 35)).toEqual(flat.subarray(10));
    r.reset(chain);
    r.readExact(dst, 20, 15);
    expect(dst.subarray(20, 35)).toEqual(flat);
    // Host mistakes are RangeError, and consume nothing.
    r.reset(chain);
    expect(() => r.read(dst, 35, 10)).toThrow(RangeError);
    expect(() => r.read(dst, -1)).toThrow(RangeError);
    expect(() => r.read(dst, 0, 1.5)).toThrow(RangeError);
    expect(() => r.readExact(dst, 41, 0)).toThrow(RangeError);
    expect(r.remaining).toBe(15);
  });

  it('reads every integer width at every offset, inside pieces and straddling them', () => {
    const readable = [
      { addr: 0x4000, len: 3 },
      { addr: 0x4100, len: 5 },
      { addr: 0x4201, len: 1 },
      { addr: R1 - 5, len: 11 },
    ];
    const flat = concatBuffers(memory, readable);
    const chain = env.pop(readable);
    const r = new ChainReader();
    for (let off = 0; off < flat.length; off++) {
      const left = flat.length - off;
      const cases: [number, () => number | bigint][] = [
        [1, () => r.readU8()],
        [2, () => r.readU16()],
        [4, () => r.readU32()],
        [8, () => r.readU64()],
        [8, () => r.readBigU64()],
      ];
      for (const [n, read] of cases) {
        r.reset(chain).skipExact(off);
        if (n <= left) {
          const v = read();
          const want = le(flat, off, n);
          if (typeof v === 'number' && want >= 1n << 53n) expect(v).toBe(U64_UNSAFE);
          else expect(BigInt(v)).toBe(want);
          expect(r.remaining).toBe(left - n);
          expect(r.bytesRead).toBe(off + n);
        } else {
          expectShort(read, n, left);
          expect(r.remaining).toBe(left);
          expect(r.bytesRead).toBe(off);
        }
      }
    }
  });

  it('reads a u64 of 2^53 or more as U64_UNSAFE, and exactly as a bigint', () => {
    memory.writeBigU64(0x4000, (1n << 64n) - 1n);
    memory.writeBigU64(0x4008, (1n << 53n) - 1n);
    memory.writeBigU64(0x4010, 1n << 53n);
    const chain = env.pop([{ addr: 0x4000, len: 24 }]);
    const r = new ChainReader(chain);
    expect(r.readU64()).toBe(U64_UNSAFE);
    expect(r.readU64()).toBe(2 ** 53 - 1);
    expect(r.readU64()).toBe(U64_UNSAFE);
    r.reset(chain);
    expect(r.readBigU64()).toBe((1n << 64n) - 1n);
  });

  it('skips partially or exactly', () => {
    const readable = [
      { addr: 0x4000, len: 4 },
      { addr: 0x4010, len: 6 },
    ];
    const flat = concatBuffers(memory, readable);
    const chain = env.pop(readable);
    const r = new ChainReader(chain);
    expect(r.skip(5)).toBe(5);
    expect(r.readU8()).toBe(flat[5]);
    expectShort(() => r.skipExact(5), 5, 4);
    expect(r.remaining).toBe(4);
    expect(r.skip(100)).toBe(4);
    expect(r.bytesRead).toBe(10);
    expect(() => r.skip(-1)).toThrow(RangeError);
    expect(() => r.skipExact(Number.NaN)).toThrow(RangeError);
  });

  it('splits at an offset into two readers over the two halves', () => {
    const readable = [
      { addr: 0x4000, len: 10 },
      { addr: R1 - 4, len: 20 },
      { addr: 0x6100, len: 30 },
    ];
    const flat = concatBuffers(memory, readable);
    const chain = env.pop(readable);
    const front = new ChainReader(chain);
    front.skipExact(5);
    const back = front.split(20);
    expect(front.remaining).toBe(20);
    expect(back.remaining).toBe(35);
    expect(back.bytesRead).toBe(0);
    const a = new Uint8Array(100);
    expect(back.read(a)).toBe(35);
    expect(a.subarray(0, 35)).toEqual(flat.subarray(25));
    expect(front.read(a)).toBe(20);
    expect(a.subarray(0, 20)).toEqual(flat.subarray(5, 25));
    expect(front.bytesRead).toBe(25);

    // Splitting a split, into a reader the caller reuses.
    const reuse = new ChainReader();
    const f = new ChainReader(chain);
    const b = f.split(30);
    expect(b.split(10, reuse)).toBe(reuse);
    expect(b.remaining).toBe(10);
    expect(reuse.remaining).toBe(20);
    expect(reuse.readU8()).toBe(flat[40]);
    expect(b.readU8()).toBe(flat[30]);
    expect(f.readU8()).toBe(flat[0]);

    // At 0 and at the end.
    const g = new ChainReader(chain);
    const all = g.split(0);
    expect(g.remaining).toBe(0);
    expect(all.remaining).toBe(60);
    const none = all.split(60);
    expect(none.remaining).toBe(0);
    expect(all.remaining).toBe(60);

    // Beyond the end: IOVEC_SHORT, nothing changes.
    const h = new ChainReader(chain);
    h.skipExact(50);
    expectShort(() => h.split(11), 11, 10);
    expect(h.remaining).toBe(10);
    expect(h.readU8()).toBe(flat[50]);
    expect(() => h.split(1, h)).toThrow(RangeError);
    expect(() => h.split(-1)).toThrow(RangeError);
  });

  it('is reusable: reset moves it to another chain, or to nothing', () => {
    const r = new ChainReader();
    for (let i = 0; i < 5; i++) {
      const buf = { addr: 0x4000 + 0x100 * i, len: 8 + i };
      const chain = env.pop([buf]);
      expect(r.reset(chain).remaining).toBe(8 + i);
      const dst = new Uint8Array(8 + i);
      r.readExact(dst);
      expect(dst).toEqual(guestBytes(memory, buf.addr, buf.len));
    }
    expect(r.reset().remaining).toBe(0);
  });

  it('reads an indirect chain', () => {
    const readable = [
      { addr: 0x4000, len: 3 },
      { addr: R2 - 2, len: 9 },
    ];
    const chain = env.pop(readable, [{ addr: 0x4400, len: 4 }], true);
    const r = new ChainReader(chain);
    const dst = new Uint8Array(12);
    r.readExact(dst);
    expect(dst).toEqual(concatBuffers(memory, readable));
    expect(new ChainWriter(chain).remaining).toBe(4);
  });
});

describe('ChainWriter', () => {
  it('writes across descriptors and regions, exactly where the buffers are', () => {
    const writable = [
      { addr: R1 - 9, len: 16 },
      { addr: 0x5800, len: 4 },
      { addr: 0x5900, len: 0 },
      { addr: R2 - 1, len: 40 },
    ];
    const chain = env.pop([{ addr: 0x4000, len: 8 }], writable);
    const before = snapshot(memory);
    const w = new ChainWriter(chain);
    expect(w.remaining).toBe(60);
    const src = Uint8Array.from({ length: 70 }, (_, i) => 200 - i);
    expect(w.write(src)).toBe(60);
    expect(w.remaining).toBe(0);
    expect(w.bytesWritten).toBe(60);
    expect(concatBuffers(memory, writable)).toEqual(src.subarray(0, 60));
    // Nothing else changed.
    const expected = before.map((b) => b.slice());
    const regionsByBase = memory.regions;
    let at = 0;
    for (const buf of writable) {
      for (let i = 0; i < buf.len; i++) {
        const a = buf.addr + i;
        const ri = regionsByBase.findIndex((r) => a >= r.base && a < r.end);
        expected[ri]![a - regionsByBase[ri]!.base] = src[at++]!;
      }
    }
    expectSame(snapshot(memory), expected);
    expect(memory.dirtyPages()).toEqual([4, 5, 6]);
  });

  it('a failed writeExact writes nothing and marks nothing', () => {
    const chain = env.pop(
      [],
      [
        { addr: 0x4000, len: 5 },
        { addr: R1 - 2, len: 5 },
      ],
    );
    const before = snapshot(memory);
    const w = new ChainWriter(chain);
    expect(w.write(new Uint8Array(3).fill(1))).toBe(3);
    const mid = snapshot(memory);
    memory.clearDirty();
    expectShort(() => w.writeExact(new Uint8Array(8)), 8, 7);
    expectShort(() => w.writeU64(1), 8, 7);
    expectShort(() => w.writeBigU64(1n), 8, 7);
    expect(w.remaining).toBe(7);
    expect(w.bytesWritten).toBe(3);
    expectSame(snapshot(memory), mid);
    expect(memory.dirtyPages()).toEqual([]);
    expect(snapshot(memory)).not.toEqual(before);
    w.writeExact(new Uint8Array(7).fill(2));
    expect(concatBuffers(memory, [{ addr: 0x4000, len: 5 }])).toEqual(Uint8Array.of(1, 1, 1, 2, 2));
  });

  it('writes from a given offset and length of the source', () => {
    const writable = [
      { addr: 0x4000, len: 6 },
      { addr: 0x4100, len: 6 },
    ];
    const chain = env.pop([], writable);
    const src = Uint8Array.from({ length: 20 }, (_, i) => i + 1);
    const w = new ChainWriter(chain);
    expect(w.write(src, 4, 8)).toBe(8);
    expect(w.write(src, 15)).toBe(4);
    expect(concatBuffers(memory, writable)).toEqual(
      Uint8Array.of(5, 6, 7, 8, 9, 10, 11, 12, 16, 17, 18, 19),
    );
    w.reset(chain);
    expect(() => w.write(src, 10, 11)).toThrow(RangeError);
    expect(() => w.writeExact(src, -2)).toThrow(RangeError);
    expect(w.remaining).toBe(12);
  });

  it('writes every integer width at every offset, inside pieces and straddling them', () => {
    const writable = [
      { addr: 0x4000, len: 3 },
      { addr: 0x4100, len: 5 },
      { addr: 0x4201, len: 1 },
      { addr: R1 - 5, len: 11 },
    ];
    const chain = env.pop([], writable);
    const total = 20;
    const w = new ChainWriter();
    const value = 0x0807060504030201n;
    const cases: [number, () => void][] = [
      [1, () => w.writeU8(0x101)],
      [2, () => w.writeU16(0x10201)],
      [4, () => w.writeU32(0x04030201)],
      [8, () => w.writeU64(Number(value & ((1n << 53n) - 1n)))],
      [8, () => w.writeBigU64(value)],
    ];
    for (let off = 0; off < total; off++) {
      for (const [k, [n, write]] of cases.entries()) {
        const zero = new ChainWriter(chain);
        zero.fill(total, 0xee);
        const before = snapshot(memory);
        memory.clearDirty();
        w.reset(chain).skipExact(off);
        if (n <= total - off) {
          write();
          expect(w.bytesWritten).toBe(off + n);
          const flat = concatBuffers(memory, writable);
          const expected = new Uint8Array(total).fill(0xee);
          for (let i = 0; i < n; i++) expected[off + i] = i + 1;
          // writeU64 got the value cut to 53 bits: its top byte is 0.
          if (k === 3) expected[off + 7] = 0;
          expect(flat).toEqual(expected);
          expect(memory.dirtyPages().length).toBeGreaterThan(0);
        } else {
          expectShort(write, n, total - off);
          expect(w.remaining).toBe(total - off);
          expectSame(snapshot(memory), before);
          expect(memory.dirtyPages()).toEqual([]);
        }
      }
    }
  });

  it('truncates typed values to their width and rejects an unsafe u64 number', () => {
    const chain = env.pop([], [{ addr: 0x4000, len: 32 }]);
    const w = new ChainWriter(chain);
    w.writeU16(-1);
    w.writeU32(2 ** 32 + 5);
    w.writeBigU64(-1n);
    expect(() => w.writeU64(-1)).toThrow(RangeError);
    expect(() => w.writeU64(2 ** 53)).toThrow(RangeError);
    expect(() => w.writeU64(1.5)).toThrow(RangeError);
    w.writeU64(2 ** 53 - 1);
    expect(w.bytesWritten).toBe(22);
    const r = new ChainReader(env.pop([{ addr: 0x4000, len: 22 }]));
    expect(r.readU16()).toBe(0xffff);
    expect(r.readU32()).toBe(5);
    expect(r.readBigU64()).toBe((1n << 64n) - 1n);
    expect(r.readU64()).toBe(2 ** 53 - 1);
  });

  it('fills partially', () => {
    const writable = [
      { addr: 0x4000, len: 4 },
      { addr: R1 - 2, len: 4 },
    ];
    const chain = env.pop([], writable);
    const w = new ChainWriter(chain);
    expect(w.fill(3, 0xab)).toBe(3);
    expect(w.fill(100)).toBe(5);
    expect(concatBuffers(memory, writable)).toEqual(Uint8Array.of(0xab, 0xab, 0xab, 0, 0, 0, 0, 0));
    expect(() => w.fill(-1)).toThrow(RangeError);
  });

  it('counts written and skipped bytes as the used length the driver sees', () => {
    const writable = [
      { addr: 0x4000, len: 10 },
      { addr: 0x4100, len: 10 },
    ];
    const chain = env.pop([{ addr: 0x4400, len: 4 }], writable);
    const w = new ChainWriter(chain);
    w.writeU32(7);
    expect(w.skip(3)).toBe(3);
    w.writeExact(new Uint8Array(5));
    expect(w.bytesWritten).toBe(12);
    expect(env.complete(w.bytesWritten)).toBe(12);
  });

  it('marks dirty exactly the pages it writes; reading marks nothing', () => {
    const writable = [
      { addr: R1 - 2, len: 4 },
      { addr: R2 + 0x10, len: 1 },
    ];
    const chain = env.pop([{ addr: 0x4000, len: 64 }], writable);
    memory.clearDirty();
    new ChainReader(chain).read(new Uint8Array(64));
    expect(memory.dirtyPages()).toEqual([]);
    const w = new ChainWriter(chain);
    w.writeU8(1);
    expect(memory.dirtyPages()).toEqual([4]);
    w.writeU16(0x0202); // straddles regions: byte by byte
    expect(memory.dirtyPages()).toEqual([4, 5]);
    w.write(new Uint8Array(0));
    w.fill(0);
    expect(memory.dirtyPages()).toEqual([4, 5]);
    w.skip(1);
    w.writeU8(3);
    expect(memory.dirtyPages()).toEqual([4, 5, 6]);

    memory.clearDirty();
    w.reset(chain);
    w.fill(5, 9);
    expect(memory.dirtyPages()).toEqual([4, 5, 6]);
  });

  it('splits at an offset so a header can be written after the body', () => {
    const writable = [
      { addr: 0x4000, len: 6 },
      { addr: R1 - 3, len: 20 },
    ];
    const chain = env.pop([], writable);
    const header = new ChainWriter(chain);
    const body = header.split(10);
    expect(header.remaining).toBe(10);
    expect(body.remaining).toBe(16);
    body.writeExact(Uint8Array.from({ length: 12 }, (_, i) => 0x80 + i));
    header.writeU32(0x11223344);
    header.writeU16(0x5566);
    header.writeU32(12);
    expect(header.remaining).toBe(0);
    expectShort(() => header.writeU8(0), 1, 0);
    const flat = concatBuffers(memory, writable);
    expect(flat.subarray(0, 10)).toEqual(
      Uint8Array.of(0x44, 0x33, 0x22, 0x11, 0x66, 0x55, 12, 0, 0, 0),
    );
    expect(flat.subarray(10, 22)).toEqual(Uint8Array.from({ length: 12 }, (_, i) => 0x80 + i));
    expect(header.bytesWritten + body.bytesWritten).toBe(22);
    expectShort(() => body.split(5), 5, 4);
    const reuse = new ChainWriter();
    expect(body.split(4, reuse)).toBe(reuse);
    expect(reuse.remaining).toBe(0);
  });

  it('has nothing to write on a readable-only chain', () => {
    const w = new ChainWriter(env.pop([{ addr: 0x4000, len: 16 }]));
    expect(w.remaining).toBe(0);
    expect(w.write(new Uint8Array(4))).toBe(0);
    w.writeExact(new Uint8Array(0));
    expectShort(() => w.writeU8(0), 1, 0);
    expect(memory.dirtyPages()).toEqual([]);
  });
});

describe('copies between a reader and a writer', () => {
  it('copies piece to piece across descriptors and regions, small and large', () => {
    const readable = [
      { addr: 0x4000, len: 3 },
      { addr: R1 - 100, len: 300 },
      { addr: 0x5400, len: 50 },
    ];
    const writable = [
      { addr: R2 - 40, len: 80 },
      { addr: 0x6400, len: 7 },
      { addr: 0x6500, len: 400 },
    ];
    const chain = env.pop(readable, writable);
    const flat = concatBuffers(memory, readable);
    const r = new ChainReader(chain);
    const w = new ChainWriter(chain);
    expect(r.copyTo(w, 10)).toBe(10);
    expect(w.copyFrom(r)).toBe(343);
    expect(r.remaining).toBe(0);
    expect(w.remaining).toBe(487 - 353);
    expect(concatBuffers(memory, writable).subarray(0, 353)).toEqual(flat);
    expect(w.copyFrom(r)).toBe(0);
    expect(memory.dirtyPages()).toEqual([5, 6]);
  });

  it('copies inside one region as memmove even when the guest overlaps the buffers', () => {
    const chain = env.pop([{ addr: 0x4100, len: 64 }], [{ addr: 0x4120, len: 64 }]);
    const original = guestBytes(memory, 0x4100, 64);
    const w = new ChainWriter(chain);
    new ChainReader(chain).copyTo(w);
    expect(guestBytes(memory, 0x4120, 64)).toEqual(original);
    expect(w.bytesWritten).toBe(64);
  });

  it('copies as memmove between two regions over one shared buffer, overlapping and misaligned, over 64 KiB', () => {
    const sab = new SharedArrayBuffer(1 << 20);
    const aliased = new GuestMemory([
      { base: 0, length: 0x4000, buffer: new SharedArrayBuffer(0x4000) }, // the ring
      { base: 0x100000, length: 1 << 20, buffer: sab },
      { base: 0x200000, length: 1 << 20, buffer: sab }, // the same bytes at a second address
    ]);
    const n = 200_000;
    const from = 0x100000 + 1000;
    for (let i = 0; i < n; i++) aliased.writeU8(from + i, (i * 7 + 3) & 0xff);
    const original = guestBytes(aliased, from, n);
    // The destination's bytes are the source's bytes 5 on.
    const chain = new Env(aliased).pop(
      [{ addr: from, len: n }],
      [{ addr: 0x200000 + 1005, len: n }],
    );
    const w = new ChainWriter(chain);
    expect(new ChainReader(chain).copyTo(w)).toBe(n);
    expect(guestBytes(aliased, 0x200000 + 1005, n)).toEqual(original);
  });

  it('an exact copy that does not fit moves nothing on either side', () => {
    const chain = env.pop([{ addr: 0x4000, len: 10 }], [{ addr: 0x4100, len: 6 }]);
    const before = snapshot(memory);
    const r = new ChainReader(chain);
    const w = new ChainWriter(chain);
    expectShort(() => r.copyToExact(w, 8), 8, 6);
    expectShort(() => w.copyFromExact(r, 11), 11, 10);
    expect(r.remaining).toBe(10);
    expect(w.remaining).toBe(6);
    expectSame(snapshot(memory), before);
    w.copyFromExact(r, 6);
    expect(guestBytes(memory, 0x4100, 6)).toEqual(guestBytes(memory, 0x4000, 6));
    expect(() => r.copyTo(w, -1)).toThrow(RangeError);
  });

  it('works over SharedArrayBuffer-backed memory', () => {
    const shared = contiguousMemory([0x1000, 0x1000], { shared: true });
    fillPattern(shared, 7);
    const e = new Env(shared);
    const chain = e.pop([{ addr: R1 - 50, len: 100 }], [{ addr: 0x4000, len: 100 }]);
    const w = new ChainWriter(chain);
    expect(new ChainReader(chain).copyTo(w)).toBe(100);
    expect(guestBytes(shared, 0x4000, 100)).toEqual(guestBytes(shared, R1 - 50, 100));
  });
});

describe('chain validation happens at pop, before any reader or writer sees the chain', () => {
  it('DESC_WRITABLE_BEFORE_READABLE: the reader only ever sees validated descriptors', () => {
    const { raw, queue, chain } = env;
    raw.setDesc(0, 0x4000, 8, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1);
    raw.setDesc(1, 0x4100, 8, 0, 0);
    raw.setAvailRing(0, 0);
    raw.setAvailIdx(1);
    let caught: unknown;
    try {
      queue.pop(chain);
    } catch (e) {
      caught = e;
    }
    expect(caught).toBeInstanceOf(DescriptorError);
    expect((caught as DescriptorError).code).toBe('DESC_WRITABLE_BEFORE_READABLE');
    // A device that ignored the error would find nothing to read, and only the descriptor
    // that passed the checks to write.
    expect(new ChainReader(chain).remaining).toBe(0);
    expect(new ChainWriter(chain).remaining).toBe(8);
  });

  it('DESC_CHAIN_LENGTH_OVERFLOW: no reader ever covers more than 2^32 bytes', () => {
    const big = contiguousMemory([64 << 20]);
    const e = new Env(big, 128);
    for (let i = 0; i < 65; i++) {
      e.raw.setDesc(i, 0x4000, 64 << 20, i < 64 ? VIRTQ_DESC_F_NEXT : 0, i + 1);
    }
    e.raw.setAvailRing(0, 0);
    e.raw.setAvailIdx(1);
    let caught: unknown;
    try {
      e.queue.pop(e.chain);
    } catch (err) {
      caught = err;
    }
    expect(isVirtqError(caught, 'DESC_CHAIN_LENGTH_OVERFLOW')).toBe(true);
    const r = new ChainReader(e.chain);
    expect(r.remaining).toBe(2 ** 32);
  });

  it('DESC_BUFFER_OUT_OF_MEMORY: a buffer past the end or across a hole never reaches a reader', () => {
    // Rings in [0, 0x4000), a hole, then data in [0x8000, 0x9000).
    const holed = contiguousMemory([0x1000], { dataBase: 0x8000 });
    for (const bad of [
      { addr: 0x8ff0, len: 0x20 },
      { addr: 0x3ff0, len: 0x20 },
      { addr: 2 ** 52, len: 1 },
    ]) {
      const e = new Env(holed);
      let caught: unknown;
      try {
        e.pop([{ addr: 0x8000, len: 16 }, bad], [{ addr: 0x8100, len: 8 }]);
      } catch (err) {
        caught = err;
      }
      expect(isVirtqError(caught, 'DESC_BUFFER_OUT_OF_MEMORY')).toBe(true);
      const r = new ChainReader(e.chain);
      expect(r.remaining).toBe(16);
      expect(r.read(new Uint8Array(64))).toBe(16);
      expect(new ChainWriter(e.chain).remaining).toBe(0);
    }
  });
});
