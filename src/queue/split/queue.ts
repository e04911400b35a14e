import { DescriptorError, SnapshotError, UsedRingError } from '../../errors.js';
import { type GuestMemory, joinU64Unclamped } from '../../memory/guest-memory.js';
import type { DescriptorChain } from '../chain.js';
import { ChainRecord, recordOf } from '../chain-record.js';
import {
  MAX_QUEUE_SIZE,
  VIRTQ_AVAIL_F_NO_INTERRUPT,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_WRITE,
  VIRTQ_USED_F_NO_NOTIFY,
} from '../constants.js';
import type { Logger } from '../logger.js';
import type { Queue } from '../queue.js';
import { walkSplit, walkSplitChecked } from '../split-walk.js';
import { type SplitQueueState, StateReader } from '../state.js';
import { SPLIT_DESC_FLAGS_NEXT_U32, SPLIT_DESC_LEN_U32 } from './layout.js';

import { SplitRing } from './ring.js';

/** Options of a {@link SplitQueue}. */
export interface SplitQueueOptions {
  /** Where to report a resynchronised available index (default: console). */
  logger?: Logger;
}

/**
 * The device side of a split virtqueue (VIRTIO 1.2 §2.7).
 *
 * The configuration fields (`size`, `ready`, the three ring addresses) are plain, leniently
 * settable properties, as a transport's registers are. {@link initialize} validates them all
 * once and builds typed-array views of the three rings; from then on the per-chain path uses
 * only those views and the values captured at initialisation, so changing a configuration
 * field afterwards cannot make the queue touch memory outside its rings.
 *
 * Ring progress fields (`avail.idx`, `used.idx`, `used_event`, `avail_event`, the flags) are
 * accessed with `Atomics`, which orders the plain accesses to ring entries and buffers the way
 * the seed's acquire/release/SeqCst fences do.
 */
export class SplitQueue extends SplitRing implements Queue {
  /** How many times a wrapped available index was resynchronised. */
  resyncCount = 0;

  constructor(maxSize: number, options: SplitQueueOptions = {}) {
    super(maxSize, options.logger);
  }

  // ---- available side ----

  /** Chains the driver has made available and the device has not popped (mod 2^16). */
  len(): number {
    this.requireActive();
    return (Atomics.load(this.avail16, 1) - this._nextAvail) & 0xffff;
  }

  /** True when no chain is waiting. */
  isEmpty(): boolean {
    return this.len() === 0;
  }

  /**
   * Like {@link len}, but a driver index claiming more than `size` pending chains (possible
   * after restoring a snapshot, or from a hostile driver) resynchronises `nextAvail` to it,
   * clears `numAdded`, warns, and reports 0, exactly as the seed does.
   */
  private lenSanitized(): number {
    let availIdx = this.avail16[1]!;
    if (availIdx !== this.availSeen) {
      availIdx = Atomics.load(this.avail16, 1);
      this.availSeen = availIdx;
    }
    const len = (availIdx - this._nextAvail) & 0xffff;
    return len > this.qsize ? this.resync(availIdx) : len;
  }

  /** A driver index more than `size` ahead: see {@link lenSanitized}. */
  private resync(availIdx: number): 0 {
    this.resyncCount++;
    this.logger.warn('available index wrapped; resynchronising', {
      availIdx,
      nextAvail: this._nextAvail,
      size: this.qsize,
    });
    this._nextAvail = availIdx;
    this._numAdded = 0;
    return 0;
  }

  /**
   * Pops the next available chain, or returns null when there is none. The chain is parsed
   * into `into` when given (no allocation), else into a new {@link DescriptorChain}.
   *
   * A malformed chain throws {@link DescriptorError}; the chain's ring entry is consumed
   * either way, so a device that chooses to carry on does not see it again.
   */
  pop(into?: DescriptorChain): DescriptorChain | null {
    this.requireActive();
    if (this.lenSanitized() === 0) return null;
    return this.popUnchecked(into);
  }

