/**
 * What a network device offers, from its options: the checks on them, the feature bits
 * (VIRTIO 1.2 §5.1.3) and the configuration space (§5.1.4).
 */

import {
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_IN_ORDER,
  VIRTIO_F_INDIRECT_DESC,
  VIRTIO_F_RING_PACKED,
} from '../../queue/constants.js';
import type { DeviceBudgetOptions } from '../budget.js';
import { type FrontEndQueues, featureBit, hasFeature } from '../device.js';
import { type NetBackend, parseMac } from './backend.js';
import {
  missingNetRequirement,
  NET_CONFIG_MAC,
  NET_CONFIG_MAX_VIRTQUEUE_PAIRS,
  NET_CONFIG_MTU,
  NET_CONFIG_STATUS,
  NET_MAX_FRAME,
  NET_OFFLOAD_FEATURES,
  VIRTIO_NET_F_CTRL_VQ,
  VIRTIO_NET_F_MAC,
  VIRTIO_NET_F_MQ,
  VIRTIO_NET_F_MRG_RXBUF,
  VIRTIO_NET_F_MTU,
  VIRTIO_NET_F_STATUS,
  VIRTIO_NET_S_LINK_UP,
} from './request.js';

export interface NetOptions extends DeviceBudgetOptions {
  /** Where frames go and come from. */
  backend: NetBackend;
  /**
   * The MAC address offered with VIRTIO_NET_F_MAC (6 bytes or "52:54:00:12:34:56"). Default:
   * a random locally administered unicast address. `null`: VIRTIO_NET_F_MAC is not offered.
   */
  mac?: Uint8Array | string | null;
  /** Offer VIRTIO_NET_F_MTU with this MTU (68..65535, §5.1.4.1). Default: not offered. */
  mtu?: number;
  /** Offer VIRTIO_NET_F_STATUS (default true). */
  status?: boolean;
  /** Initial link state (default up). */
  linkUp?: boolean;
  /** Offer VIRTIO_NET_F_MRG_RXBUF (default true). */
  mergeableRxBuffers?: boolean;
  /**
   * Offer VIRTIO_F_IN_ORDER (default true): the device uses every queue's buffers in the order
   * they were made available, and completes a transmit pass with one used entry.
   */
  inOrder?: boolean;
  /**
   * Offload features to offer, further limited to what the backend carries (default: all the
   * backend carries). A feature whose requirement (§5.1.3.1) is not offered is not offered.
   */
  offloads?: bigint;
  /** Size of each queue (default 256). */
  queueSize?: number;
  /** Most frames waiting inside the device for receive buffers (default 256). */
  pendingFrames?: number;
  /** Most bytes of frames waiting inside the device (default 1 MiB; at least NET_MAX_FRAME). */
  pendingBytes?: number;
  /**
   * Receive/transmit queue pairs (1..{@link NET_MAX_QUEUE_PAIRS}, default 1). Above 1 the device
   * offers VIRTIO_NET_F_MQ with the control queue (VIRTIO_NET_F_CTRL_VQ), through which the
   * driver chooses how many pairs it uses (§5.1.6.5.5). The pending-frame limits apply to each
   * receive queue.
   */
  queuePairs?: number;
  /** Offer the control queue (VIRTIO_NET_F_CTRL_VQ) even with one pair (default: with MQ only). */
  controlQueue?: boolean;
}

/** Most queue pairs a network device offers. */
export const NET_MAX_QUEUE_PAIRS = 16;

/** A network device's options, checked, and what follows from them. */
export interface NetPlan {
  features: bigint;
  /** The MAC address offered (null: VIRTIO_NET_F_MAC is not). */
  mac: Uint8Array | null;
  /** The MTU offered (null: VIRTIO_NET_F_MTU is not). */
  mtu: number | null;
  /** Whether VIRTIO_NET_F_STATUS is offered. */
  status: boolean;
  queueSize: number;
  pendingBytes: number;
  /** Queue pairs offered (max_virtqueue_pairs with MQ). */
  queuePairs: number;
  /** Whether the control queue (the last queue, after the pairs) exists. */
  controlQueue: boolean;
}

