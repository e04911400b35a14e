// virtio-console (VIRTIO 1.2 §5.3): the device, its backends, its feature bits and snapshot.
export {
  type ConsoleBackend,
  ConsolePipe,
  type ConsolePipeOptions,
  type ConsolePort,
} from './backend.js';
export {
  CONSOLE_DEFAULT_MAX_BYTES_PER_TRANSMIT,
  CONSOLE_RX_QUEUE,
  CONSOLE_TX_QUEUE,
  ConsoleDevice,
  type ConsoleOptions,
} from './device.js';
export {
  CONSOLE_CONFIG_COLS,
  CONSOLE_CONFIG_EMERG_WR,
  CONSOLE_CONFIG_MAX_NR_PORTS,
  CONSOLE_CONFIG_ROWS,
  CONSOLE_CONFIG_SIZE,
  VIRTIO_CONSOLE_F_EMERG_WRITE,
  VIRTIO_CONSOLE_F_MULTIPORT,
  VIRTIO_CONSOLE_F_SIZE,
} from './request.js';
export type { ConsoleState, ConsoleStats } from './state.js';
