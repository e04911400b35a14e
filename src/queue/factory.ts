import { SnapshotError } from '../errors.js';
import type { GuestMemory } from '../memory/guest-memory.js';
import type { Logger } from './logger.js';
import { PackedQueue } from './packed/queue.js';
import type { Queue, RingFormat } from './queue.js';
import { SplitQueue } from './split/queue.js';
import type { QueueState } from './state.js';

/** A queue of either format, with the snapshot methods both have. */
export type AnyQueue = SplitQueue | PackedQueue;

/** A new, unconfigured queue of the given ring format. */
export function createQueue(
  format: RingFormat,
  maxSize: number,
  options: { logger?: Logger } = {},
): AnyQueue {
  return format === 'packed' ? new PackedQueue(maxSize, options) : new SplitQueue(maxSize, options);
}

/** Rebuilds a queue from a saved state of either format (see {@link QueueState}). */
export function queueFromState(
  state: unknown,
  memory: GuestMemory | null,
  options: { logger?: Logger } = {},
): AnyQueue {
  const format = (state as { format?: unknown } | null)?.format;
  if (format === 'split') return SplitQueue.fromState(state, memory, options);
  if (format === 'packed') return PackedQueue.fromState(state, memory, options);
  throw new SnapshotError(
    'queue.format',
    `expected "split" or "packed", got ${JSON.stringify(format) ?? 'nothing'}`,
  );
}

export type { Queue, QueueState };
