/** What the main thread and the two ping-pong workers (pingpong-worker.ts) share. */

import type { SharedMemoryHandle } from '../../src/memory/index.js';
import type { Measurement, TimingOptions } from './harness.js';

/** Slots of the control array. */
export const CTL_KICKS = 0;
export const CTL_IRQS = 1;
export const CTL_STOP = 2;
export const CTL_WORDS = 4;

export interface PingPongData {
  role: 'driver' | 'device';
  memory: SharedMemoryHandle;
  control: SharedArrayBuffer;
  eventIdx: boolean;
  batch: number;
  timing: TimingOptions;
}

/** What the driver posts when it is done. */
export interface DriverResult {
  measurement: Measurement;
  rounds: number;
  kicks: number;
  sleeps: number;
}

/** What the device posts when it stops. */
export interface DeviceResult {
  chains: number;
  interrupts: number;
  sleeps: number;
  checksum: number;
}
