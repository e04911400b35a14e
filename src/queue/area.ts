import { QueueConfigError, type QueueConfigErrorCode, SnapshotError } from '../errors.js';
import { hex } from '../hex.js';
import type { GuestMemory } from '../memory/guest-memory.js';
import type { GuestRegion } from '../memory/region.js';
import type { Queue } from './queue.js';
import type { QueueStateCommon } from './state.js';

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

/** Copies the configuration part of a saved state onto a new queue. */
export function applyCommonState(q: Queue, c: Omit<QueueStateCommon, 'version'>): void {
  q.size = c.size;
  q.ready = c.ready;
  q.descTableAddress = c.descTableAddress;
  q.availRingAddress = c.availRingAddress;
  q.usedRingAddress = c.usedRingAddress;
  q.usesNotifSuppression = c.eventIdx;
  q.indirectDesc = c.indirectDesc;
}

/**
 * Initialises a queue being restored from an active state, turning a configuration the memory
 * cannot hold into a {@link SnapshotError} named `<format>.<field>`.
 */
export function initializeRestored(q: Queue, memory: GuestMemory | null, format: string): void {
  if (memory === null)
    throw new SnapshotError(`${format}.active`, 'an active queue needs guest memory');
  try {
    q.initialize(memory);
  } catch (e) {
    if (e instanceof QueueConfigError) throw new SnapshotError(`${format}.${e.field}`, e.message);
    throw e;
  }
}
