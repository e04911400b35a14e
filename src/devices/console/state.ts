import { SnapshotError } from '../../errors.js';
import { StateReader } from '../../queue/state.js';

/** Counters of a console device. */
export interface ConsoleStats {
  /** Bytes written to the guest's receive buffers. */
  bytesIn: number;
  /** Bytes the guest transmitted to the port. */
  bytesOut: number;
  /** Bytes written through emerg_wr. */
  emergencyBytes: number;
  /** Receive chains returned unused, and transmit chains dropped, as unsupported. */
  rxBadBuffers: number;
  txUnsupported: number;
}

export function emptyConsoleStats(): ConsoleStats {
  return { bytesIn: 0, bytesOut: 0, emergencyBytes: 0, rxBadBuffers: 0, txUnsupported: 0 };
}

/**
 * Device-specific saved state of a console: the input bytes waiting in the device for receive
 * buffers (so that none is lost or delivered twice across a restore), the console size and
 * the counters.
 */
export interface ConsoleState {
  /** Pending input, one character per byte (code points 0..255). */
  pendingInput: string;
  cols: number;
  rows: number;
  stats: ConsoleStats;
}

/** Bytes as a string of code points 0..255 (JSON-safe). */
export function bytesToLatin1(bytes: Uint8Array): string {
  let s = '';
  for (let i = 0; i < bytes.length; i += 4096) {
    s += String.fromCharCode(...bytes.subarray(i, Math.min(bytes.length, i + 4096)));
  }
  return s;
}

export interface ConsoleStateRead {
  pendingInput: Uint8Array;
  cols: number;
  rows: number;
  stats: ConsoleStats;
}

export function readConsoleState(value: unknown): ConsoleStateRead {
  const r = StateReader.root(value, 'device.console');
  const text = (value as { pendingInput?: unknown }).pendingInput;
  if (typeof text !== 'string')
    throw new SnapshotError('device.console.pendingInput', 'expected a string');
  const pendingInput = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c > 0xff)
      throw new SnapshotError('device.console.pendingInput', `character ${i} is not a byte`);
    pendingInput[i] = c;
  }
  const sr = StateReader.root((value as { stats?: unknown }).stats, 'device.console.stats');
  const stats = emptyConsoleStats();
  for (const k of Object.keys(stats) as (keyof ConsoleStats)[])
    stats[k] = sr.int(k, 0, Number.MAX_SAFE_INTEGER);
  return { pendingInput, cols: r.int('cols', 0, 0xffff), rows: r.int('rows', 0, 0xffff), stats };
}
