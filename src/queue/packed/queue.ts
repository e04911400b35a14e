import { DescriptorError, SnapshotError, UsedRingError } from '../../errors.js';
import { type GuestMemory, joinU64Unclamped } from '../../memory/guest-memory.js';
import type { DescriptorChain } from '../chain.js';
import { ChainRecord, recordOf } from '../chain-record.js';
import { walkPackedList, walkPackedListChecked } from '../chain-walk.js';
import {
  MAX_QUEUE_SIZE,
  VIRTQ_DESC_F_AVAIL,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_USED,
  VIRTQ_DESC_F_WRITE,
} from '../constants.js';
import type { Logger } from '../logger.js';
import type { Queue } from '../queue.js';
import { type PackedQueueState, StateReader } from '../state.js';
import {
  PACKED_DESC_FLAGS,
  PACKED_DESC_FLAGS_U16,
  PACKED_DESC_ID_U16,
  PACKED_DESC_LEN_U32,
  RING_EVENT_FLAGS_DESC,
  RING_EVENT_FLAGS_DISABLE,
  RING_EVENT_FLAGS_ENABLE,
} from './layout.js';

import { PackedRing } from './ring.js';

/** Both ring-state bits of a descriptor's flags. */
const AVAIL_USED = VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED;

/** Options of a {@link PackedQueue}. */
export interface PackedQueueOptions {
  /** Where to report driver behaviour worth a word (default: console). */
  logger?: Logger;
}

/**
 * The device side of a packed virtqueue (VIRTIO 1.2 §2.8), behind the same {@link Queue}
 * interface as the split ring. The configuration fields keep the split ring's names:
 * `descTableAddress` is the descriptor ring, `availRingAddress` the driver event suppression
 * structure and `usedRingAddress` the device event suppression structure.
 *
 * Ring state, all of it device-private (nothing the driver writes is trusted):
 * - `nextAvail` / `availWrapCounter`: the ring slot the device reads next and the wrap counter a
 *   descriptor there must carry to be available (§2.8.1);
 * - `nextUsed` / `usedWrapCounter`: where the next used descriptor goes and the wrap counter it
 *   is written with;
 * - the buffers in flight, in pop order, each with the number of ring slots its list took, so
 *   that marking it used moves `nextUsed` past all of them (§2.8.6).
 *
 * Descriptor `flags` and `id`, and both event suppression structures, are accessed with
 * `Atomics` (ring progress); addresses and lengths are plain accesses ordered by them.
 */
export class PackedQueue extends PackedRing implements Queue {
  constructor(maxSize: number, options: PackedQueueOptions = {}) {
    super(maxSize, options.logger);
  }

  // ---- in-flight list ----

  /** Buffer `id` is no longer in flight (used, or given back); returns its ring slots. */
  protected unlink(id: number): number {
    const slots = this.buffers.remove(id);
    if (this.undoId === id) this.undoId = -1;
    return slots;
  }

  /**
   * Pops the next available buffer, or returns null when the descriptor at {@link nextAvail} is
   * not available. The buffer is parsed into `into` when given (no allocation), else into a
   * new {@link DescriptorChain}; its `head` is the buffer id.
   *
   * A malformed list throws {@link DescriptorError}; the ring slots read up to the fault (at
   * most one lap) are consumed either way and the id does not go in flight, so a device that
   * carries on does not see them again.
   */
  pop(into?: DescriptorChain): DescriptorChain | null {
    if (this.active !== true) this.requireActive();
    const first = this._nextAvail;
    const wrap = this._availWrap;
    // §2.8.15: the device MUST NOT use a descriptor unless it observes its AVAIL bit changed.
    // §2.8.1: available when AVAIL matches the driver wrap counter and USED does not.
    const flags = Atomics.load(this.desc16, (first << 3) + PACKED_DESC_FLAGS_U16);
    if (((flags >>> 7) & 1) !== wrap || ((flags >>> 15) & 1) === wrap) return null;
    const chain = into === undefined ? this.freshChain() : recordOf(into);
    return this.take(first, flags, chain);
  }

