/**
 * Large copies to and from shared memory at the speed of plain ones.
 *
 * V8 copies between typed arrays with a memmove, except when either side's buffer is a
 * SharedArrayBuffer: then every byte must be read and written with a relaxed atomic access, so
 * it copies a machine word at a time when source and destination addresses are aligned alike
 * (mod 8), and a byte at a time when they are not. Guest memory over vhost-user and in device
 * workers is shared, and a frame's bytes sit 12 bytes (the virtio-net header) past an aligned
 * buffer while the backend's copy starts aligned: such a copy of 1514 bytes took 606 ns where
 * the plain one took 166 (`bench/cases/net-rx.ts`, `mem=shared`; docs/PERFORMANCE.md).
 *
 * {@link copyRange} keeps every shared access word-sized: it goes through plain staging
 * memory placed with the shared end's alignment, where the realignment is a memmove.
 */

import { isSharedArrayBuffer } from './region.js';

const EMPTY = new Uint8Array(0);

/** Bytes staged per step: the staging memory never grows past this (plus alignment). */
const STAGE_BYTES = 64 * 1024;

/** Plain staging memory, all of its own ArrayBuffer (so aligned), grown on demand up to STAGE_BYTES. */
let fromShared: Uint8Array<ArrayBufferLike> = new Uint8Array(0);
let toShared: Uint8Array<ArrayBufferLike> = new Uint8Array(0);

function stage(current: Uint8Array, bytes: number): Uint8Array {
  if (current.length >= bytes) return current;
  const size = Math.min(STAGE_BYTES + 8, Math.max(bytes, 2 * current.length));
  return new Uint8Array(new ArrayBuffer(size));
}

/**
 * `array[at, at + n)` as its own array, the last one made kept: `subarray` allocates a typed
 * array (about 30 ns in V8), and a copy of one frame size takes the same range again and
 * again (staging here; the received frame in `RxFrames.frameEnd`). Keeps one array alive.
 */
export class KeptRange {
  private of: Uint8Array | null = null;
  private at = -1;
  private n = -1;
  private range: Uint8Array<ArrayBufferLike> = EMPTY;
  /** The range {@link repeated} saw last without making it (`at` -1: none). */
  private seenOf: Uint8Array | null = null;
  private seenAt = -1;
  private seenN = -1;

  get(array: Uint8Array, at: number, n: number): Uint8Array {
    if (array !== this.of || at !== this.at || n !== this.n) {
      this.range = array.subarray(at, at + n);
      this.of = array;
      this.at = at;
      this.n = n;
    }
    return this.range;
  }

  /**
   * Like {@link get}, for ranges too small to be worth a new array each time: null (nothing
   * allocated) the first time a range is asked for, the array from its second time in a row on.
   * A source that reuses its buffers (DPDK's mbufs) then gets arrays, and one that does not
   * costs two compares.
   */
  repeated(array: Uint8Array, at: number, n: number): Uint8Array | null {
    if (array === this.of && at === this.at && n === this.n) return this.range;
    if (array === this.seenOf && at === this.seenAt && n === this.seenN) {
      return this.get(array, at, n);
    }
    this.seenOf = array;
    this.seenAt = at;
    this.seenN = n;
    return null;
  }

  /** True when this holds, or saw last, a range of `array` that starts at `at`. */
  startsAt(array: Uint8Array, at: number): boolean {
    return (at === this.at && array === this.of) || (at === this.seenAt && array === this.seenOf);
  }

  /** Drops the array kept (and so its buffer). */
  clear(): void {
    this.of = null;
    this.at = -1;
    this.n = -1;
    this.range = EMPTY;
    this.seenOf = null;
    this.seenAt = -1;
    this.seenN = -1;
  }
}

/**
 * Sets of the cache {@link KeptRanges}: a prime, so that buffers spaced evenly (a driver's
 * pool; DPDK's mbufs lie 2368 or 4096 bytes apart) fall into distinct sets for as many
 * buffers as there are sets.
 */
