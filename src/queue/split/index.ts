export * from './layout.js';
export { SplitQueue, type SplitQueueOptions } from './queue.js';
