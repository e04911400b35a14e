import type { DriverBuffer } from './split.js';

/** What a guest-side queue of either ring format offers a device driver. */
export interface DriverQueue {
  readonly size: number;
  /** Free descriptors. */
  readonly numFree: number;
  /** Length the device reported for the element {@link popUsed} returned last. */
  readonly lastUsedLen: number;
  /** Adds a chain of device-readable then device-writable buffers; returns its id. */
  add(readable: readonly DriverBuffer[], writable?: readonly DriverBuffer[]): number;
  /** Adds a chain through an indirect table written at `tableAddr`. */
  addIndirect(
    tableAddr: number,
    readable: readonly DriverBuffer[],
    writable?: readonly DriverBuffer[],
  ): number;
  /** Publishes what was added; true when the device wants a notification. */
  kick(): boolean;
  /** True when used buffers wait to be collected. */
  hasUsed(): boolean;
  /** The next used chain's id (and lastUsedLen), or -1. */
  popUsed(): number;
}
