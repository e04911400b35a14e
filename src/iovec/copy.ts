/**
 * A copy between two byte arrays that allocates nothing, for the per-frame paths.
 *
 * `TypedArray.prototype.set` needs a `subarray` view of the source (an allocation, then a
 * builtin call): about 60 ns for 64 bytes on V8 11, where a byte loop takes about 65. Four
 * bytes per step through DataViews takes 26 to 35; through Int32Arrays, when both ends are
 * 4-byte aligned, 17. From {@link LARGE_COPY_BYTES} on, `set` (a memmove) wins and the
 * allocation no longer matters. Measured with the vhost-user-net benchmark and the net-rx case
 * (docs/PERFORMANCE.md).
 */

import { isSharedArrayBuffer } from '../memory/region.js';
import { copyRange } from '../memory/shared-copy.js';

/** From this many bytes on, a copy goes through `subarray` + `set` (see `copyRange`). */
export const LARGE_COPY_BYTES = 256;

/**
 * An Int32Array over the same bytes as `bytes`, from the same first byte (which must be 4-byte
 * aligned in its buffer), as many whole words as fit.
 */
export function wordsOver(bytes: Uint8Array): Int32Array {
  if (bytes.byteOffset % 4 !== 0) throw new RangeError('words need a 4-byte aligned start');
  return new Int32Array(bytes.buffer, bytes.byteOffset, Math.floor(bytes.byteLength / 4));
}

/**
 * Copies `src[from, from + n)` to `dst[to, to + n)`. `srcView` and `dstView` are DataViews,
 * and `srcWords` and `dstWords` Int32Arrays made by {@link wordsOver}, over exactly the bytes
 * of `src` and `dst` (same first byte). The ranges must not overlap and must lie inside both
 * arrays (the caller has checked them).
 */
export function copyBytes(
  dst: Uint8Array,
  dstView: DataView,
  dstWords: Int32Array,
  to: number,
  src: Uint8Array,
  srcView: DataView,
  srcWords: Int32Array,
  from: number,
  n: number,
): void {
  if (n >= LARGE_COPY_BYTES) {
    copyRange(dst, to, src, from, n);
    return;
  }
  // Integers only: a float64 step could change the bits of a NaN on the way.
  if (to <= SMALL_OFFSET && from <= SMALL_OFFSET) {
    // Offsets that are small integers, known as such to the compiler: the loop then indexes
    // with integer adds. A guest address minus a region base is a double to V8, and a loop
    // over doubles converts and checks every index (about half of the receive path's copy).
    const t = to | 0;
    const f = from | 0;
    let i = 0;
    if (((t | f) & 3) === 0) {
      // Both ends aligned (the usual case: a guest's buffers are): whole words, about twice
      // as fast as DataView steps. The last whole word ends within `n`, so within both arrays.
      const tw = t >> 2;
      const fw = f >> 2;
      const w = n >> 2;
      for (let k = 0; k < w; k++) dstWords[tw + k] = srcWords[fw + k]!;
      i = w << 2;
    } else {
      for (; i + 4 <= n; i += 4) dstView.setInt32(t + i, srcView.getInt32(f + i, true), true);
    }
    for (; i < n; i++) dst[t + i] = src[f + i]!;
    return;
  }
  let i = 0;
  for (; i + 4 <= n; i += 4) dstView.setInt32(to + i, srcView.getInt32(from + i, true), true);
  for (; i < n; i++) dst[to + i] = src[from + i]!;
}

/** Offsets up to this (2^31 - 1 less a small copy) keep `offset + i` a 32-bit integer. */
const SMALL_OFFSET = 2 ** 31 - 1 - LARGE_COPY_BYTES;

/**
 * Copies out of arrays that are views of one buffer, called again and again with new views
 * (a backend's frame buffer): {@link copyBytes} through views over the whole buffer, made
 * when the buffer changes, so a copy under {@link LARGE_COPY_BYTES} allocates nothing.
 */
export class SourceCopier {
  /** The array used last: a view's buffer never changes, so it is looked at once. */
  private src: Uint8Array | null = null;
  private buffer: ArrayBufferLike | null = null;
  /**
   * The buffer can change its length (a growable SharedArrayBuffer or a resizable
   * ArrayBuffer): {@link bytes} and {@link view} follow it, {@link words} is remade to match.
   */
  private resizable = false;
  /** After {@link use}: the whole buffer of the array, which starts at its `byteOffset`. */
  bytes: Uint8Array<ArrayBufferLike> = new Uint8Array(0);
  /** A DataView over {@link bytes}. */
  view: DataView<ArrayBufferLike> = new DataView(new ArrayBuffer(0));
  /** An Int32Array over {@link bytes} ({@link wordsOver}), as many whole words as it holds now. */
  words: Int32Array<ArrayBufferLike> = new Int32Array(0);
  /** After {@link use}: where the array starts in {@link bytes} (its `byteOffset`). */
  offset = 0;
  /** After {@link use}: the buffer is a SharedArrayBuffer. */
  shared = false;

  /** Points {@link bytes} and {@link view} at the buffer of `src`, and {@link offset} at its start. */
  use(src: Uint8Array): void {
    if (src !== this.src || this.resizable) {
      // `buffer` and `byteOffset` of a small array V8 made on its heap are calls into the
      // runtime: once per source array, not per copy (unless the buffer can change length).
      this.src = src;
      this.offset = src.byteOffset;
      const buffer = src.buffer;
      if (buffer !== this.buffer) {
        this.buffer = buffer;
        this.bytes = new Uint8Array(buffer);
        this.view = new DataView(buffer);
        this.words = wordsOver(this.bytes);
        this.shared = isSharedArrayBuffer(buffer);
        this.resizable = canChangeLength(buffer);
      } else if (
        this.resizable &&
        this.words.byteLength !== buffer.byteLength - (buffer.byteLength % 4)
      ) {
        // Words made over the earlier length would read zeros (and drop writes) past it.
        this.words = wordsOver(this.bytes);
      }
    }
  }

  /**
   * Copies `src[0, n)` to `dst[to, to + n)`; `dstView` and `dstWords` are a DataView and
   * {@link wordsOver} over exactly `dst`.
   */
  copy(
    dst: Uint8Array,
    dstView: DataView,
    dstWords: Int32Array,
    to: number,
    src: Uint8Array,
    n: number,
  ): void {
    this.use(src);
    copyBytes(dst, dstView, dstWords, to, this.bytes, this.view, this.words, this.offset, n);
  }
}

/** Whether `buffer` can change length: a growable SharedArrayBuffer or resizable ArrayBuffer. */
function canChangeLength(buffer: ArrayBufferLike): boolean {
  const b = buffer as { growable?: boolean; resizable?: boolean };
  return b.growable === true || b.resizable === true;
}
