/**
 * What the parent, the driver worker and the device worker of the two-thread stress test
 * agree on: the workerData shape, the control block, the per-chain data pattern and the
 * reports. Nothing here depends on the ring kind.
 */
import type { SharedMemoryHandle } from '../../../src/memory/index.js';

/** Int32 slots of the control SharedArrayBuffer. */
export const CTL = {
  /** Driver -> device notifications (available buffers); the device waits on it. */
  KICKS: 0,
  /** Device -> driver notifications (used buffers); the driver waits on it. */
  IRQS: 1,
  /** Set by the parent (timeout) or by a failing worker: everyone stops. */
  STOP: 2,
  /** Set to 1 by the driver once its rings are in place; the device starts after that. */
  DRIVER_READY: 3,
  /** Chains the driver has verified so far (for the parent's timeout report). */
  COMPLETED: 4,
  /** Chains the device has processed so far. */
  PROCESSED: 5,
} as const;
export const CTL_SLOTS = 8;

/** Everything a worker needs, structured-clone safe. */
export interface StressConfig {
  /** Module the bootstrap loads (file URL of stress-driver.ts or stress-device.ts). */
  entry: string;
  /** Ring kind name, a key of RING_KINDS. */
  kind: string;
  memory: SharedMemoryHandle;
  control: SharedArrayBuffer;
  /** Queue size (a power of two for the split ring, any size for the packed ring). */
  queueSize: number;
  /** Where the rings start, and the ring kind's own layout description. */
  ringBase: number;
  ring: unknown;
  /** First byte of the per-slot buffer area, and bytes per slot. */
  slotBase: number;
  slotBytes: number;
  chains: number;
  eventIdx: boolean;
  /** Every chain goes through an indirect table. */
  indirect: boolean;
  /**
   * VIRTIO_F_IN_ORDER: the device completes through an InOrderCompleter (collapsed batches,
   * completions finished out of order and held back), and the driver checks that chains come
   * back in the order it made them available. The device fills every writable buffer (see
   * {@link writtenLength}), since a collapsed batch reports no length for its other chains.
   */
  inOrder: boolean;
  /** Safety-net timeout of each Atomics.wait, ms. */
  waitMs: number;
}

/** Counters each side reports when it finishes. */
export interface SideReport {
  /** Chains completed (driver) or processed (device). */
  chains: number;
  /** Notifications this side sent to the other. */
  notificationsSent: number;
  /** Times this side went to sleep on Atomics.wait. */
  waits: number;
  /** Waits ended by a notification (or a changed counter). */
  notifiedWakeups: number;
  /** Waits that timed out with work pending: progress that came only from the safety net. */
  timeoutWakeupsWithWork: number;
  /** Waits that timed out with nothing to do (the other side was busy or descheduled). */
  idleTimeouts: number;
  /** Times arming notifications found work already there (the re-check that avoids a lost wakeup). */
  recheckHits: number;
  /** Used entries the device wrote (one per chain, or one per collapsed batch); 0 for the driver. */
  usedEntries: number;
  elapsedMs: number;
}

export type WorkerMessage =
  | { type: 'done'; report: SideReport }
  | { type: 'error'; message: string; stack?: string };

// ---- the data each chain carries ----

/** Device-readable bytes of chain `seq` (the first 4 hold `seq`). */
export function readableLength(seq: number): number {
  return 4 + ((seq * 7) % 61);
}

/** Device-writable capacity of chain `seq`. */
export function writableCapacity(seq: number): number {
  return 8 + ((seq * 13) % 57);
}

/**
 * Bytes the device writes into chain `seq` (and reports as the used length). In-order runs
 * (`full`) fill the whole writable part: a collapsed batch tells the driver only the length of
 * its last chain, and the driver takes the others as wholly written (VIRTIO 1.2 §2.7.9).
 */
export function writtenLength(seq: number, full = false): number {
  return full ? writableCapacity(seq) : writableCapacity(seq) - (seq % 5);
}

/** Number of readable / writable buffers of chain `seq` (1 or 2 each). */
export function readableBuffers(seq: number): number {
  return 1 + (seq & 1);
}
export function writableBuffers(seq: number): number {
  return 1 + ((seq >>> 1) & 1);
}

/** Byte k of the readable data of chain `seq`: seq little-endian, then a pattern. */
export function readableByte(seq: number, k: number): number {
  if (k < 4) return (seq >>> (8 * k)) & 0xff;
  return (seq * 31 + k * 7 + (seq >>> 8)) & 0xff;
}

/** Byte k of what the device writes back for chain `seq` (a transform of the input). */
export function writtenByte(seq: number, k: number): number {
  return (~(seq + k * 13) ^ 0x5a) & 0xff;
}

/** What the driver pre-fills writable buffers with, to catch writes past the reported length. */
export const SENTINEL = 0xee;

/** Offsets of a slot's buffers: up to two readable, two writable, and an indirect table. */
export const SLOT = {
  readable: [0, 128] as const,
  writable: [256, 384] as const,
  table: 512,
  bytes: 640,
} as const;

/** Splits `total` bytes over `n` (1 or 2) buffers: [first, second]. */
export function split(total: number, n: number): [number, number] {
  if (n === 1) return [total, 0];
  const first = (total + 1) >>> 1;
  return [first, total - first];
}
