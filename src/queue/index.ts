/**
 * Virtqueues, device side: the split ring ({@link SplitQueue}) and the packed ring
 * ({@link PackedQueue}) behind one {@link Queue} interface, validated descriptor chains,
 * notification suppression, in-order completion and JSON-safe snapshots.
 *
 * @module virtq/queue
 */

// Popped chains and completing them
export { type Descriptor, DescriptorChain, type DescriptorChainConstructor } from './chain.js';
// Spec constants: descriptor and ring flags, feature bits
export {
  DESCRIPTOR_SIZE,
  MAX_QUEUE_SIZE,
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_IN_ORDER,
  VIRTIO_F_INDIRECT_DESC,
  VIRTIO_F_RING_PACKED,
  VIRTIO_F_VERSION_1,
  VIRTQ_AVAIL_F_NO_INTERRUPT,
  VIRTQ_DESC_F_AVAIL,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_USED,
  VIRTQ_DESC_F_WRITE,
  VIRTQ_USED_F_NO_NOTIFY,
} from './constants.js';
export { type AnyQueue, createQueue, queueFromState } from './factory.js';
export { InOrderCompleter, type InOrderTarget } from './in-order.js';
// Where queues report what a guest did wrong
export { consoleLogger, type Logger, silentLogger } from './logger.js';
export {
  PACKED_DESC_RING_ALIGN,
  PACKED_EVENT_ALIGN,
  PACKED_EVENT_BYTES,
  type PackedLayout,
  packedDescRingBytes,
  packedLayout,
  packOffWrap,
  RING_EVENT_FLAGS_DESC,
  RING_EVENT_FLAGS_DISABLE,
  RING_EVENT_FLAGS_ENABLE,
} from './packed/layout.js';
export { PackedQueue, type PackedQueueOptions } from './packed/queue.js';
export {
  type PackedQueueTracker,
  type RedeliveredBuffer,
  TrackedPackedQueue,
} from './packed/tracked.js';
// The queue interface and its two implementations
export type { Queue, RingFormat } from './queue.js';
// Ring sizes and layouts (VIRTIO 1.2 §2.7.1 to §2.7.8, §2.8.10 to §2.8.13)
export {
  AVAIL_RING_ALIGN,
  availEventOffset,
  availRingBytes,
  DESC_TABLE_ALIGN,
  descTableBytes,
  type SplitLayout,
  splitLayout,
  USED_RING_ALIGN,
  usedEventOffset,
  usedRingBytes,
} from './split/layout.js';
export { SplitQueue, type SplitQueueOptions } from './split/queue.js';
export { type SplitQueueTracker, TrackedSplitQueue } from './split/tracked.js';
// Snapshots
export {
  type PackedQueueState,
  QUEUE_STATE_VERSION,
  type QueueState,
  type QueueStateCommon,
  type SplitQueueState,
} from './state.js';
