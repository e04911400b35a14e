export * from './layout.js';
export { SplitQueue, type SplitQueueOptions } from './queue.js';
export { type SplitQueueTracker, TrackedSplitQueue } from './tracked.js';
