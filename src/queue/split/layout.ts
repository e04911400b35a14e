/**
 * Byte layout of a split virtqueue (VIRTIO 1.2 §2.7). Offsets are from each part's start.
 */

/** Descriptor table: `size` descriptors of 16 bytes. */
export function descTableBytes(size: number): number {
  return 16 * size;
}

/** Available ring: flags, idx, ring[size] of u16, used_event. */
export function availRingBytes(size: number): number {
  return 6 + 2 * size;
}

/** Used ring: flags, idx, ring[size] of {u32 id, u32 len}, avail_event. */
export function usedRingBytes(size: number): number {
  return 6 + 8 * size;
}

/** Alignment each part needs (§2.7, table "Virtqueue Part / Alignment"). */
export const DESC_TABLE_ALIGN = 16;
export const AVAIL_RING_ALIGN = 2;
export const USED_RING_ALIGN = 4;

/** Byte offsets inside a split descriptor (`struct virtq_desc`, §2.7.5). */
export const SPLIT_DESC_ADDR = 0;
export const SPLIT_DESC_LEN = 8;
export const SPLIT_DESC_FLAGS = 12;
export const SPLIT_DESC_NEXT = 14;
/** The same fields as u16 indices inside one descriptor (descriptor i's flags: `8 * i + 6`). */
export const SPLIT_DESC_FLAGS_U16 = SPLIT_DESC_FLAGS / 2;
export const SPLIT_DESC_NEXT_U16 = SPLIT_DESC_NEXT / 2;
/**
 * The same fields as u32 indices inside one descriptor (descriptor i's length: `4 * i + 2`):
 * the address's low and high halves, the length, and flags (low half) with next (high half).
 */
export const SPLIT_DESC_ADDR_LO_U32 = 0;
export const SPLIT_DESC_ADDR_HI_U32 = 1;
export const SPLIT_DESC_LEN_U32 = SPLIT_DESC_LEN / 4;
export const SPLIT_DESC_FLAGS_NEXT_U32 = SPLIT_DESC_FLAGS / 4;

/** Byte offsets of the fields inside the rings. */
export const AVAIL_FLAGS = 0;
export const AVAIL_IDX = 2;
export const AVAIL_RING = 4;
export const USED_FLAGS = 0;
export const USED_IDX = 2;
export const USED_RING = 4;

/** Offset of `used_event` in the available ring. */
export function usedEventOffset(size: number): number {
  return 4 + 2 * size;
}

/** Offset of `avail_event` in the used ring. */
export function availEventOffset(size: number): number {
  return 4 + 8 * size;
}

/** A legacy-style contiguous layout starting at `base`, with the used ring on its own alignment. */
export interface SplitLayout {
  desc: number;
  avail: number;
  used: number;
  /** First byte after the used ring. */
  end: number;
}

/**
 * Places the three parts one after another from `base` (which must be 16-byte aligned), each
 * at its required alignment, the used ring on a `usedAlign` boundary (4 by default; legacy
 * drivers use 4096).
 */
export function splitLayout(base: number, size: number, usedAlign = USED_RING_ALIGN): SplitLayout {
  const desc = base;
  const avail = desc + descTableBytes(size);
  const used = Math.ceil((avail + availRingBytes(size)) / usedAlign) * usedAlign;
  return { desc, avail, used, end: used + usedRingBytes(size) };
}
