export { RawSplitRing } from './raw-split.js';
export {
  DeviceBehaviourError,
  type DriverBuffer,
  SplitDriver,
  type SplitDriverOptions,
} from './split.js';
