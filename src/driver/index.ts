export { GuestAllocator } from './allocator.js';
export * from './devices/index.js';
export { FeaturesRefusedError, type MmioBus, MmioGuestDriver } from './mmio.js';
export {
  PackedDriver,
  type PackedDriverOptions,
  packedAvailFlags,
  packedUsedFlags,
} from './packed.js';
export type { DriverQueue } from './queue.js';
export { type RawPackedDesc, type RawPackedEvent, RawPackedRing } from './raw-packed.js';
export { RawSplitRing } from './raw-split.js';
export {
  DeviceBehaviourError,
  type DriverBuffer,
  SplitDriver,
  type SplitDriverOptions,
} from './split.js';
