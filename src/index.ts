export * from './devices/index.js';
export * from './driver/index.js';
export * from './errors.js';
export * from './iovec/index.js';
export * from './memory/index.js';
export * from './queue/index.js';
export * from './transport/index.js';
