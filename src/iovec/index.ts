/**
 * Scatter-gather access to a popped chain's buffers: {@link ChainReader} over the
 * device-readable part, {@link ChainWriter} over the device-writable part.
 *
 * @module virtq/iovec
 */

export type { ChainCursor } from './cursor.js';
export { ChainReader } from './reader.js';
export { ChainWriter } from './writer.js';
