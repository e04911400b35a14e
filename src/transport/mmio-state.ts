/**
 * Saved state of a virtio-mmio transport: its shape, and reading one back with the rules the
 * register interface enforces (see {@link readMmioState}).
 */
import {
  type DeviceContext,
  type DeviceState,
  hasFeature,
  STATUS_ACKNOWLEDGE,
  STATUS_DRIVER,
  STATUS_DRIVER_OK,
  STATUS_FAILED,
  STATUS_FEATURES_OK,
  type VirtioDevice,
} from '../devices/device.js';
import { SnapshotError } from '../errors.js';
import type { GuestMemory } from '../memory/guest-memory.js';
import {
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_INDIRECT_DESC,
  VIRTIO_F_RING_PACKED,
} from '../queue/constants.js';
import { createQueue, queueFromState } from '../queue/factory.js';
import type { Logger } from '../queue/logger.js';
import type { Queue } from '../queue/queue.js';
import { nestedState, StateReader } from '../queue/state.js';
import { INT_CONFIG_CHANGE, INT_USED_BUFFER } from './mmio-registers.js';

const TWO_32 = 2 ** 32;

/** Saved state of an mmio transport and its device. */
export interface MmioState {
  version: 1;
  status: number;
  deviceFeaturesSel: number;
  driverFeaturesSel: number;
  driverFeatures: string;
  queueSel: number;
  interruptStatus: number;
  /** Format of the queues (decided at FEATURES_OK). */
  packed: boolean;
  /** Per-queue configuration registers (for queues not yet initialised too). */
  queues: unknown[];
  device: DeviceState | null;
}

/**
 * Validates a saved transport state (everything but the device's own state) into new values,
 * with the rules the register interface enforces: a status the §3.1.1 sequence can reach,
 * features the device accepts once FEATURES_OK is set, queues of the negotiated format that
 * only a driver past FEATURES_OK could have configured and only DRIVER_OK initialises.
 */
export function readMmioState(
  state: unknown,
  device: VirtioDevice,
  memory: GuestMemory,
  logger: Logger,
): SavedTransport {
  const r = StateReader.root(state, 'mmio');
  r.literal('version', [1]);
  const status = r.int('status', 0, 0xff);
  const base = status & ~STATUS_FAILED;
  // §3.1.1: ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK, each after the one before; FAILED
  // may join at any step (§2.1.1). DEVICE_NEEDS_RESET is the device's, never saved here.
  if (!REACHABLE_STATUS.includes(base)) {
    throw new SnapshotError('mmio.status', `${status} is not a status the driver can reach`);
  }
  const featuresOk = (status & STATUS_FEATURES_OK) !== 0;
  const live = (status & STATUS_DRIVER_OK) !== 0;
  const deviceFeaturesSel = r.int('deviceFeaturesSel', 0, 0xffffffff);
  const driverFeaturesSel = r.int('driverFeaturesSel', 0, 0xffffffff);
  const features = r.hex64('driverFeatures');
  if ((status & STATUS_DRIVER) === 0 && features !== 0n) {
    // §3.1.1: features are written only after DRIVER.
    throw new SnapshotError('mmio.driverFeatures', 'set before DRIVER');
  }
  if (featuresOk) {
    // §3.1.1 step 5: FEATURES_OK only over features the device accepts (a subset of offered).
    if ((features & ~device.offeredFeatures) !== 0n)
      throw new SnapshotError('mmio.driverFeatures', 'names features the device does not offer');
    if (!device.acceptFeatures(features))
      throw new SnapshotError('mmio.driverFeatures', 'the device does not accept these features');
  }
  const queueSel = r.int('queueSel', 0, 0xffffffff);
  const interruptStatus = r.int('interruptStatus', 0, INT_USED_BUFFER | INT_CONFIG_CHANGE);
  if (interruptStatus !== 0 && !live) {
    throw new SnapshotError('mmio.interruptStatus', 'a device that is not live raises none');
  }
  const packed = r.bool('packed');
  if (packed !== (featuresOk && hasFeature(features, VIRTIO_F_RING_PACKED))) {
    throw new SnapshotError('mmio.packed', 'does not match the negotiated features');
  }
  const format = packed ? 'packed' : 'split';
  const maxSizes = device.queueMaxSizes;
  const rawQueues = r.array('queues', maxSizes.length);
  if (rawQueues.length !== maxSizes.length) {
    throw new SnapshotError('mmio.queues', `expected ${maxSizes.length} queue states`);
  }
  const eventIdx = featuresOk && hasFeature(features, VIRTIO_F_EVENT_IDX);
  const indirect = featuresOk && hasFeature(features, VIRTIO_F_INDIRECT_DESC);
  const queues = rawQueues.map((qs, i) => {
    const path = `mmio.queues.${i}`;
    const q = nestedState(path, () => queueFromState(qs, memory, { logger: logger }));
    if (q.format !== format)
      throw new SnapshotError(`${path}.format`, 'does not match the negotiated features');
    if (q.maxSize !== maxSizes[i])
      throw new SnapshotError(`${path}.maxSize`, `the device's queue ${i} has ${maxSizes[i]}`);
    if (!featuresOk) {
      // Queue registers are writable only after FEATURES_OK (§4.2.3.2): still as created.
      const fresh = createQueue('split', q.maxSize).save();
      if (JSON.stringify(q.save()) !== JSON.stringify(fresh))
        throw new SnapshotError(path, 'configured before FEATURES_OK');
      return q;
    }
    if (q.usesNotifSuppression !== eventIdx)
      throw new SnapshotError(`${path}.eventIdx`, 'does not match the negotiated features');
    if (q.indirectDesc !== indirect)
      throw new SnapshotError(`${path}.indirectDesc`, 'does not match the negotiated features');
    if (q.isActive && !live)
      throw new SnapshotError(`${path}.active`, 'queues are initialised at DRIVER_OK');
    if (q.isActive && !q.ready)
      throw new SnapshotError(`${path}.active`, 'an active queue is ready');
    return q;
  });
  const addrHalves = new Uint32Array(6 * queues.length);
  queues.forEach((q, i) => {
    const addrs = [q.descTableAddress, q.availRingAddress, q.usedRingAddress];
    addrs.forEach((a, k) => {
      addrHalves[6 * i + 2 * k] = a % TWO_32;
      addrHalves[6 * i + 2 * k + 1] = Math.floor(a / TWO_32);
    });
  });
  return {
    status,
    live,
    deviceFeaturesSel,
    driverFeaturesSel,
    features,
    queueSel,
    interruptStatus,
    packed,
    queues,
    addrHalves,
    deviceState: r.raw('device'),
  };
}

