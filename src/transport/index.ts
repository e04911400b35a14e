export * from './mmio.js';
