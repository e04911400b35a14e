// Devices in a worker: the worker side (runDeviceWorker, DeviceHost) and the emulator side
// (DeviceWorkerLink, WorkerDeviceProxy), joined by a SharedArrayBuffer and a message port.
export { DeviceHost, type DeviceHostOptions } from './host.js';
export { DeviceWorkerLink, type DeviceWorkerLinkOptions } from './link.js';
export {
  type DeviceDescription,
  type DevicePort,
  eventTargetPort,
  type HostTuning,
} from './protocol.js';
export {
  DeviceWorkerError,
  WorkerDeviceProxy,
  type WorkerDeviceProxyOptions,
  WorkerInterruptWaiter,
} from './proxy.js';
export { type DeviceFactory, type RunDeviceWorkerOptions, runDeviceWorker } from './worker.js';
