export { SMALL_COPY_BYTES } from './cursor.js';
export { ChainReader } from './reader.js';
export { ChainWriter } from './writer.js';