  /** A new chain for a pop that was given none, out of line (see `SplitQueue.freshChain`). */
  private freshChain(): ChainRecord {
    return new ChainRecord(Math.min(this.qsize, 16));
  }

  /**
   * Takes the available list at {@link nextAvail}, whose head flags (`flags`) were just loaded
   * with acquire: that load orders every later read of the list, since the driver writes the
   * head's flags last (§2.8.21.3), so the rest are plain loads. The fast path is a plain list
   * (walkPackedList) with a free buffer id; anything else goes to {@link popChecked}.
   */
  private take(first: number, flags: number, chain: ChainRecord): ChainRecord {
    const size = this.qsize;
    const held = this.buffers;
    const end =
      chain.memory === this.memory
        ? walkPackedList(chain, this.desc32, first, flags, size, size - held.slots)
        : -1;
    // §2.8.6: the buffer id is the one in the list's last descriptor; §2.8.21.1: the driver
    // takes a free id, below the queue size (ids index per-buffer state).
    const id = end < 0 ? size : this.desc16[(end << 3) + PACKED_DESC_ID_U16]!;
    if (id >= size || held.slotsOf[id] !== 0) return this.popChecked(first, flags, chain);
    const slots = chain.count;
    chain.head = id;
    held.add(id, slots);
    this.undoId = id;
    this.skipAvail(slots);
    return chain;
  }

  /**
   * The available list at {@link nextAvail} (whose head flags are `headFlags`) read with every
   * check and reported in full, for whatever {@link pop}'s fast path leaves: indirect tables,
   * empty buffers, other regions, a broken rule or a bad id.
   */
  private popChecked(first: number, headFlags: number, chain: ChainRecord): ChainRecord {
    this.undoId = -1;
    try {
      this.parseChain(first, headFlags, chain);
    } catch (e) {
      // At most one lap: a list longer than the ring stops on the slot it started from.
      this.skipAvail(Math.min(chain.slotsRead, this.qsize));
      throw e;
    }
    const slots = chain.slotsRead;
    const id = chain.head;
    this.buffers.add(id, slots);
    this.undoId = id;
    this.skipAvail(slots);
    return chain;
  }

  /**
   * With notification suppression: pops a buffer, or, when there is none, asks the driver (in
   * the device event suppression structure) to notify when the descriptor at {@link nextAvail}
   * becomes available and returns null, unless one became available meanwhile. Without it: the
   * same as {@link pop}.
   */
  popOrEnableNotification(into?: DescriptorChain): DescriptorChain | null {
    // The pop first: when a buffer is there (the usual case in a busy ring) its one acquire
    // load of the head's flags is all this costs; asking first, as the split ring does for
    // free, would load them twice (about 8 ns each on V8).
    const c = this.pop(into);
    if (c !== null || !this.usesNotifSuppression || this.polled) return c;
    if (this.tryEnableNotification()) return null;
    return this.pop(into);
  }

  /** The slot at `warmedTo` starts a chain (the descriptor before it has no NEXT). */
  private warmedAtHead = true;

