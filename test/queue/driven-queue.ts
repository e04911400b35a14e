/**
 * A device-side queue of either format set up over one guest memory with a spec-exact driver
 * of the same format on the other side, as a transport would configure it.
 */
import { type DriverQueue, PackedDriver, SplitDriver } from '../../src/driver/index.js';
import { GuestMemory } from '../../src/memory/index.js';
import { createQueue, type Queue, type RingFormat } from '../../src/queue/index.js';

export interface DrivenQueueOptions {
  eventIdx?: boolean;
  inOrder?: boolean;
  indirect?: boolean;
  memoryBytes?: number;
}

export function drivenQueue(
  format: RingFormat,
  size: number,
  o: DrivenQueueOptions = {},
): { memory: GuestMemory; queue: Queue; driver: DriverQueue } {
  const memory = GuestMemory.create(o.memoryBytes ?? 2 << 20);
  const queue = createQueue(format, size);
  const eventIdx = o.eventIdx ?? false;
  const inOrder = o.inOrder ?? false;
  let driver: DriverQueue;
  if (format === 'split') {
    const d = new SplitDriver(memory, { size, base: 0, eventIdx, inOrder });
    queue.descTableAddress = d.layout.desc;
    queue.availRingAddress = d.layout.avail;
    queue.usedRingAddress = d.layout.used;
    driver = d;
  } else {
    const d = new PackedDriver(memory, { size, base: 0, eventIdx, inOrder });
    queue.descTableAddress = d.layout.desc;
    queue.availRingAddress = d.layout.driver;
    queue.usedRingAddress = d.layout.device;
    driver = d;
  }
  queue.size = size;
  queue.ready = true;
  queue.usesNotifSuppression = eventIdx;
  queue.indirectDesc = o.indirect ?? false;
  queue.initialize(memory);
  return { memory, queue, driver };
}
