/**
 * Devices behind one {@link VirtioDevice} interface: rng, block, console and net, with their
 * backends, feature bits and saved-state types; the base class a new device extends; and the
 * runner that serves devices from a worker over a SharedArrayBuffer.
 *
 * @module virtq/devices
 */

// The devices (each folder's index lists what it makes public)
export * from './block/index.js';

// Bounded work per notification: the per-turn budget and how a spent turn continues
export {
  DEFAULT_BYTES_PER_TURN,
  type DeviceBudgetOptions,
  defaultScheduler,
  type Scheduler,
} from './budget.js';
export * from './console/index.js';
// What every device implements, and the base class new devices extend
export {
  type DeviceContext,
  type DeviceState,
  type FrontEndQueues,
  featureBit,
  hasFeature,
  type InterruptSink,
  STATUS_ACKNOWLEDGE,
  STATUS_DEVICE_NEEDS_RESET,
  STATUS_DRIVER,
  STATUS_DRIVER_OK,
  STATUS_FAILED,
  STATUS_FEATURES_OK,
  VIRTIO_ID_BLOCK,
  VIRTIO_ID_CONSOLE,
  VIRTIO_ID_NET,
  VIRTIO_ID_RNG,
  type VirtioDevice,
  VirtioDeviceBase,
} from './device.js';
export * from './net/index.js';
export * from './rng/index.js';
// Devices served from a worker thread
export * from './runner/index.js';
export type { SavedChain } from './saved-chain.js';