  /**
   * See {@link Queue.warm}: the available slots' descriptors and buffers, up to `count`
   * (with `write`, the chains' first buffers).
   */
  warm(count: number, write = false): void {
    if (!this.active) return;
    const size = this.qsize;
    const from = this._nextAvail + (this._availWrap === 1 ? 0 : size);
    let ahead = this.warmedTo < 0 ? 0 : this.warmedTo - from;
    if (ahead < 0) ahead += 2 * size;
    if (ahead > size) ahead = 0;
    if (2 * ahead > count) return; // more than half of the window is still read ahead
    const n = count < size ? count : size;
    const d16 = this.desc16;
    const d32 = this.desc32;
    let slot = this._nextAvail + ahead;
    let wrap = this._availWrap;
    if (slot >= size) {
      slot -= size;
      wrap ^= 1;
    }
    let sum = 0;
    let k = ahead;
    // Whether the slot holds a chain's first descriptor: at the ring position it does, further
    // on as the last read left it; then each one after a descriptor without NEXT.
    let head = ahead === 0 || this.warmedAtHead;
    for (; k < n; k++) {
      const flags = d16[(slot << 3) + PACKED_DESC_FLAGS_U16]!;
      if (((flags >>> 7) & 1) !== wrap || ((flags >>> 15) & 1) === wrap) break;
      const writable =
        write &&
        head &&
        (flags & (VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_INDIRECT)) === VIRTQ_DESC_F_WRITE
          ? d32[(slot << 2) + PACKED_DESC_LEN_U32]!
          : 0;
      head = (flags & VIRTQ_DESC_F_NEXT) === 0;
      sum += this.touch(joinU64Unclamped(d32[slot << 2]!, d32[(slot << 2) + 1]!), writable);
      if (++slot === size) {
        slot = 0;
        wrap ^= 1;
      }
    }
    if (k > ahead) {
      this.warmedTo = slot + (wrap === 1 ? 0 : size);
      this.warmedAtHead = head;
    }
    this.warmth = sum;
  }

  private skipAvail(slots: number): void {
    let next = this._nextAvail + slots;
    // §2.8.1: the wrap counter flips each time the ring's last slot is passed.
    if (next >= this.qsize) {
      next -= this.qsize;
      this._availWrap ^= 1;
    }
    this._nextAvail = next;
  }

  private parseChain(first: number, headFlags: number, chain: ChainRecord): void {
    const size = this.qsize;
    const d16 = this.desc16;
    // Slots a new list may take: the ring minus the slots of buffers in flight, since the
    // driver MUST NOT reuse a slot before seeing it used (§2.8.16).
    const free = size - this.buffers.slots;
    // Until the list ends, errors name the id written in its first descriptor.
    chain.begin(d16[(first << 3) + PACKED_DESC_ID_U16]!, this.memory!, size, this.indirectDesc);
    chain.slotsRead = 0;
    const i = walkPackedListChecked(chain, this.desc32, first, headFlags, size, free);
    // §2.8.6: the buffer id is the one in the list's last descriptor.
    const id = d16[(i << 3) + PACKED_DESC_ID_U16]!;
    chain.head = id;
    // §2.8.21.1: the driver takes a free buffer id; ids index per-buffer state of queue size.
    if (id >= size || this.buffers.slotsOf[id] !== 0) badId(chain, i, id, size);
    chain.end();
  }

  /**
   * Gives back the buffer popped last, so that the next pop returns it again. Possible until
   * that buffer is marked used or the next pop reads a list (even a malformed one); otherwise
   * throws RangeError, a mistake of the program using the queue.
   */
  undoPop(): void {
    const id = this.undoId;
    if (!this.buffers.has(id)) {
      throw new RangeError('undoPop: no popped buffer to give back');
    }
    // The pop moved the position past the buffer's slots and nothing has moved it since.
    let back = this._nextAvail - this.unlink(id);
    if (back < 0) {
      back += this.qsize;
      this._availWrap ^= 1;
    }
    this._nextAvail = back;
  }

  // ---- used side ----

  /**
   * Marks buffer `id` (a popped chain's `head`) used with `len` bytes written: writes a used
   * descriptor at {@link nextUsed} and moves past every ring slot the buffer's list took
   * (§2.8.6). The first used descriptor of a batch gets its flags only in
   * {@link advanceUsedRingIdx}, so the driver sees the batch all at once (§2.8.9).
   */
  addUsed(id: number, len: number): void {
    // The checks in one test with their errors out of line, so this stays small enough to
    // inline into a device's loop (as the split queue's addUsed).
    const held = this.buffers.slotsOf;
    // `!(held[id] > 0)` also refuses an id that is not an integer (its element is undefined).
    if (
      this.active !== true ||
      !(id >= 0 && id < held.length) ||
      !(held[id]! > 0) ||
      len >>> 0 !== len
    ) {
      this.addUsedFailed(id, len);
    }
    this.writeUsed(id, len, this.unlink(id));
  }

