/**
 * Receive chains the net device popped and holds until a frame fits them (with
 * VIRTIO_NET_F_MRG_RXBUF one frame may fill several, §5.1.6.4), as a ring over chain objects
 * created on first use and reused, so holding a chain allocates nothing in steady state.
 */

import { SnapshotError } from '../../errors.js';
import { DescriptorChain } from '../../queue/chain.js';
import type { Queue } from '../../queue/queue.js';
import { chainBuffers, reviveSaved } from '../saved-chain.js';
import { type NetRxBuffer, parseRxBuffer } from './request.js';
import type { NetSavedChain } from './state.js';

export class HeldRxChains {
  /** Chains held. */
  count = 0;
  /** Bytes the device may write into them. */
  bytes = 0;
  /** Ring slots they take (an indirect chain takes one). */
  slots = 0;
  /** Most chains held: the receive queue's size. */
  cap = 1;
  private chains: DescriptorChain[] = [];
  private first = 0;

  /** Holds nothing, for a receive queue of `queueSize` (at least 1). */
  reset(queueSize: number): void {
    this.cap = Math.max(1, queueSize);
    this.first = 0;
    this.count = 0;
    this.bytes = 0;
    this.slots = 0;
  }

  /** The held chain at position `i` (0: oldest; `count`: where the next one goes). */
  at(i: number): DescriptorChain {
    // A compare, not `%` (a division in V8: a packed ring's size need not be a power of two).
    let slot = this.first + i;
    if (slot >= this.cap) slot -= this.cap;
    let c = this.chains[slot];
    if (c === undefined) {
      c = new DescriptorChain();
      this.chains[slot] = c;
    }
    return c;
  }

  /** Keeps `c`, the chain just popped into {@link at}(count). */
  keepNext(c: DescriptorChain): void {
    this.count++;
    this.bytes += c.writableLength;
    this.slots += c.ringCount;
  }

  /** Lets go of the `k` oldest chains (marked used by the caller). */
  release(k: number): void {
    if (k === this.count) {
      // All of them (one frame per chain, the usual case): nothing to subtract. Start again
      // at slot 0, so that one chain object, whose arrays stay in the cache, takes every frame
      // instead of going round the whole ring of them.
      this.count = 0;
      this.bytes = 0;
      this.slots = 0;
      this.first = 0;
      return;
    }
    for (let j = 0; j < k; j++) {
      const c = this.at(j);
      this.bytes -= c.writableLength;
      this.slots -= c.ringCount;
    }
    this.count -= k;
    this.first += k;
    if (this.first >= this.cap) this.first -= this.cap;
  }

  /** The held chains as saved state: head, ring slots and [address, length] of each buffer. */
  save(): NetSavedChain[] {
    const out: NetSavedChain[] = [];
    for (let i = 0; i < this.count; i++) {
      const c = this.at(i);
      out.push({ head: c.head, slots: c.ringCount, buffers: chainBuffers(c) });
    }
    return out;
  }

  /**
   * Rebuilds saved held chains through the receive queue's checked {@link Queue.reviveChain}
   * (head, slots, every buffer against guest memory again) and returns the commit that makes
   * them the held chains; changes nothing. Throws {@link SnapshotError} naming the field.
   */
  prepareRestore(
    saved: readonly NetSavedChain[],
    rxq: Queue | undefined,
    at = 'device.net',
  ): () => void {
    const chains = reviveAll(saved, rxq, at);
    return () => {
      this.chains = chains;
      this.first = 0;
      this.count = chains.length;
      this.bytes = 0;
      this.slots = 0;
      for (const c of chains) {
        this.bytes += c.writableLength;
        this.slots += c.ringCount;
      }
    };
  }
}

function reviveAll(
  saved: readonly NetSavedChain[],
  rxq: Queue | undefined,
  at: string,
): DescriptorChain[] {
  if (saved.length === 0) return [];
  if (rxq === undefined || !rxq.isActive)
    throw new SnapshotError(`${at}.heldRx`, 'the receive queue is not active');
  const info: NetRxBuffer = { kind: 'buffer', capacity: 0 };
  let slotsTotal = 0;
  return saved.map((s, i) => {
    const path = `${at}.heldRx.${i}`;
    slotsTotal += s.slots;
    if (slotsTotal > rxq.size)
      throw new SnapshotError(`${path}.slots`, `held chains take over ${rxq.size} ring slots`);
    // Receive buffers are device-writable from the first one on.
    const c = reviveSaved(rxq, s, 0, path);
    if (parseRxBuffer(c, info).kind === 'unsupported') {
      throw new SnapshotError(`${path}.buffers`, 'smaller than the virtio header');
    }
    return c;
  });
}
