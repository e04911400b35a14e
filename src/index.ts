export * from './driver/index.js';
export * from './errors.js';
export * from './memory/index.js';
export * from './queue/index.js';
