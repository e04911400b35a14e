/**
 * The network device's saved state beyond its link settings: per receive queue, the frames
 * waiting in the device and the receive chains it holds; and how a saved state is checked
 * against a device before it replaces what the device holds.
 */

import { SnapshotError } from '../../errors.js';
import { type DeviceContext, hasFeature } from '../device.js';
import {
  NET_CONFIG_MAC,
  NET_CONFIG_STATUS,
  VIRTIO_NET_F_MQ,
  VIRTIO_NET_F_STATUS,
  VIRTIO_NET_S_LINK_UP,
} from './request.js';
import type { NetRxQueue } from './rx-queue.js';
import { type NetState, type NetStateRead, readNetState } from './state.js';

/** The link settings and counters of a saved state. */
type NetLinkState = Pick<NetState, 'mac' | 'linkUp' | 'stats'>;

/**
 * A saved state: `link`, then the first receive queue's frames and chains at the top level
 * and the others' in `rxQueues`, with the pairs in use (`activePairs`: null without several
 * pairs offered).
 */
export function saveNet(
  rx: readonly NetRxQueue[],
  link: NetLinkState,
  activePairs: number | null,
): NetState {
  const [first, ...more] = rx.map((r) => r.save());
  return {
    ...link,
    ...first!,
    ...(activePairs !== null ? { activePairs, rxQueues: more } : {}),
  };
}

/**
 * Validates a saved state against the device's receive queues `rx` and the driver session
 * `ctx` (null: none): frames waiting in the device, held receive chains (each buffer checked
 * against guest memory again, and against the packed ring's buffers in flight), segmentation
 * progress, per receive queue; the pairs in use, link state, MAC and counters; no buffer in
 * flight on any other queue (transmit, or control at `ctrlIndex`). Throws {@link
 * SnapshotError} on anything inconsistent, changing nothing; `commit` replaces what the receive
 * queues hold.
 */
export function prepareNetRestore(
  state: unknown,
  ctx: DeviceContext | null,
  rx: readonly NetRxQueue[],
  ctrlIndex: number,
): { saved: NetStateRead; commit: () => void } {
  const saved = readNetState(state, {
    maxPending: rx[0]!.frames.pending.maxFrames,
    maxHeld: rx.map((r) => ctx?.queues[r.index]?.size ?? 0),
  });
  if (saved.activePairs > 1 && !(ctx !== null && hasFeature(ctx.features, VIRTIO_NET_F_MQ))) {
    throw new SnapshotError('device.net.activePairs', 'several pairs without VIRTIO_NET_F_MQ');
  }
  const commits = saved.rx.map((q, k) => {
    const at = k === 0 ? 'device.net' : `device.net.rxQueues.${k - 1}`;
    const r = rx[k]!;
    return r.prepareRestore(q, ctx === null ? null : ctx.queues[r.index], at);
  });
  ctx?.queues.forEach((q, i) => {
    if ((i & 1) === 1 || i === ctrlIndex) {
      if (q.isActive && (q.inFlight ?? 0) !== 0) {
        throw new SnapshotError('device.net', `queue ${i} has buffers in flight`);
      }
    }
  });
  return {
    saved,
    commit: () => {
      for (const c of commits) c();
    },
  };
}

/** Writes a restored state's MAC and link status (when offered) into the configuration space. */
export function restoreNetConfig(config: Uint8Array, offered: bigint, s: NetStateRead): void {
  config.set(s.mac, NET_CONFIG_MAC);
  if (hasFeature(offered, VIRTIO_NET_F_STATUS)) {
    new DataView(config.buffer, config.byteOffset).setUint16(
      NET_CONFIG_STATUS,
      s.linkUp ? VIRTIO_NET_S_LINK_UP : 0,
      true,
    );
  }
}
