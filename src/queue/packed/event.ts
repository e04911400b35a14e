import {
  RING_EVENT_FLAGS_DESC,
  RING_EVENT_FLAGS_DISABLE,
  RING_EVENT_FLAGS_MASK,
  RING_EVENT_OFF_MASK,
  RING_EVENT_WRAP_SHIFT,
} from './layout.js';

/**
 * True when the descriptor (`off`, `wrap`) is one of the `count` ring slots that end just
 * before (`newOff`, `newWrap`): the packed-ring form of `vring_need_event`.
 *
 * A slot and its wrap counter name a position on a circle of 2 * size: wrap 1 is the first
 * lap, wrap 0 the second. The slots passed since the last check are the `count` positions
 * before the new one, so the question is a modular distance, exact for windows of up to
 * 2 * size - 1 slots across any number of wraps; a window of 2 * size or more passes every
 * position.
 */
export function eventInWindow(
  size: number,
  off: number,
  wrap: number,
  newOff: number,
  newWrap: number,
  count: number,
): boolean {
  if (count <= 0) return false;
  const lap = 2 * size;
  if (count >= lap) return true;
  const event = off + (wrap ? 0 : size);
  const now = newOff + (newWrap ? 0 : size);
  // Distance from the event forward to the new position: 1..count means inside the window.
  const d = (now - event + lap) % lap;
  return d >= 1 && d <= count;
}

/**
 * Whether the side that reads an event suppression structure must notify, given the structure
 * as one u32 (`off_wrap` in the low half, flags in the high half) and the `count` ring slots
 * it made available or used since it last asked, ending before (`newOff`, `newWrap`)
 * (§2.8.10, §2.8.14). The device asks it of the driver area, the driver of the device area.
 *
 * DISABLE means no and ENABLE yes; DESC, valid only with VIRTIO_F_EVENT_IDX, means yes when
 * the named descriptor is in the window. Values the other side MUST NOT write (the reserved
 * flags value 3, DESC without EVENT_IDX, an offset outside the ring) read as yes: a spurious
 * notification is harmless, a missing one can hang the other side.
 */
export function eventWanted(
  snapshot: number,
  eventIdx: boolean,
  size: number,
  newOff: number,
  newWrap: number,
  count: number,
): boolean {
  const flags = (snapshot >>> 16) & RING_EVENT_FLAGS_MASK;
  if (flags === RING_EVENT_FLAGS_DISABLE) return false;
  if (flags !== RING_EVENT_FLAGS_DESC || !eventIdx) return true;
  const off = snapshot & RING_EVENT_OFF_MASK;
  if (off >= size) return true;
  return eventInWindow(size, off, (snapshot >>> RING_EVENT_WRAP_SHIFT) & 1, newOff, newWrap, count);
}
