export { type ConsoleBackend, ConsolePipe, type ConsolePort } from './backend.js';
export { ByteQueue } from './byte-queue.js';
export {
  CONSOLE_RX_QUEUE,
  CONSOLE_TX_QUEUE,
  ConsoleDevice,
  type ConsoleOptions,
} from './device.js';
export * from './request.js';
export {
  bytesToLatin1,
  type ConsoleState,
  type ConsoleStats,
  emptyConsoleStats,
  readConsoleState,
} from './state.js';
