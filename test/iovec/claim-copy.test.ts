/**
 * Direct access to a piece of a chain (`ChainReader.claim`, `ChainWriter.claim`) and the
 * allocation-free copy of the per-frame paths (`copyBytes`).
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  copyBytes,
  LARGE_COPY_BYTES,
  SourceCopier,
  spanOver,
  wordsOver,
} from '../../src/iovec/copy.js';
import { ChainReader, ChainWriter } from '../../src/iovec/index.js';
import { contiguousMemory, Env } from './env.js';

describe('copyBytes', () => {
  it('copies exactly the bytes asked, for every size around the thresholds, aligned or not, between shared and unshared memory', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: LARGE_COPY_BYTES * 3 }),
        fc.integer({ min: 0, max: 15 }),
        fc.integer({ min: 0, max: 15 }),
        fc.boolean(),
        fc.boolean(),
        fc.constantFrom(0, 8),
        (n, to, from, srcShared, dstShared, start) => {
          // Arrays from byte `start` of their buffer, and ending off a word (1021 bytes).
          const mk = (shared: boolean) =>
            new Uint8Array(
              shared ? new SharedArrayBuffer(1040) : new ArrayBuffer(1040),
              start,
              1021,
            );
          const src = mk(srcShared);
          const dst = mk(dstShared);
          for (let i = 0; i < src.length; i++) src[i] = (i * 7 + 3) & 0xff;
          dst.fill(0xee);
          copyBytes(spanOver(dst), to, spanOver(src), from, n);
          for (let i = 0; i < dst.length; i++) {
            const inside = i >= to && i < to + n;
            expect(dst[i]).toBe(inside ? src[from + i - to] : 0xee);
          }
        },
      ),
      { numRuns: 150 },
    );
  });

  it('keeps every bit pattern (no floating-point step that could change a NaN)', () => {
    const src = new Uint8Array(64);
    // Signalling and quiet NaNs, both signs, as float32 and float64 patterns.
    const v = new DataView(src.buffer);
    v.setUint32(0, 0x7f800001, true);
    v.setUint32(4, 0xffc00001, true);
    v.setBigUint64(8, 0x7ff0000000000001n, true);
    v.setBigUint64(16, 0xfff8000000000001n, true);
    for (let i = 24; i < 64; i++) src[i] = 0xff - i;
    const dst = new Uint8Array(64);
    const dstSpan = spanOver(dst);
    const srcSpan = spanOver(src);
    for (let k = 0; k < 10_000; k++) copyBytes(dstSpan, 0, srcSpan, 0, 64);
    expect(Array.from(dst)).toEqual(Array.from(src));
  });

  it('words start where their bytes start, and refuse a start off a word', () => {
    const buf = new ArrayBuffer(64);
    const w = wordsOver(new Uint8Array(buf, 8, 23));
    expect(w.byteOffset).toBe(8);
    expect(w.length).toBe(5);
    expect(() => wordsOver(new Uint8Array(buf, 2, 8))).toThrow(RangeError);
  });

  it("a span's view and words cover exactly its bytes, from the same first byte", () => {
    const buf = new SharedArrayBuffer(64);
    const bytes = new Uint8Array(buf, 8, 23);
    const s = spanOver(bytes);
    expect([s.view.byteOffset, s.view.byteLength]).toEqual([8, 23]);
    expect([s.words.byteOffset, s.words.length]).toEqual([8, 5]);
    expect(s.shared).toBe(true);
    expect(spanOver(new Uint8Array(8)).shared).toBe(false);
    s.view.setUint16(1, 0xbeef, true);
    expect([bytes[1], bytes[2]]).toEqual([0xef, 0xbe]);
    expect(() => spanOver(new Uint8Array(buf, 2, 8))).toThrow(RangeError);
  });
});

describe('SourceCopier', () => {
  /** Buffers that can change length; the constructor options are ES2024, newer than our lib. */
  const GrowableShared = SharedArrayBuffer as unknown as new (
    n: number,
    o: { maxByteLength: number },
  ) => SharedArrayBuffer & { grow(n: number): void };
  const Resizable = ArrayBuffer as unknown as new (
    n: number,
    o: { maxByteLength: number },
  ) => ArrayBuffer & { resize(n: number): void };

  function pattern(bytes: Uint8Array, seed: number): void {
    for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 7 + seed) & 0xff;
  }
  /** Copies `src[0, n)` through `copier` to a fresh array at an aligned offset; returns what landed. */
  function through(copier: SourceCopier, src: Uint8Array, n: number): number[] {
    const dst = new Uint8Array(256 + 8);
    copier.copy(spanOver(dst), 8, src, n);
    return Array.from(dst.subarray(8, 8 + n));
  }

  it('copies exactly from a growable SharedArrayBuffer after it grows, through new views and a length-tracking one', () => {
    const sab = new GrowableShared(64, { maxByteLength: 4096 });
    const copier = new SourceCopier();
    const early = new Uint8Array(sab, 0, 64);
    pattern(early, 1);
    expect(through(copier, early, 64)).toEqual(Array.from(early));
    sab.grow(1024);
    const late = new Uint8Array(sab, 512, 200);
    pattern(late, 2);
    // The words made when the buffer held 64 bytes must not be the ones read here.
    expect(through(copier, late, 200)).toEqual(Array.from(late));
    const tracking = new Uint8Array(sab);
    pattern(tracking, 3);
    expect(through(copier, tracking, 64)).toEqual(Array.from(tracking.subarray(0, 64)));
    sab.grow(2048);
    pattern(tracking, 4);
    expect(tracking.length).toBe(2048);
    expect(through(copier, tracking, 248)).toEqual(Array.from(tracking.subarray(0, 248)));
  });

  it('copies exactly from a resizable ArrayBuffer as it shrinks and grows again', () => {
    const ab = new Resizable(1024, { maxByteLength: 4096 });
    const copier = new SourceCopier();
    const whole = new Uint8Array(ab);
    pattern(whole, 5);
    expect(through(copier, whole, 200)).toEqual(Array.from(whole.subarray(0, 200)));
    ab.resize(100);
    pattern(whole, 6);
    expect(through(copier, whole, 100)).toEqual(Array.from(whole.subarray(0, 100)));
    ab.resize(3000);
    const far = new Uint8Array(ab, 2048, 248);
    pattern(far, 7);
    expect(through(copier, far, 248)).toEqual(Array.from(far));
  });
});