  /** Throws the error a bad {@link addUsed} call deserves. */
  private addUsedFailed(id: number, len: number): never {
    this.requireActive();
    this.inFlightSlotsOf(id);
    throw new RangeError(`used length ${len} is not a u32`);
  }

  /**
   * In-order completion (VIRTIO_F_IN_ORDER, §2.8.8): marks the `count` buffers popped longest
   * ago used with a single used descriptor for the last of them, `lastId`, with `lastLen`
   * bytes, and skips the ring slots of the whole batch. `lastId` must be the `count`-th oldest
   * buffer in flight (RangeError otherwise).
   */
  addUsedBatch(count: number, lastId: number, lastLen: number): void {
    this.requireActive();
    this.inFlightSlotsOf(lastId);
    const held = this.buffers;
    if (!Number.isInteger(count) || count < 1 || count > held.count) {
      throw new RangeError(`in-order batch of ${count} with ${held.count} buffers in flight`);
    }
    if (lastLen >>> 0 !== lastLen) throw new RangeError(`used length ${lastLen} is not a u32`);
    const id = held.nth(count - 1);
    if (id !== lastId) {
      throw new RangeError(`in-order batch of ${count} ends at buffer ${id}, not ${lastId}`);
    }
    let slots = 0;
    for (let k = 0; k < count; k++) {
      slots += this.unlink(held.oldest);
    }
    this.writeUsed(lastId, lastLen, slots);
  }

  /** Ring slots of buffer `id`, which must be in flight. */
  private inFlightSlotsOf(id: number): number {
    const size = this.qsize;
    if (!(id >= 0 && id < size) || id !== (id | 0)) throw new UsedRingError(id, size);
    const slots = this.buffers.slotsOf[id]!;
    if (slots === 0) {
      const e = new UsedRingError(id, size);
      e.message = `used id ${id} is not a buffer in flight`;
      throw e;
    }
    return slots;
  }

  private writeUsed(id: number, len: number, slots: number): void {
    const size = this.qsize;
    const slot = this._nextUsed;
    // The unpublished batch never reaches its own first slot again: only a driver that reuses
    // slots it has not seen used can get there, and then the batch so far is published first.
    if (this.pendingSlot >= 0 && this.pendingSpan >= size) this.advanceUsedRingIdx();
    // §2.8.1: a used descriptor has AVAIL and USED both equal to the device wrap counter.
    // §2.8.3: WRITE says whether the device wrote anything (and so whether len means anything).
    const flags = (this._usedWrap === 1 ? AVAIL_USED : 0) | (len > 0 ? VIRTQ_DESC_F_WRITE : 0);
    this.desc32[(slot << 2) + 2] = len;
    this.desc16[(slot << 3) + PACKED_DESC_ID_U16] = id;
    if (this.pendingSlot < 0) {
      this.pendingSlot = slot;
      this.pendingFlags = flags;
      this.pendingSpan = 0;
    } else {
      // A plain store: the driver reads used descriptors in ring order, so it reaches this one
      // only after the batch's first, whose flags advanceUsedRingIdx writes last with a
      // release store (Atomics.store, a ~5 ns builtin call in V8, per buffer before).
      this.desc16[(slot << 3) + PACKED_DESC_FLAGS_U16] = flags;
    }
    if (this.descTracking[0] !== 0) this.markUsedDirty(slot);
    this.pendingSpan += slots;
    let next = slot + slots;
    // §2.8.1: the device wrap counter flips each time the ring's last slot is used.
    if (next >= size) {
      next -= size;
      this._usedWrap ^= 1;
    }
    this._nextUsed = next;
    const added = this._numAdded + slots;
    this._numAdded = Math.min(added, 2 * size);
  }

  /** Marks the length and id of the used descriptor in `slot` dirty (dirty tracking is on). */
  private markUsedDirty(slot: number): void {
    this.descRegion!.markDirty(this.descAddr + 16 * slot + 8, 8);
  }