/** Checks the options and derives the features offered; throws RangeError on a bad option. */
export function planNetDevice(options: NetOptions): NetPlan {
  const mtu = options.mtu ?? null;
  if (mtu !== null && !(Number.isInteger(mtu) && mtu >= 68 && mtu <= 65535)) {
    // §5.1.4.1: the device MUST set mtu to between 68 and 65535.
    throw new RangeError(`mtu ${mtu} is not in 68..65535`);
  }
  const mac = resolveMac(options.mac);
  const status = options.status ?? true;
  let features =
    featureBit(VIRTIO_F_EVENT_IDX) |
    featureBit(VIRTIO_F_INDIRECT_DESC) |
    featureBit(VIRTIO_F_RING_PACKED);
  if (mac !== null) features |= featureBit(VIRTIO_NET_F_MAC);
  if (status) features |= featureBit(VIRTIO_NET_F_STATUS);
  if (mtu !== null) features |= featureBit(VIRTIO_NET_F_MTU);
  if (options.mergeableRxBuffers ?? true) features |= featureBit(VIRTIO_NET_F_MRG_RXBUF);
  if (options.inOrder ?? true) features |= featureBit(VIRTIO_F_IN_ORDER);
  const queuePairs = options.queuePairs ?? 1;
  if (!(Number.isInteger(queuePairs) && queuePairs >= 1 && queuePairs <= NET_MAX_QUEUE_PAIRS)) {
    throw new RangeError(`queuePairs ${queuePairs} is not in 1..${NET_MAX_QUEUE_PAIRS}`);
  }
  const controlQueue = queuePairs > 1 || options.controlQueue === true;
  if (controlQueue) features |= featureBit(VIRTIO_NET_F_CTRL_VQ);
  if (queuePairs > 1) features |= featureBit(VIRTIO_NET_F_MQ);
  let offloads =
    options.backend.offloads & NET_OFFLOAD_FEATURES & (options.offloads ?? NET_OFFLOAD_FEATURES);
  // Offer no feature whose requirement is not offered (§5.1.3.1).
  for (let bit = missingNetRequirement(offloads); bit >= 0; bit = missingNetRequirement(offloads)) {
    offloads &= ~featureBit(bit);
  }
  features |= offloads;
  const pendingBytes = options.pendingBytes ?? 1 << 20;
  if (!(pendingBytes >= NET_MAX_FRAME))
    throw new RangeError(`pendingBytes must be at least ${NET_MAX_FRAME}`);
  return {
    features,
    mac,
    mtu,
    status,
    queueSize: options.queueSize ?? 256,
    pendingBytes,
    queuePairs,
    controlQueue,
  };
}

/** Writes the configuration space of a device planned as `plan`, its link up or down. */
export function writeNetConfig(config: Uint8Array, plan: NetPlan, linkUp: boolean): void {
  const cfg = new DataView(config.buffer, config.byteOffset, config.byteLength);
  if (plan.mac !== null) config.set(plan.mac, NET_CONFIG_MAC);
  cfg.setUint16(NET_CONFIG_STATUS, plan.status && linkUp ? VIRTIO_NET_S_LINK_UP : 0, true);
  // §5.1.4: max_virtqueue_pairs is meaningful with MQ; without it, it reads 1.
  cfg.setUint16(NET_CONFIG_MAX_VIRTQUEUE_PAIRS, plan.queuePairs, true);
  if (plan.mtu !== null) cfg.setUint16(NET_CONFIG_MTU, plan.mtu, true);
}

function resolveMac(mac: Uint8Array | string | null | undefined): Uint8Array | null {
  if (mac === null) return null;
  if (mac === undefined) {
    const m = new Uint8Array(6);
    globalThis.crypto.getRandomValues(m);
    // A locally administered (bit 1) unicast (bit 0 clear) address.
    m[0] = (m[0]! & 0xfe) | 0x02;
    return m;
  }
  const bytes = typeof mac === 'string' ? parseMac(mac) : mac;
  if (bytes.length !== 6) throw new RangeError('a MAC address has 6 bytes');
  return Uint8Array.from(bytes);
}

/**
 * What a vhost-user front-end serves of a device of `queuePairs` pairs: the control queue, and
 * it counts queue pairs (GET_QUEUE_NUM). DPDK's virtio-user leaves CTRL_VQ out of SET_FEATURES
 * (it serves the queue itself); MQ without it would be refused (§5.1.3.1), so it is added.
 */
export function netFrontEndQueues(queuePairs: number): FrontEndQueues {
  return {
    served: 2 * queuePairs,
    queueNum: queuePairs,
    completeFeatures: (acked) =>
      hasFeature(acked, VIRTIO_NET_F_MQ) ? acked | featureBit(VIRTIO_NET_F_CTRL_VQ) : acked,
  };
}
