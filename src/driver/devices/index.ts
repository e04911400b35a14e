export * from './block.js';
export {
  type BlockCompletion,
  type BlockDriverConfig,
  type BlockDriverOptions,
  type BlockDriverRequest,
  BlockRequestAbortedError,
  type BlockSegment,
  BlockStatusError,
  type BlockTicket,
} from './block-request.js';
export * from './console.js';
export * from './net.js';
export * from './waiter.js';
