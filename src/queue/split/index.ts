export * from './layout.js';
export { SplitQueue, type SplitQueueOptions, type SplitQueueTracker } from './queue.js';
