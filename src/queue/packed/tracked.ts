import { DescriptorError } from '../../errors.js';
import type { DescriptorChain } from '../chain.js';
import { VIRTQ_DESC_F_AVAIL, VIRTQ_DESC_F_USED } from '../constants.js';
import { PACKED_DESC_FLAGS, PACKED_DESC_FLAGS_U16, PACKED_DESC_ID_U16 } from './layout.js';
import { PackedQueue, type PackedQueueOptions } from './queue.js';

/**
 * Watches the buffers a packed queue hands out and completes: what a vhost-user back-end needs
 * to keep its inflight buffer ("Inflight I/O tracking", `QueueRegionPacked`) current. Each call
 * comes after the queue's own bookkeeping for the event, except {@link publishing}.
 */
export interface PackedQueueTracker {
  /**
   * Buffer `id` was popped from `count` ring slots starting at `first`; `ring` is the
   * descriptor ring as u32 words (4 per slot: address low and high, length, id | flags << 16).
   * Not called for redelivered buffers.
   */
  popped(id: number, ring: Uint32Array, first: number, count: number, ringSize: number): void;
  /** Buffer `id`, popped last, was given back ({@link PackedQueue.undoPop}). */
  unpopped(id: number): void;
  /** A used descriptor was written for buffer `id` (not yet published). */
  used(id: number): void;
  /** The batch is about to be published; the device's used position will be this. */
  publishing(nextUsed: number, usedWrap: boolean): void;
  /** The batch was published (its first descriptor's flags written). */
  published(): void;
}

/**
 * A buffer to serve again: its id and its ring descriptors as the region copied them, five
 * numbers each (address low and high 32 bits, length, flags, id).
 */
export interface RedeliveredBuffer {
  readonly id: number;
  readonly descriptors: readonly number[];
}

const AVAIL_USED = VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED;

/**
 * A {@link PackedQueue} that reports every pop, used descriptor and publication to a
 * {@link PackedQueueTracker}, and can hand out again buffers a previous incarnation of the
 * device took and never completed ({@link redeliver}), from copies of their descriptors: their
 * ring slots may since have been overwritten by used descriptors. A subclass, so that untracked
 * queues keep the plain path.
 */
export class TrackedPackedQueue extends PackedQueue {
  tracker: PackedQueueTracker | null = null;
  private redeliverList: readonly RedeliveredBuffer[] = [];
  private redeliverNext = 0;
  /** The id of the last pop when it was a redelivered buffer (undoPop gives it back); else -1. */
  private lastRedelivered = -1;
  /** A ring of the queue's size holding one redelivered buffer's descriptors at slot 0. */
  private scratch16: Uint16Array = new Uint16Array(0);
  private scratch32: Uint32Array = new Uint32Array(0);

  constructor(maxSize: number, options: PackedQueueOptions = {}) {
    super(maxSize, options);
  }

  /**
   * Makes the next pops return `buffers`, in that order, before anything from the ring. The
   * queue's positions must already account for them (they are not in flight yet, and their
   * ring slots lie between the used and the available position). Each buffer is parsed and
   * validated like any popped list when it is popped.
   */
  redeliver(buffers: readonly RedeliveredBuffer[]): void {
    this.requireActive();
    const size = this.qsize;
    for (const b of buffers) {
      const n = b.descriptors.length / 5;
      if (!(Number.isInteger(b.id) && b.id >= 0 && b.id < size)) {
        throw new RangeError(`redelivered buffer id ${b.id} is not below ${size}`);
      }
      if (!(Number.isInteger(n) && n >= 1 && n <= size)) {
        throw new RangeError(`redelivered buffer ${b.id} has ${n} descriptors`);
      }
    }
    this.redeliverList = [...buffers];
    this.redeliverNext = 0;
    if (this.scratch16.length !== 8 * size) {
      this.scratch32 = new Uint32Array(4 * size);
      this.scratch16 = new Uint16Array(this.scratch32.buffer);
    }
  }

  /** Buffers queued by {@link redeliver} that were not popped yet. */
  get redeliveryPending(): number {
    return this.redeliverList.length - this.redeliverNext;
  }

  /** The flags of ring slot `slot` as the driver or device last wrote them. */
  slotFlags(slot: number): number {
    this.requireActive();
    if (!(slot >= 0 && slot < this.qsize)) throw new RangeError(`slot ${slot} is outside the ring`);
    return Atomics.load(this.desc16, (slot << 3) + PACKED_DESC_FLAGS_U16);
  }

  /**
   * Makes every ring slot between the used and the available position look unused to the
   * driver, and returns how many it rewrote. Call it after positioning a resumed ring. Those
   * slots belong to buffers in flight, but a device that died with an unpublished batch had
   * already written the batch's later used descriptors into some of them (only the first gets
   * its flags at publication); a driver reaching one would take it as used and complete its
   * buffer a second time once the buffer is served again. Each such slot gets the available
   * pattern of its lap back (AVAIL and USED differ), the one the driver left there.
   */
  withdrawUnpublishedUsed(): number {
    this.requireActive();
    const size = this.qsize;
    let slot = this._nextUsed;
    let wrap = this._usedWrap;
    let held = this._nextAvail - slot;
    if (held < 0 || (held === 0 && this._availWrap !== wrap)) held += size;
    let rewritten = 0;
    for (let k = 0; k < held; k++) {
      const at = (slot << 3) + PACKED_DESC_FLAGS_U16;
      const flags = Atomics.load(this.desc16, at);
      if ((flags & AVAIL_USED) === (wrap === 1 ? AVAIL_USED : 0)) {
        const available = wrap === 1 ? VIRTQ_DESC_F_AVAIL : VIRTQ_DESC_F_USED;
        Atomics.store(this.desc16, at, (flags & ~AVAIL_USED) | available);
        this.descRegion!.markDirty(this.descAddr + 16 * slot + PACKED_DESC_FLAGS, 2);
        rewritten++;
      }
      if (++slot === size) {
        slot = 0;
        wrap ^= 1;
      }
    }
    return rewritten;
  }