describe('claim', () => {
  it("a writer whose claim ends its piece marks the claimed page dirty, not the next piece's", () => {
    // Regions: [0,0x4000) rings, [0x4000,0x8000) A, [0x8000,0xc000) B.
    const memory = contiguousMemory([0x4000, 0x4000], { shared: true });
    memory.setDirtyTracking(true);
    const env = new Env(memory);
    const chain = env.pop(
      [],
      [
        { addr: 0x5000, len: 64 }, // page 5, region A
        { addr: 0x9000, len: 64 }, // page 9, region B
      ],
    );
    memory.clearDirty();
    const w = new ChainWriter(chain);
    const at = w.claim(64);
    expect(at).toBeGreaterThanOrEqual(0);
    expect(w.claimedRegion).toBe(memory.findRegion(0x5000));
    w.claimedRegion!.bytes.fill(0xab, at, at + 64);
    // The device wrote page 5 (and nothing else so far): the dirty log must show it.
    expect(memory.dirtyPages()).toEqual([5]);
  });

  it('a writer claims bytes that lie in one piece, marks their page dirty and counts them', () => {
    const memory = contiguousMemory([0x4000], { shared: true });
    memory.setDirtyTracking(true);
    const env = new Env(memory);
    const chain = env.pop([], [{ addr: 0x5000, len: 100 }]);
    memory.clearDirty();
    const w = new ChainWriter(chain);
    const at = w.claim(40);
    expect(at).toBeGreaterThanOrEqual(0);
    expect(w.claimedRegion).toBe(memory.findRegion(0x5000));
    w.claimedRegion!.bytes[at] = 0xab;
    w.claimedRegion!.view.setUint16(at + 1, 0x1234, true);
    expect(w.bytesWritten).toBe(40);
    expect(w.remaining).toBe(60);
    expect([memory.readU8(0x5000), memory.readU16(0x5001)]).toEqual([0xab, 0x1234]);
    expect(memory.dirtyPages()).toEqual([5]);
    expect(w.claim(61)).toBe(-1); // more than is left
    expect(w.remaining).toBe(60);
  });

  it('a claim across two buffers, or of nothing, returns -1 and moves nothing', () => {
    const memory = contiguousMemory([0x4000], { shared: true });
    const env = new Env(memory);
    const chain = env.pop(
      [
        { addr: 0x5000, len: 8 },
        { addr: 0x6000, len: 8 },
      ],
      [],
    );
    memory.write(0x5000, Uint8Array.of(1, 2, 3, 4, 5, 6, 7, 8));
    const r = new ChainReader(chain);
    expect(r.claim(9)).toBe(-1);
    expect(r.claim(0)).toBe(-1);
    expect(r.remaining).toBe(16);
    const at = r.claim(8);
    const bytes = r.claimedRegion!.bytes;
    expect(Array.from(bytes.subarray(at, at + 8))).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    expect(r.remaining).toBe(8);
    expect(r.bytesRead).toBe(8);
  });
});
