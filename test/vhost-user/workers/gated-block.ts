/**
 * A block device for ring-worker tests, built inside a worker from a `module` device spec: its
 * disk is a SharedArrayBuffer the test also sees, and a read of sector GATED_SECTOR blocks the
 * worker's thread until the test opens the gate (Int32 0 of `gate` set non-zero and notified);
 * Int32 1 counts arrivals at the gate, Int32 2 holds a worker's start (see `holdLoad`).
 */
import { isMainThread } from 'node:worker_threads';
import { BlockDevice, MemoryBackend } from '../../../src/devices/index.js';

export const GATED_SECTOR = 100;

export function create(options: {
  image: SharedArrayBuffer;
  gate: SharedArrayBuffer;
  numQueues: number;
  /** In a worker, wait until Int32 2 of `gate` is non-zero before building (a slow start). */
  holdLoad?: boolean;
}): BlockDevice {
  const disk = new MemoryBackend(new Uint8Array(options.image));
  const gate = new Int32Array(options.gate);
  if (options.holdLoad === true && !isMainThread) {
    while (Atomics.load(gate, 2) === 0) Atomics.wait(gate, 2, 0, 100);
  }
  const read = disk.read.bind(disk);
  disk.read = (offset, dst, dstOffset, length) => {
    if (offset === GATED_SECTOR * 512) {
      // Count the arrival, then wait for the test.
      Atomics.add(gate, 1, 1);
      Atomics.notify(gate, 1);
      while (Atomics.load(gate, 0) === 0) Atomics.wait(gate, 0, 0, 100);
    }
    read(offset, dst, dstOffset, length);
  };
  return new BlockDevice({ backend: disk, numQueues: options.numQueues, queueSize: 64 });
}
