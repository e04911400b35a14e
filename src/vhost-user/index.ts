/**
 * virtq/vhost-user (Node, Linux only): the vhost-user transport. For now this holds the native
 * layer it is built on: Unix sockets with descriptor passing, mmap of received memory, eventfds
 * and descriptor watchers. Nothing here is loaded until {@link loadNative} is called.
 */

export * from './codec.js';
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
