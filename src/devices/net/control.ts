/**
 * The network device's control queue (VIRTIO 1.2 §5.1.6.5): each chain is a command (class,
 * command, command-specific data, all device-readable) followed by one device-writable `ack`
 * byte. virtq implements the one class its offered features call for: VIRTIO_NET_CTRL_MQ with
 * VQ_PAIRS_SET (§5.1.6.5.5). Every other class or command is answered VIRTIO_NET_ERR: the
 * features that would enable them (CTRL_RX, CTRL_VLAN, CTRL_MAC_ADDR, GUEST_ANNOUNCE,
 * CTRL_GUEST_OFFLOADS, RSS) are never offered.
 *
 * Over vhost-user the front-end (QEMU, DPDK's virtio-user) answers the control queue itself and
 * turns VQ_PAIRS_SET into SET_VRING_ENABLE per ring: this file then never runs.
 */

import { ChainReader } from '../../iovec/reader.js';
import { ChainWriter } from '../../iovec/writer.js';
import { DescriptorChain } from '../../queue/chain.js';
import type { Queue } from '../../queue/queue.js';
import type { NetTurn } from './rx-queue.js';

/** Command classes (§5.1.6.5). */
export const VIRTIO_NET_CTRL_RX = 0;
export const VIRTIO_NET_CTRL_MAC = 1;
export const VIRTIO_NET_CTRL_VLAN = 2;
export const VIRTIO_NET_CTRL_ANNOUNCE = 3;
export const VIRTIO_NET_CTRL_MQ = 4;
export const VIRTIO_NET_CTRL_GUEST_OFFLOADS = 5;
/** VIRTIO_NET_CTRL_MQ commands (§5.1.6.5.5). */
export const VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET = 0;
/** The `ack` values (§5.1.6.5). */
export const VIRTIO_NET_OK = 0;
export const VIRTIO_NET_ERR = 1;

/** Size of the control queue. */
export const NET_CONTROL_QUEUE_SIZE = 64;

/** Counters of the control queue (JSON-safe). */
export interface NetControlStats {
  /** Commands answered VIRTIO_NET_OK. */
  ok: number;
  /** Commands answered VIRTIO_NET_ERR (unknown, not negotiated, bad data). */
  refused: number;
  /** Chains with no device-writable byte for `ack`: returned unanswered, not executed. */
  unanswerable: number;
}

/** Why the last command was refused, for diagnostics. */
export type NetControlRefusal =
  | 'too-short'
  | 'unknown-class'
  | 'unknown-command'
  | 'not-negotiated'
  | 'bad-length'
  | 'pairs-out-of-range';

/** What a command may change in its device. */
export interface NetControlTarget {
  /** Queue pairs the device offers (max_virtqueue_pairs). */
  readonly queuePairs: number;
  /** The driver negotiated VIRTIO_NET_F_MQ. */
  readonly multiqueue: boolean;
  /** VQ_PAIRS_SET with a checked count. */
  setActivePairs(pairs: number): void;
}

/** Parses and answers control commands, reusing its scratch objects (no allocation per chain). */
export class NetControl {
  readonly stats: NetControlStats = { ok: 0, refused: 0, unanswerable: 0 };
  lastRefusal: NetControlRefusal | null = null;
  private readonly reader = new ChainReader();
  private readonly writer = new ChainWriter();
  /** Class, command and up to 2 bytes of data: all the implemented commands read. */
  private readonly head = new Uint8Array(4);
  private readonly chain = new DescriptorChain();

  /**
   * Answers what control queue `index` holds, for as long as the turn allows (the device's
   * queue loop).
   * @internal
   */
  pass(index: number, q: Queue, target: NetControlTarget, turn: NetTurn): void {
    let any = false;
    while (turn.withinBudget(index)) {
      const c = q.popOrEnableNotification(this.chain);
      if (c === null) break;
      q.addUsed(c.head, this.execute(c, target));
      any = true;
    }
    if (any) turn.publish(index);
  }

  /**
   * Executes the command in `c` and writes its `ack`; returns the bytes written into the chain
   * (its used length): 1, or 0 for a chain with nowhere to write the answer.
   */
  execute(c: DescriptorChain, target: NetControlTarget): number {
    // §5.1.6.5: the device answers in the first device-writable byte. A chain without one
    // cannot be answered: it is returned with nothing written (the driver sees length 0) and
    // its command is not executed, since the driver could not learn whether it was.
    if (c.writableLength < 1) {
      this.stats.unanswerable++;
      return 0;
    }
    const status = this.run(c, target);
    if (status === VIRTIO_NET_OK) this.stats.ok++;
    else this.stats.refused++;
    const w = this.writer.reset(c);
    w.writeU8(status);
    w.reset();
    return 1;
  }

  private run(c: DescriptorChain, target: NetControlTarget): number {
    const r = this.reader.reset(c);
    const readable = c.readableLength;
    const n = r.read(this.head, 0, Math.min(readable, this.head.length));
    r.reset();
    if (n < 2) return this.refuse('too-short');
    const cls = this.head[0]!;
    const cmd = this.head[1]!;
    const dataLength = readable - 2;
    switch (cls) {
      case VIRTIO_NET_CTRL_MQ:
        // §5.1.6.5.5: VQ_PAIRS_SET exists with VIRTIO_NET_F_MQ; RSS and hash configuration
        // need features virtq does not offer.
        if (!target.multiqueue) return this.refuse('not-negotiated');
        if (cmd !== VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET) return this.refuse('unknown-command');
        if (dataLength !== 2) return this.refuse('bad-length');
        return this.pairsSet(this.head[2]! | (this.head[3]! << 8), target);
      case VIRTIO_NET_CTRL_RX:
      case VIRTIO_NET_CTRL_MAC:
      case VIRTIO_NET_CTRL_VLAN:
      case VIRTIO_NET_CTRL_ANNOUNCE:
      case VIRTIO_NET_CTRL_GUEST_OFFLOADS:
        // §5.1.6.5.1-4, §5.1.6.5.6: each class needs a feature the device does not offer.
        return this.refuse('not-negotiated');
      default:
        return this.refuse('unknown-class');
    }
  }

  private pairsSet(pairs: number, target: NetControlTarget): number {
    // §5.1.6.5.5: virtqueue_pairs is between 1 and max_virtqueue_pairs.
    if (pairs < 1 || pairs > target.queuePairs) return this.refuse('pairs-out-of-range');
    target.setActivePairs(pairs);
    return VIRTIO_NET_OK;
  }

  private refuse(why: NetControlRefusal): number {
    this.lastRefusal = why;
    return VIRTIO_NET_ERR;
  }
}