export const KEPT_SETS = 509;
/** Ranges per set: the ways of the cache, for pools that lie in several runs. */
const KEPT_WAYS = 4;

/**
 * The {@link KeptRange}s of many arrays' ranges, found by where a range starts: a cache of
 * {@link KEPT_SETS} sets of {@link KEPT_WAYS}, the set chosen by the start's cache line modulo
 * a prime, the range of the set used least recently replaced. In a simulation over the
 * addresses DPDK's testpmd reflected (890 buffers in four runs) and over pools of 900 to 1000
 * buffers in one to eight runs at strides of 2176 to 8192 bytes, it missed only on each
 * buffer's first use, and on 8% of uses for 900 addresses at random (docs/PERFORMANCE.md).
 * Keeps one owner's arrays only (a guest memory): another owner's arrival, or {@link clear},
 * drops every one kept.
 */
export class KeptRanges {
  private readonly ranges = Array.from({ length: KEPT_SETS * KEPT_WAYS }, () => new KeptRange());
  /** Per range: when it was last asked for (a count of lookups), for the replacement. */
  private readonly stamps = new Float64Array(KEPT_SETS * KEPT_WAYS);
  private clock = 0;
  private owner: object | null = null;

  /**
   * The KeptRange for a range of `array` (owned by `owner`) starting at `at`: the one of its set
   * that holds (or saw) such a range, else the one used least recently, which the caller's
   * `get` or `repeated` then replaces.
   */
  of(owner: object | null, array: Uint8Array, at: number): KeptRange {
    if (owner !== this.owner) this.clear(owner);
    const first = ((at >>> 6) % KEPT_SETS) * KEPT_WAYS;
    const ranges = this.ranges;
    const stamps = this.stamps;
    const now = ++this.clock;
    const end = first + KEPT_WAYS;
    for (let i = first; i < end; i++) {
      const range = ranges[i]!;
      if (range.startsAt(array, at)) {
        stamps[i] = now;
        return range;
      }
    }
    let oldest = first;
    for (let i = first + 1; i < end; i++) if (stamps[i]! < stamps[oldest]!) oldest = i;
    stamps[oldest] = now;
    return ranges[oldest]!;
  }

  /** Drops every range kept (and so their buffers); `owner` is the one to keep them for next. */
  clear(owner: object | null = null): void {
    for (const k of this.ranges) k.clear();
    this.owner = owner;
  }
}

/** The staging ranges used last, one per staging array. */
const fromSharedRange = new KeptRange();
const toSharedRange = new KeptRange();

/**
 * Copies `src[from, from + n)` to `dst[to, to + n)` (the ranges lie inside both arrays) as
 * `dst.set(src.subarray(...), to)` does, through aligned staging when either buffer is shared
 * and the two ends are not aligned alike. Two views of one buffer are copied by `set` alone,
 * which allows the ranges to overlap.
 */
export function copyRange(
  dst: Uint8Array,
  to: number,
  src: Uint8Array,
  from: number,
  n: number,
): void {
  const buffer = dst.buffer;
  const dstShared = isSharedArrayBuffer(buffer);
  const srcShared = isSharedArrayBuffer(src.buffer);
  // One buffer (the two ranges may overlap): `set` copies as memmove does.
  if ((!dstShared && !srcShared) || buffer === src.buffer) {
    dst.set(src.subarray(from, from + n), to);
    return;
  }
  const srcAt = src.byteOffset + from;
  copyArrayTo(dst, dst.byteOffset, dstShared, to, src.subarray(from, from + n), srcAt, srcShared);
}

/**
 * One end of a copy as {@link copyRangeAt} and {@link copyArrayAt} take it: the array, where
 * it starts in its buffer (its `byteOffset`) and whether that buffer is a SharedArrayBuffer.
 * V8 reads `byteOffset` and `buffer` through calls, about 15 ns each, which a per-frame copy
 * should not pay: a `GuestRegion` is a copy end with both known, and {@link ArrayEnd} makes
 * one for any other array.
 */
