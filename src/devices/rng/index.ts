export { cryptoSource, type EntropySource, RngDevice, type RngOptions } from './device.js';
export { parseRngRequest, type RngRequest } from './request.js';
export { type RngState, readRngState } from './state.js';
