import { QueueConfigError, type QueueConfigErrorCode } from '../errors.js';
import { hex } from '../hex.js';
import type { GuestMemory } from '../memory/guest-memory.js';
import type { GuestRegion } from '../memory/region.js';

/**
 * The region holding one part of a ring (descriptor area, driver area or device area), after
 * checking that `addr` is a guest address aligned to `align` and that all `len` bytes lie in
 * one region (§2.7 for split rings, §2.8.10.1 for packed ones: each part is physically
 * contiguous). `field` names the queue register in the {@link QueueConfigError}.
 */
export function ringArea(
  memory: GuestMemory,
  field: string,
  addr: number,
  len: number,
  align: number,
): GuestRegion {
  const fail = (code: QueueConfigErrorCode, why: string): never => {
    throw new QueueConfigError(code, field, `${field} ${hex(addr)} ${why}`);
  };
  if (!Number.isSafeInteger(addr) || addr < 0)
    fail('QUEUE_RING_OUT_OF_MEMORY', 'is not a guest address');
  if (addr % align !== 0) fail('QUEUE_MISALIGNED', `is not ${align}-byte aligned`);
  const r = memory.findRegion(addr);
  if (r === undefined || len > r.end - addr) {
    fail('QUEUE_RING_OUT_OF_MEMORY', `+${len} is not inside one memory region`);
  }
  return r as GuestRegion;
}
