// virtio-rng (VIRTIO 1.2 §5.4): the device, its entropy source and snapshot.
export {
  cryptoSource,
  type EntropySource,
  RNG_DEFAULT_MAX_BYTES_PER_REQUEST,
  RNG_SOURCE_RETRY_MS,
  RngDevice,
  type RngOptions,
  type RngRateLimit,
} from './device.js';
export type { RngState } from './state.js';
