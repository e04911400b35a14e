/**
 * virtq/vhost-user (Node, Linux only): serves a virtq device to a real VMM (QEMU, Cloud
 * Hypervisor, DPDK's virtio-user) over a vhost-user socket. {@link VhostUserBackend} is the
 * back-end (the protocol, the memory table, the rings, each optionally on its own worker
 * thread); the codec, the memory table, the dirty log and the inflight buffer are exported for
 * tools and tests; the native layer underneath (Unix sockets with descriptor passing, mmap of
 * received memory, eventfds, descriptor watchers) is loaded only when {@link loadNative} is
 * called. See docs/DESIGN.md, "vhost-user".
 */

export {
  VHOST_USER_BACKEND_MAX_MEM_SLOTS,
  VHOST_USER_BACKEND_PROTOCOL_FEATURES,
  VhostUserBackend,
  type VhostUserBackendOptions,
  type VhostUserBackendStats,
} from './backend.js';
export * from './codec.js';
export { DirtyLog } from './dirty-log.js';
export {
  InflightBuffer,
  type InflightResume,
  SplitInflight,
  splitInflightBytes,
  splitInflightRegionBytes,
} from './inflight.js';
export {
  type MappedMemoryRegion,
  MemoryTable,
  MemoryTableError,
  mapShared,
  type SharedMapping,
} from './memory-table.js';
export {
  type FdWatcher,
  isNativeAvailable,
  loadNative,
  type MappingStats,
  NATIVE_ABI_VERSION,
  NativeAddonUnavailableError,
  type NativeConstants,
  nativeAddonPath,
  nativePrebuildsDir,
  type RecvResult,
  type TunInterface,
  type VhostUserNative,
  type WatchCallback,
} from './native.js';
export {
  PackedInflight,
  type PackedInflightResume,
  packedInflightRegionBytes,
} from './packed-inflight.js';
