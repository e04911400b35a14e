export { ConsoleStreamBackend } from './console-stream.js';
export { buildDevices, type DeviceWorkerSpec } from './device-factories.js';
export {
  NodeDeviceWorker,
  nodePort,
  type SpawnDeviceWorkerOptions,
  startModuleWorker,
} from './device-worker.js';
export { type FileEntropySource, openFileEntropySource } from './entropy-file.js';
export { FileBackend, type FileBackendOptions, type PunchHole } from './file-backend.js';
export {
  TAP_NAME_MAX_BYTES,
  TapNetBackend,
  type TapNetOptions,
  TapUnavailableError,
  type TapUnavailableReason,
  tapNameProblem,
} from './net-tap.js';
export { UdpNetBackend, type UdpNetOptions } from './net-udp.js';
export { INLINING_BUDGET, INLINING_BUDGET_FLAG, raiseInliningBudget } from './v8-tuning.js';
