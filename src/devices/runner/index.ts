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
export { agentCanBlock } from './wait.js';
export { type DeviceFactory, type RunDeviceWorkerOptions, runDeviceWorker } from './worker.js';
