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
 * A byte array with a DataView and its whole 4-byte words over the same bytes (same offsets),
 * made once, so that a copy through them allocates nothing. A `GuestRegion` is one; so is a
 * frame buffer ({@link spanOver}).
 */
export interface ByteSpan {
  readonly bytes: Uint8Array;
  /** Little-endian access to {@link bytes}; offset 0 is `bytes[0]`. */
  readonly view: DataView;
  /** {@link wordsOver} {@link bytes}: word `k` is bytes `[4k, 4k + 4)`. */
  readonly words: Int32Array;
  /** The bytes' buffer is a SharedArrayBuffer. */
  readonly shared: boolean;
}

/**
 * An Int32Array over the same bytes as `bytes`, from the same first byte (which must be 4-byte
 * aligned in its buffer), as many whole words as fit.
 */
export function wordsOver(bytes: Uint8Array): Int32Array {
  if (bytes.byteOffset % 4 !== 0) throw new RangeError('words need a 4-byte aligned start');
  return new Int32Array(bytes.buffer, bytes.byteOffset, Math.floor(bytes.byteLength / 4));
}

/**
 * The {@link ByteSpan} over `bytes`, whose first byte must be 4-byte aligned in its buffer. Its
 * view and words have the length `bytes` has now: for the device's own fixed-size buffers (a
 * buffer that changes length goes through {@link SourceCopier}).
 */
export function spanOver(bytes: Uint8Array): ByteSpan {
  return {
    bytes,
    view: new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength),
    words: wordsOver(bytes),
    shared: isSharedArrayBuffer(bytes.buffer),
  };
}

/**
 * Copies `src.bytes[from, from + n)` to `dst.bytes[to, to + n)`. The ranges must not overlap
 * and must lie inside both spans (the caller has checked them).
 */
export function copyBytes(dst: ByteSpan, to: number, src: ByteSpan, from: number, n: number): void {
  const dstBytes = dst.bytes;
  const srcBytes = src.bytes;
  if (n >= LARGE_COPY_BYTES) {
    copyRange(dstBytes, to, srcBytes, from, n);
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
      const dstWords = dst.words;
      const srcWords = src.words;
      const tw = t >> 2;
      const fw = f >> 2;
      const w = n >> 2;
      for (let k = 0; k < w; k++) dstWords[tw + k] = srcWords[fw + k]!;
      i = w << 2;
    } else {
      const dstView = dst.view;
      const srcView = src.view;
      for (; i + 4 <= n; i += 4) dstView.setInt32(t + i, srcView.getInt32(f + i, true), true);
    }
    for (; i < n; i++) dstBytes[t + i] = srcBytes[f + i]!;
    return;
  }
  const dstView = dst.view;
  const srcView = src.view;
  let i = 0;
  for (; i + 4 <= n; i += 4) dstView.setInt32(to + i, srcView.getInt32(from + i, true), true);
  for (; i < n; i++) dstBytes[to + i] = srcBytes[from + i]!;
}

/** Offsets up to this (2^31 - 1 less a small copy) keep `offset + i` a 32-bit integer. */
const SMALL_OFFSET = 2 ** 31 - 1 - LARGE_COPY_BYTES;

/**
 * Copies out of arrays that are views of one buffer, called again and again with new views
 * (a backend's frame buffer): {@link copyBytes} from a span over the whole buffer, made when
 * the buffer changes, so a copy under {@link LARGE_COPY_BYTES} allocates nothing.
 */
export class SourceCopier {
  /** The array used last: a view's buffer never changes, so it is looked at once. */
  private src: Uint8Array | null = null;
  private buffer: ArrayBufferLike | null = null;
  /**
   * The buffer can change its length (a growable SharedArrayBuffer or a resizable
   * ArrayBuffer): the span's bytes and view follow it, and the span is remade when its words
   * no longer cover it.
   */
  private resizable = false;
  /** After {@link use}: the whole buffer of the array, which starts at {@link offset}. */
  span: ByteSpan = wholeBuffer(new ArrayBuffer(0));
  /** After {@link use}: where the array starts in {@link span} (its `byteOffset`). */
  offset = 0;

  /** Points {@link span} at the buffer of `src`, and {@link offset} at its start. */
  use(src: Uint8Array): void {
    if (src !== this.src || this.resizable) {
      // `buffer` and `byteOffset` of a small array V8 made on its heap are calls into the
      // runtime: once per source array, not per copy (unless the buffer can change length).
      this.src = src;
      this.offset = src.byteOffset;
      const buffer = src.buffer;
      if (buffer !== this.buffer) {
        this.buffer = buffer;
        this.span = wholeBuffer(buffer);
        this.resizable = canChangeLength(buffer);
      } else if (
        this.resizable &&
        this.span.words.byteLength !== buffer.byteLength - (buffer.byteLength % 4)
      ) {
        // Words made over the earlier length would read zeros (and drop writes) past it.
        this.span = wholeBuffer(buffer);
      }
    }
  }

  /** Copies `src[0, n)` to `dst.bytes[to, to + n)`. */
  copy(dst: ByteSpan, to: number, src: Uint8Array, n: number): void {
    this.use(src);
    copyBytes(dst, to, this.span, this.offset, n);
  }
}

/**
 * The span over all of `buffer`: bytes and view that follow a buffer that changes length, and
 * the whole words it holds now.
 */
function wholeBuffer(buffer: ArrayBufferLike): ByteSpan {
  const bytes = new Uint8Array(buffer);
  return {
    bytes,
    view: new DataView(buffer),
    words: wordsOver(bytes),
    shared: isSharedArrayBuffer(buffer),
  };
}

/** Whether `buffer` can change length: a growable SharedArrayBuffer or resizable ArrayBuffer. */
function canChangeLength(buffer: ArrayBufferLike): boolean {
  const b = buffer as { growable?: boolean; resizable?: boolean };
  return b.growable === true || b.resizable === true;
}