  /**
   * Publishes every used descriptor added since the last call: writes the flags of the batch's
   * first descriptor, last (§2.8.9), with a release store.
   */
  advanceUsedRingIdx(): void {
    this.requireActive();
    const slot = this.pendingSlot;
    if (slot < 0) return;
    Atomics.store(this.desc16, (slot << 3) + PACKED_DESC_FLAGS_U16, this.pendingFlags);
    this.descRegion!.markPageDirty(this.descAddr + 16 * slot + PACKED_DESC_FLAGS);
    this.pendingSlot = -1;
    this.pendingSpan = 0;
  }

  // ---- snapshots ----

  /**
   * The queue's whole state as a plain, versioned, JSON-safe object. `pendingUsed` is the
   * number of ring slots the unpublished used batch covers (0: none), from which a restore
   * finds the batch's first descriptor again.
   */
  save(): PackedQueueState {
    const inFlight = this.buffers.entries();
    return {
      ...this.saveCommon(),
      format: 'packed',
      nextAvail: this._nextAvail,
      availWrap: this._availWrap === 1,
      nextUsed: this._nextUsed,
      usedWrap: this._usedWrap === 1,
      numAdded: this._numAdded,
      inFlight,
      pendingUsed: this.pendingSlot < 0 ? 0 : this.pendingSpan,
      deviceEventFlags: this.deviceEventFlags,
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
    options: PackedQueueOptions = {},
  ): PackedQueue {
    const r = StateReader.root(state, 'packed');
    r.literal('format', ['packed']);
    const c = r.common(MAX_QUEUE_SIZE);
    const q = new PackedQueue(c.maxSize, options);
    q.applyCommon(c);
    const size = c.size;
    const last = Math.max(size - 1, 0);
    q.freshState(size);
    q._nextAvail = r.int('nextAvail', 0, last);
    q._availWrap = r.bool('availWrap') ? 1 : 0;
    q._nextUsed = r.int('nextUsed', 0, last);
    q._usedWrap = r.bool('usedWrap') ? 1 : 0;
    q._numAdded = r.int('numAdded', 0, 2 * size);
    q.deviceEventFlags = r.literal('deviceEventFlags', [
      RING_EVENT_FLAGS_ENABLE,
      RING_EVENT_FLAGS_DISABLE,
      RING_EVENT_FLAGS_DESC,
    ]);
    q.buffers.restore(r.array('inFlight', size), size, 'packed.inFlight');
    const pending = r.int('pendingUsed', 0, Math.max(2 * size - 1, 0));
    if (c.active) {
      q.initializeRestored(memory, 'packed');
      if (pending > 0) q.restorePending(pending);
    } else if (pending > 0) {
      throw new SnapshotError('packed.pendingUsed', 'an inactive queue has no unpublished batch');
    }
    return q;
  }

  /** Rebuilds the held-back first flags of an unpublished batch covering `span` slots. */
  private restorePending(span: number): void {
    const size = this.qsize;
    const lap = 2 * size;
    const now = this._nextUsed + (this._usedWrap === 1 ? 0 : size);
    const first = (now - span + lap) % lap;
    const slot = first % size;
    const len = this.desc32[(slot << 2) + 2]!;
    this.pendingSlot = slot;
    this.pendingSpan = span;
    this.pendingFlags = (first < size ? AVAIL_USED : 0) | (len > 0 ? VIRTQ_DESC_F_WRITE : 0);
  }

  protected override fromSaved(state: unknown, memory: GuestMemory | null): Queue {
    return PackedQueue.fromState(state, memory, { logger: this.logger });
  }
}

/** Fails a list whose buffer id (in slot `slot`) is out of range or already in flight. */
function badId(chain: ChainRecord, slot: number, id: number, size: number): never {
  chain.fail(
    'DESC_PACKED_BAD_ID',
    slot,
    id >= size ? `buffer id ${id} is not below ${size}` : `buffer id ${id} is already in flight`,
  );
}