  /**
   * With notification suppression: pops a chain, or, when there is none, publishes
   * `avail_event` so the driver notifies the device of the next one, and returns null.
   * Without it: the same as {@link pop}.
   */
  popOrEnableNotification(into?: DescriptorChain): DescriptorChain | null {
    if (!this.usesNotifSuppression || this.polled) return this.pop(into);
    this.requireActive();
    if (this.tryEnableNotification()) return null;
    return this.popUnchecked(into);
  }

  private popUnchecked(into: DescriptorChain | undefined): DescriptorChain {
    // An Atomics.load of avail.idx in lenSanitized() (this pop's or an earlier one's that saw
    // the same index) orders this read of the ring entry.
    const head = this.avail16[2 + (this._nextAvail & (this.qsize - 1))]!;
    this._nextAvail = (this._nextAvail + 1) & 0xffff;
    const chain = into === undefined ? this.freshChain() : recordOf(into);
    this.parseChain(head, chain);
    return chain;
  }

  /**
   * A new chain for a pop that was given none. Out of line, as `parseChecked` is, to keep the
   * pop's bytecode small: V8 inlines a hot call's callees only up to a cumulative budget of
   * bytecode (920 bytes), and what the pop leaves out is room for the rest of a device's loop
   * (on Node 24, W1 L=1 about 28 -> 26 ns per chain; docs/PERFORMANCE.md).
   */
  private freshChain(): ChainRecord {
    return new ChainRecord(Math.min(this.qsize, 16));
  }

  /**
   * Reads and validates the chain whose head is descriptor `head` (the seed's
   * `DescriptorChain::checked_new`, extended to the whole chain).
   */
  chainAt(head: number, into?: DescriptorChain): DescriptorChain {
    this.requireActive();
    const chain = into === undefined ? new ChainRecord(Math.min(this.qsize, 16)) : recordOf(into);
    this.parseChain(head, chain);
    return chain;
  }

  private parseChain(head: number, chain: ChainRecord): void {
    const size = this.qsize;
    // The fast path (walkSplit) needs no `begin` for a record already over this memory.
    if (chain.memory === this.memory && head < size && walkSplit(chain, this.desc32, head, size)) {
      chain.head = head;
      return;
    }
    this.parseChecked(head, chain);
  }

  /** A chain the fast walk did not take: started again with every check and reported in full. */
  private parseChecked(head: number, chain: ChainRecord): void {
    const size = this.qsize;
    chain.begin(head, this.memory!, size, this.indirectDesc);
    // §2.7.13.2 (avail ring): the driver puts only valid head indices there.
    if (!(head >= 0 && head < size)) throw headOutOfRange(head, size);
    walkSplitChecked(chain, this.desc32, head, size);
    chain.end();
  }

  /** See {@link Queue.warm}: the heads' descriptors, and their buffers. */
  warm(count: number, write = false): void {
    if (!this.active) return;
    const mask = this.qsize - 1;
    const from = this._nextAvail;
    let ahead = this.warmedTo < 0 ? 0 : (this.warmedTo - from) & 0xffff;
    if (ahead > mask) ahead = 0;
    if (2 * ahead > count) return; // more than half of the window is still read ahead
    const avail = this.avail16;
    const desc = this.desc32;
    let n = (avail[1]! - from) & 0xffff;
    if (n > count) n = count;
    if (n > mask) n = mask + 1; // more is a bad index, which the pop resynchronises
    let sum = 0;
    for (let k = ahead; k < n; k++) {
      const d = (avail[2 + ((from + k) & mask)]! & mask) << 2;
      const flags = desc[d + SPLIT_DESC_FLAGS_NEXT_U32]! & 0xffff;
      const writable =
        write && (flags & (VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_INDIRECT)) === VIRTQ_DESC_F_WRITE
          ? desc[d + SPLIT_DESC_LEN_U32]!
          : 0;
      sum += this.touch(joinU64Unclamped(desc[d]!, desc[d + 1]!), writable);
    }
    if (n > ahead) this.warmedTo = (from + n) & 0xffff;
    this.warmth = sum;
  }

