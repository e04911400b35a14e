/**
 * Byte layout of a packed virtqueue (VIRTIO 1.2 §2.8). Three separate parts: the descriptor
 * ring, the driver event suppression structure (driver area) and the device event suppression
 * structure (device area).
 */

/** Descriptor ring: `size` descriptors of 16 bytes (§2.8.10.1). */
export function packedDescRingBytes(size: number): number {
  return 16 * size;
}

/** Each event suppression structure is 4 bytes (§2.8.10.1). */
export const PACKED_EVENT_BYTES = 4;

/** Alignment of each part (§2.8.10.1, table "Virtqueue Part / Alignment / Size"). */
export const PACKED_DESC_RING_ALIGN = 16;
export const PACKED_EVENT_ALIGN = 4;

/** Byte offsets inside a packed descriptor (`struct pvirtq_desc`, §2.8.13). */
export const PACKED_DESC_ADDR = 0;
export const PACKED_DESC_LEN = 8;
export const PACKED_DESC_ID = 12;
export const PACKED_DESC_FLAGS = 14;
/**
 * The same fields as u16 indices inside one descriptor (descriptor i's flags: `8 * i + 7`).
 * The id sits where a split descriptor has its flags, and the flags where it has `next`.
 */
export const PACKED_DESC_ID_U16 = PACKED_DESC_ID / 2;
export const PACKED_DESC_FLAGS_U16 = PACKED_DESC_FLAGS / 2;
/**
 * The same fields as u32 indices inside one descriptor (slot i's length: `4 * i + 2`): the
 * address's low and high halves, the length, and the buffer id (low half) with the flags
 * (high half).
 */
export const PACKED_DESC_ADDR_LO_U32 = 0;
export const PACKED_DESC_ADDR_HI_U32 = 1;
export const PACKED_DESC_LEN_U32 = PACKED_DESC_LEN / 4;
export const PACKED_DESC_ID_FLAGS_U32 = PACKED_DESC_ID / 4;

/** Byte offsets inside an event suppression structure (`struct pvirtq_event_suppress`, §2.8.14). */
export const PACKED_EVENT_OFF_WRAP = 0;
export const PACKED_EVENT_FLAGS = 2;

/** Event suppression flags values (§2.8.10). */
export const RING_EVENT_FLAGS_ENABLE = 0x0;
export const RING_EVENT_FLAGS_DISABLE = 0x1;
/** Only valid when VIRTIO_F_EVENT_IDX was negotiated. */
export const RING_EVENT_FLAGS_DESC = 0x2;
/** The event flags are the low two bits of the flags field; the rest is reserved. */
export const RING_EVENT_FLAGS_MASK = 0x3;

/** Bit of `off_wrap` holding the wrap counter; the low 15 bits are the descriptor offset. */
export const RING_EVENT_WRAP_SHIFT = 15;
export const RING_EVENT_OFF_MASK = 0x7fff;

/** Where the three parts of a packed ring live. */
export interface PackedLayout {
  /** Descriptor ring (descriptor area). */
  desc: number;
  /** Driver event suppression structure (driver area). */
  driver: number;
  /** Device event suppression structure (device area). */
  device: number;
  /** First byte after the last part. */
  end: number;
}

/**
 * Places the descriptor ring at `base` (which must be 16-byte aligned) and the two event
 * suppression structures right after it (16 * size is a multiple of 4, so they stay aligned).
 */
export function packedLayout(base: number, size: number): PackedLayout {
  const desc = base;
  const driver = desc + packedDescRingBytes(size);
  const device = driver + PACKED_EVENT_BYTES;
  return { desc, driver, device, end: device + PACKED_EVENT_BYTES };
}

/** Packs an event offset and wrap counter into the `off_wrap` field. */
export function packOffWrap(offset: number, wrap: boolean | number): number {
  return (offset & RING_EVENT_OFF_MASK) | (wrap ? 1 << RING_EVENT_WRAP_SHIFT : 0);
}
