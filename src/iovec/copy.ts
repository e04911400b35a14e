/**
 * A copy between two byte arrays that allocates nothing, for the per-frame paths.
 *
 * `TypedArray.prototype.set` needs a `subarray` view of the source (an allocation, then a
 * builtin call): about 60 ns for 64 bytes on V8 11, where a byte loop takes about 75. Four
 * bytes per step through DataViews takes under 30. From {@link LARGE_COPY_BYTES} on, `set`
 * (a memmove) wins and the allocation no longer matters. Measured with
 * the vhost-user-net benchmark (docs/PERFORMANCE.md).
 */

/** From this many bytes on, a copy goes through `subarray` + `set`. */
export const LARGE_COPY_BYTES = 256;

/**
 * Copies `src[from, from + n)` to `dst[to, to + n)`. `srcView` and `dstView` are DataViews
 * over exactly the bytes of `src` and `dst` (same offsets). The ranges must not overlap and
 * must lie inside both arrays (the caller has checked them).
 */
export function copyBytes(
  dst: Uint8Array,
  dstView: DataView,
  to: number,
  src: Uint8Array,
  srcView: DataView,
  from: number,
  n: number,
): void {
  if (n >= LARGE_COPY_BYTES) {
    dst.set(src.subarray(from, from + n), to);
    return;
  }
  let i = 0;
  // Integers only: a float64 step could change the bits of a NaN on the way.
  for (; i + 4 <= n; i += 4) dstView.setInt32(to + i, srcView.getInt32(from + i, true), true);
  for (; i < n; i++) dst[to + i] = src[from + i]!;
}