  /** Gives back the chain popped last, so the next pop returns it again. */
  undoPop(): void {
    this._nextAvail = (this._nextAvail - 1) & 0xffff;
  }

  // ---- used side ----

  /**
   * Writes used element (id, len) at ring position `nextUsed + offset`, without publishing it.
   * `id` must be a descriptor index of this queue.
   */
  writeUsedElement(offset: number, id: number, len: number): void {
    this.requireActive();
    const size = this.qsize;
    if (!(id >= 0 && id < size) || id !== (id | 0)) throw new UsedRingError(id, size);
    if (len >>> 0 !== len) throw new RangeError(`used length ${len} is not a u32`);
    const slot = (this._nextUsed + offset) & (size - 1);
    const w = 1 + 2 * slot;
    this.used32[w] = id;
    this.used32[w + 1] = len;
    this.markUsedDirty(slot);
  }

  /** Marks used element `slot` dirty (dirty tracking is on). */
  private markUsedDirty(slot: number): void {
    this.usedRegion!.markDirty(this.usedAddr + 4 + 8 * slot, 8);
  }

  /** Counts `n` more used elements as written (they are published by {@link advanceUsedRingIdx}). */
  advanceNextUsed(n: number): void {
    this._numAdded = (this._numAdded + n) & 0xffff;
    this._nextUsed = (this._nextUsed + n) & 0xffff;
  }

  /** Publishes every used element written so far: one release store of `used.idx`. */
  advanceUsedRingIdx(): void {
    this.requireActive();
    Atomics.store(this.used16, 1, this._nextUsed);
    this.usedRegion!.markPageDirty(this.usedAddr + 2);
  }

  /** Adds a used element for chain `id` with `len` bytes written; publish with {@link advanceUsedRingIdx}. */
  addUsed(id: number, len: number): void {
    // writeUsedElement(0, ...) and advanceNextUsed(1) in one, the errors out of line: the
    // per-chain path, small enough to inline (docs/PERFORMANCE.md). It does not go through
    // writeUsedElement, so a subclass that hooks that (TrackedSplitQueue) hooks this too.
    const size = this.qsize;
    // `active !== true` is one comparison; `!active` is V8's generic truthiness test (the field
    // is not typed boolean). `id >>> 0 !== id` holds for all but an integer in [0, 2^32).
    if (this.active !== true || id >>> 0 !== id || id >= size || len >>> 0 !== len) {
      this.writeUsedElement(0, id, len); // throws the right error
    }
    const slot = this._nextUsed & (size - 1);
    const w = 1 + 2 * slot;
    this.used32[w] = id;
    this.used32[w + 1] = len;
    if (this.usedTracking[0] !== 0) this.markUsedDirty(slot);
    this._numAdded = (this._numAdded + 1) & 0xffff;
    this._nextUsed = (this._nextUsed + 1) & 0xffff;
  }

  /**
   * In-order completion (VIRTIO_F_IN_ORDER, §2.7.9): marks the next `count` chains used with a
   * single used entry, for `lastId` (the head of the batch's last chain) with `lastLen` bytes,
   * written at the batch's first used slot; `used.idx` then advances by `count` when published.
   */
  addUsedBatch(count: number, lastId: number, lastLen: number): void {
    // An inactive queue (say, reset by the guest) is QUEUE_NOT_ACTIVE, not a bad count.
    this.requireActive();
    if (!Number.isInteger(count) || count < 1 || count > this.qsize) {
      throw new RangeError(`in-order batch of ${count} chains on a queue of ${this.qsize}`);
    }
    this.writeUsedElement(0, lastId, lastLen);
    this.advanceNextUsed(count);
  }

  // ---- notifications ----

