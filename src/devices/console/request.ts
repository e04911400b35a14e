import type { DescriptorChain } from '../../queue/chain.js';

/** Console device feature bits (VIRTIO 1.2 §5.3.3). */
export const VIRTIO_CONSOLE_F_SIZE = 0;
export const VIRTIO_CONSOLE_F_MULTIPORT = 1;
export const VIRTIO_CONSOLE_F_EMERG_WRITE = 2;

/** Offsets of struct virtio_console_config (§5.3.4). */
export const CONSOLE_CONFIG_COLS = 0;
export const CONSOLE_CONFIG_ROWS = 2;
export const CONSOLE_CONFIG_MAX_NR_PORTS = 4;
export const CONSOLE_CONFIG_EMERG_WR = 8;
export const CONSOLE_CONFIG_SIZE = 12;

/** Why a receive chain is returned with nothing written. */
export type ConsoleRxUnsupportedReason =
  /** §5.3.6.1: the driver MUST NOT put a device-readable buffer in a receiveq. */
  | 'readable-descriptors'
  /** The chain has no writable byte. */
  | 'no-writable-bytes';

export interface ConsoleRxBuffer {
  kind: 'buffer';
  capacity: number;
}

export interface ConsoleRxUnsupported {
  kind: 'unsupported';
  reason: ConsoleRxUnsupportedReason;
}

export type ConsoleRxRequest = ConsoleRxBuffer | ConsoleRxUnsupported;

/** Why a transmit chain is dropped. */
export type ConsoleTxUnsupportedReason =
  /** §5.3.6.1: the driver MUST NOT put a device-writable buffer in a transmitq. */
  'writable-descriptors';

export interface ConsoleTxOutput {
  kind: 'output';
  /** Bytes to write to the port. */
  length: number;
}

export interface ConsoleTxUnsupported {
  kind: 'unsupported';
  reason: ConsoleTxUnsupportedReason;
}

export type ConsoleTxRequest = ConsoleTxOutput | ConsoleTxUnsupported;

const RX_READABLE: ConsoleRxUnsupported = { kind: 'unsupported', reason: 'readable-descriptors' };
const RX_EMPTY: ConsoleRxUnsupported = { kind: 'unsupported', reason: 'no-writable-bytes' };
const TX_WRITABLE: ConsoleTxUnsupported = { kind: 'unsupported', reason: 'writable-descriptors' };

/** Classifies a receiveq chain (`out` is returned filled in: no allocation). */
export function parseConsoleRx(chain: DescriptorChain, out: ConsoleRxBuffer): ConsoleRxRequest {
  if (chain.readableLength > 0) return RX_READABLE;
  if (chain.writableLength === 0) return RX_EMPTY;
  out.capacity = chain.writableLength;
  return out;
}

/** Classifies a transmitq chain (`out` is returned filled in: no allocation). */
export function parseConsoleTx(chain: DescriptorChain, out: ConsoleTxOutput): ConsoleTxRequest {
  if (chain.writableLength > 0) return TX_WRITABLE;
  out.length = chain.readableLength;
  return out;
}