/** Statuses (FAILED aside) the driver reaches one §3.1.1 step at a time. */
const REACHABLE_STATUS: readonly number[] = [
  0,
  STATUS_ACKNOWLEDGE,
  STATUS_ACKNOWLEDGE | STATUS_DRIVER,
  STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
  STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
];

/** A saved transport state, validated. */
export interface SavedTransport {
  status: number;
  live: boolean;
  deviceFeaturesSel: number;
  driverFeaturesSel: number;
  features: bigint;
  queueSel: number;
  interruptStatus: number;
  packed: boolean;
  queues: Queue[];
  addrHalves: Uint32Array;
  deviceState: unknown;
}

/**
 * Has `dev` validate its part of the saved transport state `next` for a restore into `ctx`
 * (null: restored inactive), and returns the device's commit (null for a device that saves
 * no state). Changes nothing; throws SnapshotError naming the field.
 */
export function prepareMmioDevice(
  next: SavedTransport,
  dev: VirtioDevice,
  ctx: DeviceContext | null,
): (() => void) | null {
  const devState = next.deviceState;
  if (dev.prepareRestore === undefined) {
    if (devState !== null) {
      throw new SnapshotError('mmio.device', 'this device saves no state: expected null');
    }
    if (next.live) {
      throw new SnapshotError(
        'mmio.status',
        'a live device that saves no state cannot be restored',
      );
    }
    return null;
  }
  if (devState === null || typeof devState !== 'object') {
    throw new SnapshotError('mmio.device', 'expected the saved state of the device');
  }
  const prepare = dev.prepareRestore.bind(dev);
  const commit = nestedState('mmio', () => prepare(devState, ctx));
  // DRIVER_OK initialises every ready queue; one left inactive means that failed, and the
  // device then needs a reset (§2.1.2).
  const failed = (devState as { needsReset?: unknown }).needsReset === true;
  next.queues.forEach((q, i) => {
    if (next.live && q.ready && !q.isActive && !failed) {
      throw new SnapshotError(
        `mmio.queues.${i}.active`,
        'a ready queue of a live device that does not need a reset is initialised',
      );
    }
  });
  return commit;
}
