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
  copyRangeAt(dst, dst.byteOffset, dstShared, to, src, src.byteOffset, srcShared, from, n);
}

/**
 * {@link copyRange} for a caller that knows each array's `byteOffset` (`dstAt`, `srcAt`) and
 * whether its buffer is shared: V8 reads those two properties through calls, about 15 ns each,
 * which a per-frame copy should not pay. The two ranges must not overlap.
 */
export function copyRangeAt(
  dst: Uint8Array,
  dstAt: number,
  dstShared: boolean,
  to: number,
  src: Uint8Array,
  srcAt: number,
  srcShared: boolean,
  from: number,
  n: number,
): void {
  if ((!dstShared && !srcShared) || ((dstAt + to - (srcAt + from)) & 7) === 0) {
    dst.set(src.subarray(from, from + n), to);
    return;
  }
  for (let done = 0; done < n; ) {
    const k = Math.min(n - done, STAGE_BYTES);
    let s: Uint8Array<ArrayBufferLike> = src;
    let f = from + done;
    let sAt = srcAt;
    if (srcShared) {
      // Out of shared memory into plain memory aligned alike: words.
      const a = (srcAt + f) & 7;
      fromShared = stage(fromShared, a + k);
      fromShared.set(src.subarray(f, f + k), a);
      s = fromShared;
      f = a;
      sAt = 0;
    }
    const t = to + done;
    if (dstShared) {
      const a = (dstAt + t) & 7;
      if (((sAt + f) & 7) !== a) {
        // Plain to plain (a memmove) into the destination's alignment.
        toShared = stage(toShared, a + k);
        toShared.set(s.subarray(f, f + k), a);
        s = toShared;
        f = a;
      }
    }
    // Into shared memory aligned alike (words), or into plain memory (a memmove).
    dst.set(s.subarray(f, f + k), t);
    done += k;
  }
}
