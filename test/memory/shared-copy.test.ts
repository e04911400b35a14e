/**
 * Large copies to and from shared memory (`copyRange`, `copyRangeAt`, `copyArrayAt`): the
 * bytes asked and no others, for every mix of shared and plain, aligned and misaligned ends, views that do not
 * start their buffer, and copies longer than one staging step.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ArrayEnd, copyArrayAt, copyRange, copyRangeAt } from '../../src/memory/shared-copy.js';

/** A view of `length` bytes starting `offset` bytes into a plain or shared buffer. */
function view(shared: boolean, offset: number, length: number): Uint8Array {
  const buffer = shared ? new SharedArrayBuffer(offset + length) : new ArrayBuffer(offset + length);
  return new Uint8Array(buffer, offset, length);
}

let checks = 0;

/** Runs one copy with `copy` and checks every byte of the destination. */
function check(
  copy: (dst: Uint8Array, to: number, src: Uint8Array, from: number, n: number) => void,
  n: number,
  shape: { to: number; from: number; dstOffset: number; srcOffset: number },
  srcShared: boolean,
  dstShared: boolean,
): void {
  const { to, from, dstOffset, srcOffset } = shape;
  const src = view(srcShared, srcOffset, from + n + 3);
  const dst = view(dstShared, dstOffset, to + n + 5);
  // New bytes on every call, so a copy that served stale staging would show.
  const salt = ++checks;
  for (let i = 0; i < src.length; i++) src[i] = (i * 131 + 7 + salt) & 0xff;
  dst.fill(0xa5);
  copy(dst, to, src, from, n);
  for (let i = 0; i < dst.length; i++) {
    const want = i >= to && i < to + n ? src[from + i - to] : 0xa5;
    if (dst[i] !== want) expect.fail(`byte ${i}: ${dst[i]}, expected ${want}`);
  }
}

const shapes = fc.record({
  to: fc.integer({ min: 0, max: 17 }),
  from: fc.integer({ min: 0, max: 17 }),
  dstOffset: fc.integer({ min: 0, max: 15 }),
  srcOffset: fc.integer({ min: 0, max: 15 }),
});

/** `array` as a copy end: its offset and sharing given, not looked up by the copy. */
function end(array: Uint8Array): ArrayEnd {
  return new ArrayEnd().of(array, array.byteOffset, array.buffer instanceof SharedArrayBuffer);
}

/** copyRangeAt as a device calls it: offsets and sharing given, not looked up. */
function viaAt(dst: Uint8Array, to: number, src: Uint8Array, from: number, n: number): void {
  copyRangeAt(end(dst), to, end(src), from, n);
}

/** copyArrayAt as the receive path calls it: the source range as its own array. */
function viaArray(dst: Uint8Array, to: number, src: Uint8Array, from: number, n: number): void {
  copyArrayAt(end(dst), to, end(src.subarray(from, from + n)));
}

describe('copyRange, copyRangeAt and copyArrayAt', () => {
  for (const [name, copy] of [
    ['copyRange', copyRange],
    ['copyRangeAt', viaAt],
    ['copyArrayAt', viaArray],
  ] as const) {
    it(`${name}: exactly the bytes asked, shared or plain at either end, any alignment`, () => {
      fc.assert(
        fc.property(
          fc.integer({ min: 0, max: 3000 }),
          shapes,
          fc.boolean(),
          fc.boolean(),
          (n, shape, srcShared, dstShared) => check(copy, n, shape, srcShared, dstShared),
        ),
        { numRuns: 300 },
      );
    });
  }

  it('copies more than one staging step (64 KiB) in pieces, every byte in place', () => {
    for (const [srcShared, dstShared] of [
      [true, false],
      [false, true],
      [true, true],
    ] as const) {
      const shape = { to: 3, from: 6, dstOffset: 8, srcOffset: 1 };
      check(copyRange, 200_000 + 13, shape, srcShared, dstShared);
      check(viaArray, 200_000 + 13, shape, srcShared, dstShared);
    }
  });

  it('stages one size again after the staging memory grew, with the new bytes', () => {
    // The staged range kept from one copy must not serve the next once staging is replaced.
    const shape = { to: 12, from: 0, dstOffset: 0, srcOffset: 0 };
    for (const n of [1514, 1514, 40_000, 1514, 65_536, 1514, 1514]) {
      check(viaArray, n, shape, false, true);
      check(viaArray, n, { ...shape, srcOffset: 3 }, true, false);
      check(copyRange, n, shape, true, true);
    }
  });

  it('copies between overlapping views of one shared buffer as memmove does', () => {
    const buffer = new SharedArrayBuffer(300_000);
    const all = new Uint8Array(buffer);
    for (let i = 0; i < all.length; i++) all[i] = (i * 13) & 0xff;
    const want = all.slice();
    // 200,000 bytes moved 5 bytes up: the ranges overlap, misaligned, over several stage steps.
    want.copyWithin(1005, 1000, 201_000);
    copyRange(new Uint8Array(buffer, 5), 1000, new Uint8Array(buffer, 0), 1000, 200_000);
    expect(Buffer.compare(Buffer.from(all), Buffer.from(want))).toBe(0);
  });

  it('takes a destination the caller says is plain but is shared: still right', () => {
    const src = view(true, 4, 2000);
    const dst = view(true, 0, 2100);
    for (let i = 0; i < src.length; i++) src[i] = i & 0xff;
    copyRangeAt(new ArrayEnd().of(dst, 0, false), 5, new ArrayEnd().of(src, 4, true), 0, 1999);
    for (let i = 0; i < 1999; i++) expect(dst[5 + i]).toBe(i & 0xff);
    expect(dst[4]).toBe(0);
    expect(dst[5 + 1999]).toBe(0);
  });
});
