/**
 * virtq/vhost-user (Node, Linux only): the vhost-user transport. For now this holds the native
 * layer it is built on: Unix sockets with descriptor passing, mmap of received memory, eventfds
 * and descriptor watchers. Nothing here is loaded until {@link loadNative} is called.
 */

export {
  VHOST_USER_BACKEND_MAX_MEM_SLOTS,
  VHOST_USER_BACKEND_PROTOCOL_FEATURES,
  VhostUserBackend,
  type VhostUserBackendOptions,
  type VhostUserBackendStats,
} from './backend.js';
export * from './codec.js';
export { type MappedMemoryRegion, MemoryTable, MemoryTableError } from './memory-table.js';
export {
  type FdWatcher,
  isNativeAvailable,
  loadNative,
  type MappingStats,
  NATIVE_ABI_VERSION,
  NativeAddonUnavailableError,
  type NativeConstants,
  nativeAddonPath,
  type RecvResult,
  type VhostUserNative,
  type WatchCallback,
} from './native.js';