  override pop(into?: DescriptorChain): DescriptorChain | null {
    if (this.redeliveryPending > 0) return this.popRedelivered(into);
    // A pop that finds nothing leaves undoPop's buffer as it was; one that reads a list (even
    // a malformed one, which throws) ends what undoPop could give back.
    const redelivered = this.lastRedelivered;
    this.lastRedelivered = -1;
    const first = this._nextAvail;
    const c = super.pop(into);
    if (c === null) this.lastRedelivered = redelivered;
    else {
      this.tracker?.popped(c.head, this.desc32, first, this.buffers.slotsOf[c.head]!, this.qsize);
    }
    return c;
  }

  override popOrEnableNotification(into?: DescriptorChain): DescriptorChain | null {
    if (this.redeliveryPending > 0) return this.popRedelivered(into);
    return super.popOrEnableNotification(into);
  }

  override undoPop(): void {
    const redelivered = this.lastRedelivered;
    if (redelivered >= 0) {
      // Back to the front of the redelivery list; the region still has it in flight.
      this.lastRedelivered = -1;
      this.unlink(redelivered);
      this.redeliverNext--;
      return;
    }
    const id = this.undoId;
    super.undoPop();
    this.tracker?.unpopped(id);
  }

  override addUsed(id: number, len: number): void {
    if (id === this.lastRedelivered) this.lastRedelivered = -1;
    super.addUsed(id, len);
    this.tracker?.used(id);
  }

  override addUsedBatch(count: number, lastId: number, lastLen: number): void {
    // One used descriptor for several buffers cannot be recorded per buffer.
    if (this.tracker !== null)
      throw new RangeError('a tracked packed queue completes buffers one by one');
    super.addUsedBatch(count, lastId, lastLen);
  }

  override advanceUsedRingIdx(): void {
    const t = this.tracker;
    if (t === null || this.pendingSlot < 0) {
      super.advanceUsedRingIdx();
      return;
    }
    t.publishing(this._nextUsed, this._usedWrap === 1);
    super.advanceUsedRingIdx();
    t.published();
  }

  override reset(): void {
    super.reset();
    this.redeliverList = [];
    this.redeliverNext = 0;
    this.lastRedelivered = -1;
  }

  /**
   * Parses the next redelivered buffer with the queue's own checks, from a scratch ring that
   * holds its descriptors at slot 0 (the real ring's slots may hold used descriptors by now).
   */
  private popRedelivered(into: DescriptorChain | undefined): DescriptorChain {
    const b = this.redeliverList[this.redeliverNext++]!;
    // This pop reads a list: whatever it finds, the buffer popped before is no longer the one
    // undoPop gives back (PackedQueue.undoPop).
    this.lastRedelivered = -1;
    const d = b.descriptors;
    const n = d.length / 5;
    const s16 = this.scratch16;
    const s32 = this.scratch32;
    s32.fill(0);
    for (let k = 0; k < n; k++) {
      const w = k << 2;
      s32[w] = d[5 * k]!;
      s32[w + 1] = d[5 * k + 1]!;
      s32[w + 2] = d[5 * k + 2]!;
      s16[(k << 3) + PACKED_DESC_ID_U16] = d[5 * k + 4]!;
      // Available under wrap counter 1, whatever lap the copy was taken in.
      s16[(k << 3) + PACKED_DESC_FLAGS_U16] = (d[5 * k + 3]! & ~AVAIL_USED) | VIRTQ_DESC_F_AVAIL;
    }
    const ring16 = this.desc16;
    const ring32 = this.desc32;
    const nextAvail = this._nextAvail;
    const availWrap = this._availWrap;
    this.desc16 = s16;
    this.desc32 = s32;
    this._nextAvail = 0;
    this._availWrap = 1;
    let c: DescriptorChain | null;
    let walked: number;
    try {
      c = super.pop(into);
      walked = c === null ? 0 : this.buffers.slotsOf[c.head]!;
    } finally {
      this.desc16 = ring16;
      this.desc32 = ring32;
      this._nextAvail = nextAvail;
      this._availWrap = availWrap;
      this.undoId = -1;
    }
    if (c === null || walked !== n || c.head !== b.id) {
      // Malformed: as for any malformed list, its id does not stay in flight.
      if (c !== null) this.unlink(c.head);
      throw new DescriptorError(
        'DESC_PACKED_BAD_ID',
        b.id,
        -1,
        `redelivered buffer ${b.id} does not parse back to its ${n} recorded descriptors`,
      );
    }
    this.lastRedelivered = c.head;
    return c;
  }
}