export interface CopyEnd {
  readonly bytes: Uint8Array;
  /**
   * `bytes.byteOffset`. Only its value mod 8 matters, and only when a side of the copy is
   * shared: a caller may pass 0 for a plain array copied to or from plain memory.
   */
  readonly offset: number;
  readonly shared: boolean;
}

/** A {@link CopyEnd} that a caller points at its arrays in turn: nothing allocated per copy. */
export class ArrayEnd implements CopyEnd {
  bytes: Uint8Array = EMPTY;
  offset = 0;
  shared = false;

  /** This end, over `bytes`, which starts at byte `offset` of its buffer (shared or not). */
  of(bytes: Uint8Array, offset: number, shared: boolean): this {
    this.bytes = bytes;
    this.offset = offset;
    this.shared = shared;
    return this;
  }

  /** Lets go of the array, so that this end keeps no buffer alive once its copy is done. */
  clear(): void {
    this.bytes = EMPTY;
  }
}

/**
 * {@link copyRange} between two {@link CopyEnd}s: `src.bytes[from, from + n)` to
 * `dst.bytes[to, to + n)`. The two ranges must not overlap.
 */
export function copyRangeAt(dst: CopyEnd, to: number, src: CopyEnd, from: number, n: number): void {
  const piece = src.bytes.subarray(from, from + n);
  copyArrayTo(dst.bytes, dst.offset, dst.shared, to, piece, src.offset + from, src.shared);
}

/**
 * {@link copyRangeAt} for a source that is exactly the bytes to copy: all of `src.bytes` goes
 * to `dst.bytes[to, ...)`. A caller that copies the same source range again and again keeps
 * that array (and its end), which saves making it per copy.
 */
export function copyArrayAt(dst: CopyEnd, to: number, src: CopyEnd): void {
  copyArrayTo(dst.bytes, dst.offset, dst.shared, to, src.bytes, src.offset, src.shared);
}

/**
 * All of `src` (at byte `srcAt` of its buffer) to `dst[to, ...)` (`dst` at byte `dstAt` of
 * its buffer): the two ends of {@link copyArrayAt} taken apart, for the module's own callers.
 */
function copyArrayTo(
  dst: Uint8Array,
  dstAt: number,
  dstShared: boolean,
  to: number,
  src: Uint8Array,
  srcAt: number,
  srcShared: boolean,
): void {
  const n = src.length;
  if ((!dstShared && !srcShared) || ((dstAt + to - srcAt) & 7) === 0) {
    dst.set(src, to);
    return;
  }
  for (let done = 0; done < n; ) {
    const k = Math.min(n - done, STAGE_BYTES);
    const piece = k === n ? src : src.subarray(done, done + k);
    stagedCopy(dst, dstAt, dstShared, to + done, piece, srcAt + done, srcShared);
    done += k;
  }
}

/**
 * Copies all of `piece` (at most STAGE_BYTES, at byte `pieceAt` of its buffer) to
 * `dst[to, ...)` with every shared access word-sized: out of shared memory into staging aligned
 * alike, then, when the destination is shared and aligned otherwise, a memmove into staging
 * with its alignment.
 */
function stagedCopy(
  dst: Uint8Array,
  dstAt: number,
  dstShared: boolean,
  to: number,
  piece: Uint8Array,
  pieceAt: number,
  srcShared: boolean,
): void {
  const n = piece.length;
  if (srcShared) {
    const a = pieceAt & 7;
    fromShared = stage(fromShared, a + n);
    fromShared.set(piece, a);
    piece = fromSharedRange.get(fromShared, a, n);
    pieceAt = a;
  }
  if (dstShared) {
    const a = (dstAt + to) & 7;
    if ((pieceAt & 7) !== a) {
      // Plain to plain (a memmove) into the destination's alignment.
      toShared = stage(toShared, a + n);
      toShared.set(piece, a);
      piece = toSharedRange.get(toShared, a, n);
    }
  }
  // Into shared memory aligned alike (words), or into plain memory (a memmove).
  dst.set(piece, to);
}
