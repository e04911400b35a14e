export * from './block.js';
export * from './console.js';
export * from './net.js';
export * from './waiter.js';
