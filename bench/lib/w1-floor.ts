/**
 * The floor of W1 in JavaScript: the smallest device loop that still owes a hostile driver
 * what virtq owes it, written with no library, as a yardstick for how much of virtq's cost
 * per chain is virtq's and how much is the engine's.
 *
 * Per chain it does what `SplitQueue.pop` + walk + `addUsed` guarantee:
 * - the available index may run ahead by at most the queue size;
 * - the head and every `next` lie in the table, and a chain is at most `size` descriptors;
 * - every buffer lies in guest memory (the one region: address high word 0, address + length
 *   inside it) and the chain's total length fits in 32 bits;
 * - the descriptors are copied out once (address, length, flags) so that a driver rewriting
 *   the table afterwards changes nothing the walk sees;
 * - used elements written with plain stores, the used index published once per round with a
 *   release store, and the notification decision (`vring_need_event` with EVENT_IDX, else
 *   `VRING_AVAIL_F_NO_INTERRUPT`).
 * What it leaves out is what a library adds around that: typed errors, indirect tables,
 * multiple regions, snapshots, dirty tracking, the packed format.
 */

import type { GuestMemory } from '../../src/memory/index.js';
import {
  W1_AVAIL,
  W1_BATCH,
  W1_DESC,
  W1_QUEUE_SIZE,
  W1_USED,
  type W1Device,
  type W1Ring,
} from './w1.js';

const NEXT = 1;
const INDIRECT = 4;

/**
 * The views a floor loop reads guest memory through: its one region, at guest address 0, as
 * u16 and u32 words, and its length in bytes.
 */
export function floorViews(memory: GuestMemory): {
  u16: Uint16Array;
  u32: Uint32Array;
  bytes: number;
} {
  const region = memory.regions[0]!;
  if (memory.regions.length !== 1 || region.base !== 0) {
    throw new RangeError('the floor loop serves one region at guest address 0');
  }
  return {
    u16: new Uint16Array(region.buffer, region.offset, region.length >>> 1),
    u32: new Uint32Array(region.buffer, region.offset, region.length >>> 2),
    bytes: region.length,
  };
}

export class FloorW1Device implements W1Device {
  readonly ring: W1Ring;
  checksum = 0;
  kicks = 0;
  private readonly u16: Uint16Array;
  private readonly u32: Uint32Array;
  private readonly memBytes: number;
  private readonly eventIdx: boolean;
  private nextAvail = 0;
  private nextUsed = 0;
  /** The copied chain (reused): address, length, flags per descriptor. */
  private readonly addrs = new Float64Array(W1_QUEUE_SIZE);
  private readonly lens = new Uint32Array(W1_QUEUE_SIZE);
  private readonly flags = new Uint16Array(W1_QUEUE_SIZE);

  constructor(ring: W1Ring) {
    this.ring = ring;
    ({ u16: this.u16, u32: this.u32, bytes: this.memBytes } = floorViews(ring.memory));
    this.eventIdx = ring.eventIdx;
  }

  run(rounds: number): void {
    const ring = this.ring;
    for (let r = 0; r < rounds; r++) {
      ring.publish();
      this.round();
      ring.check();
    }
  }

  /** Copies and checks the chain at `head`; returns its descriptor count. */
  private copyChain(head: number): number {
    const u16 = this.u16;
    const u32 = this.u32;
    const size = W1_QUEUE_SIZE;
    let i = head;
    let n = 0;
    let total = 0;
    for (;;) {
      if (n === size) throw new RangeError('chain longer than the queue');
      const w = (W1_DESC >>> 2) + 4 * i; // the descriptor's first u32
      const addr = u32[w]!;
      const high = u32[w + 1]!;
      const len = u32[w + 2]!;
      const f = u16[(W1_DESC >>> 1) + 8 * i + 6]!;
      if ((f & INDIRECT) !== 0) throw new RangeError('indirect descriptors not negotiated');
      if (high !== 0 || addr + len > this.memBytes) throw new RangeError('buffer outside memory');
      total += len;
      if (total > 0xffffffff) throw new RangeError('chain length overflows 32 bits');
      this.addrs[n] = addr;
      this.lens[n] = len;
      this.flags[n] = f;
      n++;
      if ((f & NEXT) === 0) return n;
      i = u16[(W1_DESC >>> 1) + 8 * i + 7]!;
      if (i >= size) throw new RangeError('next out of range');
    }
  }

  private round(): void {
    const u16 = this.u16;
    const u32 = this.u32;
    const availBase = W1_AVAIL >>> 1;
    let sum = 0;
    const availIdx = Atomics.load(u16, availBase + 1);
    if (((availIdx - this.nextAvail) & 0xffff) > W1_QUEUE_SIZE) {
      throw new RangeError('available index ran ahead by more than the queue size');
    }
    const oldUsed = this.nextUsed;
    for (let k = 0; k < W1_BATCH; k++) {
      if (this.nextAvail === availIdx) throw new Error('W1: the available ring ran dry');
      const head = u16[availBase + 2 + (this.nextAvail & (W1_QUEUE_SIZE - 1))]!;
      this.nextAvail = (this.nextAvail + 1) & 0xffff;
      if (head >= W1_QUEUE_SIZE) throw new RangeError('head out of range');
      const n = this.copyChain(head);
      let total = 0;
      for (let d = 0; d < n; d++) {
        // The walk sees only the copy; a device-writable buffer would be written here.
        const len = this.lens[d]!;
        sum += this.addrs[d]! + len;
        total += len;
      }
      const at = (W1_USED >>> 2) + 1 + 2 * (this.nextUsed & (W1_QUEUE_SIZE - 1));
      u32[at] = head;
      u32[at + 1] = total;
      this.nextUsed = (this.nextUsed + 1) & 0xffff;
    }
    Atomics.store(u16, (W1_USED >>> 1) + 1, this.nextUsed);
    let notify: boolean;
    if (this.eventIdx) {
      const usedEvent = u16[availBase + 2 + W1_QUEUE_SIZE]!;
      notify = ((this.nextUsed - usedEvent - 1) & 0xffff) < ((this.nextUsed - oldUsed) & 0xffff);
    } else {
      notify = (u16[availBase]! & 1) === 0;
    }
    if (notify) this.kicks++;
    this.checksum += sum;
  }
}
