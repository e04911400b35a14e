/**
 * The common part of a saved device state (`DeviceState`): the reader the base class's
 * `prepareRestore` validates it with, against the device and the context it is restored into.
 */
import { SnapshotError } from '../errors.js';
import { queueFromState } from '../queue/factory.js';
import { nestedState, StateReader } from '../queue/state.js';
import type { DeviceContext, VirtioDevice } from './device.js';
/** The fields of a {@link DeviceState} that the base class restores. */
export interface DeviceCommon {
  configGeneration: number;
  needsReset: boolean;
}

/**
 * Validates the common part of a saved device state against `device` and the context it is
 * restored into: version, type, negotiated features (within those offered, accepted by the
 * device, equal to the context's), activity (a context iff active), DEVICE_NEEDS_RESET only on
 * an active device, the configuration generation (a u32), and one queue state per device queue,
 * each valid and equal to the context's queue (the transport's registers are the ones used).
 */
export function readDeviceState(
  state: unknown,
  device: VirtioDevice,
  ctx: DeviceContext | null,
): DeviceCommon {
  const r = StateReader.root(state, 'device');
  r.literal('version', [1]);
  r.literal('deviceType', [device.deviceType]);
  const features = r.hex64('features');
  const active = r.bool('active');
  if (active !== (ctx !== null)) {
    throw new SnapshotError(
      'device.active',
      ctx === null ? 'the transport has no live device' : 'the transport has a live device',
    );
  }
  if (ctx === null) {
    if (features !== 0n)
      throw new SnapshotError('device.features', 'an inactive device has no features');
  } else {
    // §6.1, §3.1.1: negotiated features are a subset of the offered ones the device accepts.
    if ((features & ~device.offeredFeatures) !== 0n)
      throw new SnapshotError('device.features', 'names features the device does not offer');
    if (!device.acceptFeatures(features))
      throw new SnapshotError('device.features', 'the device does not accept these features');
    if (features !== ctx.features)
      throw new SnapshotError('device.features', "differ from the transport's");
  }
  const needsReset = r.bool('needsReset');
  if (needsReset && ctx === null)
    throw new SnapshotError('device.needsReset', 'an inactive device cannot need a reset');
  const configGeneration = r.int('configGeneration', 0, 0xffffffff);
  const count = ctx === null ? 0 : device.queueMaxSizes.length;
  const queues = r.array('queues', count);
  if (queues.length !== count)
    throw new SnapshotError('device.queues', `expected ${count} queue states`);
  for (let i = 0; i < count; i++) {
    const live = ctx!.queues[i]!;
    const saved = nestedState(`device.queues.${i}`, () =>
      JSON.stringify(queueFromState(queues[i], ctx!.memory).save()),
    );
    if (saved !== JSON.stringify(live.save()))
      throw new SnapshotError(`device.queues.${i}`, "differs from the transport's queue");
  }
  return { configGeneration, needsReset };
}
