export { type Descriptor, DescriptorChain } from './chain.js';
export * from './constants.js';
export { type AnyQueue, createQueue, queueFromState } from './factory.js';
export { InOrderCompleter, type InOrderTarget } from './in-order.js';
export { consoleLogger, type Logger, silentLogger } from './logger.js';
export * from './packed/index.js';
export type { Queue, RingFormat } from './queue.js';
export * from './split/index.js';
export {
  type PackedQueueState,
  QUEUE_STATE_VERSION,
  type QueueState,
  type QueueStateCommon,
  type SplitQueueState,
  StateReader,
} from './state.js';
