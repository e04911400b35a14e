export { eventInWindow, eventWanted } from './event.js';
export * from './layout.js';
export { PackedQueue, type PackedQueueOptions } from './queue.js';