  /**
   * With notification suppression: if no chain is pending, writes `avail_event = nextAvail` and
   * returns true when the driver still has published nothing new after that (so a notification
   * is guaranteed for the next chain); returns false when chains are (or became) available.
   * Without it: always true.
   */
  tryEnableNotification(): boolean {
    if (!this.usesNotifSuppression) return true;
    this.requireActive();
    if (this.lenSanitized() !== 0) return false;
    Atomics.store(this.used16, this.availEventIndex, this._nextAvail);
    this.usedRegion!.markPageDirty(this.usedAddr + 2 * this.availEventIndex);
    // Both accesses are sequentially consistent: the store is visible before this load.
    return this._nextAvail === Atomics.load(this.avail16, 1);
  }

  /**
   * Asks the driver not to notify (`enabled = false`) or to notify again. With notification
   * suppression this moves `avail_event` (only enabling has an effect); without it, it sets or
   * clears VIRTQ_USED_F_NO_NOTIFY (§2.7.10). Returns what {@link tryEnableNotification} would.
   */
  setNotification(enabled: boolean): boolean {
    this.requireActive();
    if (this.usesNotifSuppression) return enabled ? this.tryEnableNotification() : true;
    Atomics.store(this.used16, 0, enabled ? 0 : VIRTQ_USED_F_NO_NOTIFY);
    this.usedRegion!.markPageDirty(this.usedAddr);
    return true;
  }

  /**
   * Whether the driver needs a used-buffer notification for the elements published since the
   * last call (Linux's `vring_need_event` over the batch). With notification suppression this
   * clears `numAdded`. Without it, it honours VIRTQ_AVAIL_F_NO_INTERRUPT (§2.7.7).
   */
  prepareKick(): boolean {
    this.requireActive();
    if (!this.usesNotifSuppression) {
      return (Atomics.load(this.avail16, 0) & VIRTQ_AVAIL_F_NO_INTERRUPT) === 0;
    }
    const newIdx = this._nextUsed;
    const oldIdx = (newIdx - this._numAdded) & 0xffff;
    const usedEvent = Atomics.load(this.avail16, this.usedEventIndex);
    this._numAdded = 0;
    return ((newIdx - usedEvent - 1) & 0xffff) < ((newIdx - oldIdx) & 0xffff);
  }

  // ---- snapshots ----

  /** The queue's whole state as a plain, versioned, JSON-safe object. */
  save(): SplitQueueState {
    return {
      ...this.saveCommon(),
      format: 'split',
      nextAvail: this._nextAvail,
      nextUsed: this._nextUsed,
      numAdded: this._numAdded,
    };
  }

  /**
   * Builds a queue from a saved state, validating every field; an active state is initialised
   * over `memory` (so its rings are checked against it). Throws {@link SnapshotError} naming
   * the first bad field.
   */
  static fromState(
    state: unknown,
    memory: GuestMemory | null,
    options: SplitQueueOptions = {},
  ): SplitQueue {
    const r = StateReader.root(state, 'split');
    r.literal('format', ['split']);
    // Any u32 the guest wrote to the size register restores; initialize() judges an active one.
    const c = r.common(MAX_QUEUE_SIZE, 0xffffffff);
    const q = new SplitQueue(c.maxSize, options);
    q.applyCommon(c);
    q._nextAvail = r.int('nextAvail', 0, 0xffff);
    q._nextUsed = r.int('nextUsed', 0, 0xffff);
    q._numAdded = r.int('numAdded', 0, 0xffff);
    if (c.active) q.initializeRestored(memory, 'split');
    return q;
  }

  protected override fromSaved(state: unknown, memory: GuestMemory | null): Queue {
    return SplitQueue.fromState(state, memory, { logger: this.logger });
  }

  protected override keptAcrossRestore(): object {
    // Counts this object's resynchronisations, not the ring's state (Object.assign would zero it).
    return { resyncCount: this.resyncCount };
  }
}

/** The error of a chain head outside the descriptor table (§2.7.13.2). */
function headOutOfRange(head: number, size: number): DescriptorError {
  return new DescriptorError(
    'DESC_HEAD_OUT_OF_RANGE',
    head,
    head,
    `chain head ${head} is outside a table of ${size}`,
  );
}
