export * from './block/index.js';
export * from './console/index.js';
export * from './device.js';
export * from './net/index.js';
export * from './rng/index.js';
export * from './runner/index.js';
