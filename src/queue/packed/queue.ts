import { DescriptorError, QueueConfigError, SnapshotError, UsedRingError } from '../../errors.js';
import type { GuestMemory } from '../../memory/guest-memory.js';
import type { GuestRegion } from '../../memory/region.js';
import { ringArea } from '../area.js';
import { QueueBase } from '../base.js';
import type { DescriptorChain } from '../chain.js';
import { ChainRecord, recordOf } from '../chain-record.js';
import { walkPackedList } from '../chain-walk.js';
import {
  MAX_QUEUE_SIZE,
  VIRTQ_DESC_F_AVAIL,
  VIRTQ_DESC_F_USED,
  VIRTQ_DESC_F_WRITE,
} from '../constants.js';
import type { Logger } from '../logger.js';
import type { Queue } from '../queue.js';
import { type PackedQueueState, StateReader } from '../state.js';
import { eventWanted } from './event.js';
import { InFlightBuffers } from './in-flight.js';
import {
  PACKED_DESC_FLAGS,
  PACKED_DESC_FLAGS_U16,
  PACKED_DESC_ID_U16,
  PACKED_DESC_RING_ALIGN,
  PACKED_EVENT_ALIGN,
  PACKED_EVENT_BYTES,
  packedDescRingBytes,
  packOffWrap,
  RING_EVENT_FLAGS_DESC,
  RING_EVENT_FLAGS_DISABLE,
  RING_EVENT_FLAGS_ENABLE,
} from './layout.js';

const EMPTY16 = new Uint16Array(0);
const EMPTY32 = new Uint32Array(0);
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
export class PackedQueue extends QueueBase implements Queue {
  readonly format = 'packed' as const;

  // Ring state, built for `stateSize` slots (0: none yet).
  private stateSize = 0;
  protected _nextAvail = 0;
  protected _availWrap = 1;
  protected _nextUsed = 0;
  protected _usedWrap = 1;
  /** Ring slots marked used since the last prepareKick, capped at 2 * size. */
  private _numAdded = 0;
  /** The buffers in flight, in pop order. */
  private readonly buffers = new InFlightBuffers();

  /** Slot of the first used descriptor of the unpublished batch, or -1. */
  protected pendingSlot = -1;
  /** The flags that slot gets when the batch is published. */
  private pendingFlags = 0;
  /** Ring slots the unpublished batch covers so far. */
  private pendingSpan = 0;

  /** What undoPop restores: the id popped last (-1: nothing to undo) and the position before. */
  protected undoId = -1;
  private undoNextAvail = 0;
  private undoWrap = 1;

  /** Ring slots read by the chain being parsed (consumed even when it turns out malformed). */
  protected walked = 0;
  /** The flags value last written to the device event suppression structure. */
  private deviceEventFlags = RING_EVENT_FLAGS_ENABLE;

  // Captured by initialize().
  protected desc16: Uint16Array = EMPTY16;
  protected desc32: Uint32Array = EMPTY32;
  private driver32: Uint32Array = EMPTY32;
  private device32: Uint32Array = EMPTY32;
  private descRegion: GuestRegion | null = null;
  private deviceRegion: GuestRegion | null = null;
  private descAddr = 0;
  private deviceAddr = 0;

  constructor(maxSize: number, options: PackedQueueOptions = {}) {
    super(maxSize, options.logger);
  }

  /** Ring slot the device reads next. */
  get nextAvail(): number {
    return this._nextAvail;
  }
  /** Device's copy of the driver ring wrap counter: the AVAIL bit an available slot carries. */
  get availWrapCounter(): boolean {
    return this._availWrap === 1;
  }
  /** Ring slot of the next used descriptor. */
  get nextUsed(): number {
    return this._nextUsed;
  }
  /** Device ring wrap counter (§2.8.1): the AVAIL and USED bits of the next used descriptor. */
  get usedWrapCounter(): boolean {
    return this._usedWrap === 1;
  }
  /** Ring slots marked used since the last {@link prepareKick} (capped at twice the size). */
  get numAdded(): number {
    return this._numAdded;
  }
  /** Buffers popped and not yet marked used. */
  get inFlight(): number {
    return this.buffers.count;
  }
  /** Ring slots those buffers took. */
  get inFlightSlots(): number {
    return this.buffers.slots;
  }
  /** True when buffer `id` was popped and not yet marked used. */
  protected override checkHeldHead(id: number, slots: number): void {
    const held = this.buffers.slotsOf[id]!;
    if (held === 0 || held !== slots) {
      throw new DescriptorError(
        'DESC_PACKED_BAD_ID',
        id,
        id,
        held === 0
          ? `buffer ${id} is not in flight`
          : `buffer ${id} takes ${held} ring slots, not ${slots}`,
      );
    }
  }

  isInFlight(id: number): boolean {
    return this.buffers.has(id);
  }
  /** Ids in flight, oldest pop first (allocates; for tests and diagnostics). */
  inFlightIds(): number[] {
    return this.buffers.entries().map(([id]) => id);
  }

  /**
   * Checks the configuration against VIRTIO 1.2 §2.8 and `memory`, then builds the views of the
   * descriptor ring and the two event suppression structures and marks them dirty. Throws
   * {@link QueueConfigError}; on error the queue is left inactive. Ring state (positions, wrap
   * counters, buffers in flight) carries over when the size is unchanged, and starts fresh
   * otherwise.
   */
  initialize(memory: GuestMemory): void {
    // §2.8: at most 2^15 entries (and the device's maximum); §2.8.10.1: any size, not only 2^n.
    const size = this.beginInitialize(false);
    // §2.8.10.1 / §2.8.11: descriptor ring 16-byte aligned, event structures 4-byte aligned.
    const desc = ringArea(
      memory,
      'descTableAddress',
      this.descTableAddress,
      packedDescRingBytes(size),
      PACKED_DESC_RING_ALIGN,
    );
    const driver = ringArea(
      memory,
      'availRingAddress',
      this.availRingAddress,
      PACKED_EVENT_BYTES,
      PACKED_EVENT_ALIGN,
    );
    const device = ringArea(
      memory,
      'usedRingAddress',
      this.usedRingAddress,
      PACKED_EVENT_BYTES,
      PACKED_EVENT_ALIGN,
    );

    // ringArea() checked range and alignment, so these views cannot fail.
    this.desc16 = memory.typedView(Uint16Array, this.descTableAddress, 8 * size);
    this.desc32 = memory.typedView(Uint32Array, this.descTableAddress, 4 * size);
    // One u32 per event structure: off_wrap in the low half, flags in the high half, so both
    // are read (and written) together as one consistent snapshot.
    this.driver32 = memory.typedView(Uint32Array, this.availRingAddress, 1);
    this.device32 = memory.typedView(Uint32Array, this.usedRingAddress, 1);
    this.descRegion = desc;
    this.deviceRegion = device;
    this.descAddr = this.descTableAddress;
    this.deviceAddr = this.usedRingAddress;
    this.memory = memory;
    if (this.stateSize !== size) this.freshState(size);
    this.qsize = size;

    // As the split queue does: ring memory counts as written from the moment the queue is live.
    desc.markDirty(this.descTableAddress, packedDescRingBytes(size));
    driver.markDirty(this.availRingAddress, PACKED_EVENT_BYTES);
    device.markDirty(this.usedRingAddress, PACKED_EVENT_BYTES);
    this.active = true;
  }

  /** Ring state of a new queue of `size` slots: both wrap counters 1 (§2.8.1), nothing in flight. */
  private freshState(size: number): void {
    this.stateSize = size;
    this.buffers.reset(size);
    this._nextAvail = 0;
    this._availWrap = 1;
    this._nextUsed = 0;
    this._usedWrap = 1;
    this._numAdded = 0;
    this.pendingSlot = -1;
    this.pendingSpan = 0;
    this.undoId = -1;
  }

  // ---- in-flight list ----

  /** Buffer `id` is no longer in flight (used, or given back); returns its ring slots. */
  protected unlink(id: number): number {
    const slots = this.buffers.remove(id);
    if (this.undoId === id) this.undoId = -1;
    return slots;
  }

  // ---- available side ----

  /** §2.8.1: available when AVAIL matches the driver wrap counter and USED does not. */
  private isAvailFlags(flags: number): boolean {
    const wrap = this._availWrap;
    return ((flags >>> 7) & 1) === wrap && ((flags >>> 15) & 1) !== wrap;
  }

  /** True when no descriptor is available at {@link nextAvail}. */
  isEmpty(): boolean {
    this.requireActive();
    return !this.isAvailFlags(
      Atomics.load(this.desc16, (this._nextAvail << 3) + PACKED_DESC_FLAGS_U16),
    );
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
    this.requireActive();
    // §2.8.15: the device MUST NOT use a descriptor unless it observes its AVAIL bit changed.
    const flags = Atomics.load(this.desc16, (this._nextAvail << 3) + PACKED_DESC_FLAGS_U16);
    if (!this.isAvailFlags(flags)) return null;
    const chain = into === undefined ? new ChainRecord(Math.min(this.qsize, 16)) : recordOf(into);
    this.undoId = -1;
    try {
      this.parseChain(flags, chain);
    } catch (e) {
      this.walked = chain.slotsRead;
      // At most one lap: a list longer than the ring stops on the slot it started from.
      this.skipAvail(Math.min(this.walked, this.qsize));
      throw e;
    }
    this.walked = chain.slotsRead;
    const id = chain.head;
    this.buffers.add(id, this.walked);
    this.undoId = id;
    this.undoNextAvail = this._nextAvail;
    this.undoWrap = this._availWrap;
    this.skipAvail(this.walked);
    return chain;
  }

  /**
   * With notification suppression: pops a buffer, or, when there is none, asks the driver (in
   * the device event suppression structure) to notify when the descriptor at {@link nextAvail}
   * becomes available and returns null, unless one became available meanwhile. Without it: the
   * same as {@link pop}.
   */
  popOrEnableNotification(into?: DescriptorChain): DescriptorChain | null {
    if (!this.usesNotifSuppression) return this.pop(into);
    this.requireActive();
    if (this.tryEnableNotification()) return null;
    return this.pop(into);
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

  private parseChain(headFlags: number, chain: ChainRecord): void {
    const size = this.qsize;
    const d16 = this.desc16;
    // Slots a new list may take: the ring minus the slots of buffers in flight, since the
    // driver MUST NOT reuse a slot before seeing it used (§2.8.16).
    const free = size - this.buffers.slots;
    const first = this._nextAvail;
    // The acquire load of the head's flags (in pop) orders every later read of the list: the
    // driver writes the head's flags last (§2.8.21.3), so the rest are plain loads.
    // Until the list ends, errors name the id written in its first descriptor.
    chain.begin(d16[(first << 3) + PACKED_DESC_ID_U16]!, this.memory!, size, this.indirectDesc);
    chain.slotsRead = 0;
    const i = walkPackedList(chain, this.desc32, first, headFlags, size, free);
    // §2.8.6: the buffer id is the one in the list's last descriptor.
    const id = d16[(i << 3) + PACKED_DESC_ID_U16]!;
    chain.head = id;
    // §2.8.21.1: the driver takes a free buffer id; ids index per-buffer state of queue size.
    if (id >= size) chain.fail('DESC_PACKED_BAD_ID', i, `buffer id ${id} is not below ${size}`);
    if (this.buffers.slotsOf[id] !== 0) {
      chain.fail('DESC_PACKED_BAD_ID', i, `buffer id ${id} is already in flight`);
    }
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
    this.unlink(id);
    this._nextAvail = this.undoNextAvail;
    this._availWrap = this.undoWrap;
  }

  // ---- used side ----

  /**
   * Marks buffer `id` (a popped chain's `head`) used with `len` bytes written: writes a used
   * descriptor at {@link nextUsed} and moves past every ring slot the buffer's list took
   * (§2.8.6). The first used descriptor of a batch gets its flags only in
   * {@link advanceUsedRingIdx}, so the driver sees the batch all at once (§2.8.9).
   */
  addUsed(id: number, len: number): void {
    this.requireActive();
    const slots = this.inFlightSlotsOf(id);
    if (len >>> 0 !== len) throw new RangeError(`used length ${len} is not a u32`);
    this.unlink(id);
    this.writeUsed(id, len, slots);
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
    this.descRegion!.markDirty(this.descAddr + 16 * slot + 8, 8);
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

  // ---- notifications ----

  /** Writes the device event suppression structure: flags and off_wrap in one store. */
  private writeDeviceEvent(flags: number, offWrap: number): void {
    this.deviceEventFlags = flags;
    Atomics.store(this.device32, 0, ((flags << 16) | offWrap) >>> 0);
    this.deviceRegion!.markPageDirty(this.deviceAddr);
  }

  /**
   * With notification suppression: if no buffer is available, sets RING_EVENT_FLAGS_DESC with
   * `off_wrap` = ({@link nextAvail}, wrap counter), so the driver notifies when that descriptor
   * becomes available, and returns true when it still is not available after that store (a
   * notification is then guaranteed); false when a buffer is (or became) available.
   * Without it: always true, as for the split ring.
   */
  tryEnableNotification(): boolean {
    if (!this.usesNotifSuppression) return true;
    this.requireActive();
    const at = (this._nextAvail << 3) + PACKED_DESC_FLAGS_U16;
    if (this.isAvailFlags(Atomics.load(this.desc16, at))) return false;
    // §2.8.10: a descriptor-specific event names the slot and the wrap counter to match.
    this.writeDeviceEvent(RING_EVENT_FLAGS_DESC, packOffWrap(this._nextAvail, this._availWrap));
    // Both accesses are sequentially consistent: the store is visible before this load.
    return !this.isAvailFlags(Atomics.load(this.desc16, at));
  }

  /**
   * Asks the driver not to notify (RING_EVENT_FLAGS_DISABLE) or to notify again: with
   * notification suppression a descriptor-specific event at {@link nextAvail} (see
   * {@link tryEnableNotification}, whose result it returns), without it RING_EVENT_FLAGS_ENABLE
   * (§2.8.10, §2.8.14). Returns true otherwise.
   */
  setNotification(enabled: boolean): boolean {
    this.requireActive();
    if (!enabled) {
      this.writeDeviceEvent(RING_EVENT_FLAGS_DISABLE, 0);
      return true;
    }
    if (this.usesNotifSuppression) return this.tryEnableNotification();
    this.writeDeviceEvent(RING_EVENT_FLAGS_ENABLE, 0);
    return true;
  }

  /**
   * Whether the driver wants a used-buffer notification for what was marked used since the
   * last call, from the driver event suppression structure (§2.8.10, §2.8.14): DISABLE means
   * no, ENABLE yes; DESC (with notification suppression) yes when the descriptor named by
   * `off_wrap` is among the ring slots marked used since the last call; values the driver
   * MUST NOT write read as yes (see `eventWanted` in `packed/event.ts`). Clears {@link numAdded}.
   */
  prepareKick(): boolean {
    this.requireActive();
    const added = this._numAdded;
    this._numAdded = 0;
    // One load of off_wrap and flags together, so both belong to the same driver update.
    return eventWanted(
      Atomics.load(this.driver32, 0),
      this.usesNotifSuppression,
      this.qsize,
      this._nextUsed,
      this._usedWrap,
      added,
    );
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

  /** Back to the state of a new queue (device reset, §2.4): inactive, size = maxSize, zeroes. */
  reset(): void {
    this.resetConfig();
    this.freshState(0);
    this.deviceEventFlags = RING_EVENT_FLAGS_ENABLE;
    this.desc16 = EMPTY16;
    this.desc32 = EMPTY32;
    this.driver32 = EMPTY32;
    this.device32 = EMPTY32;
    this.descRegion = null;
    this.deviceRegion = null;
    this.descAddr = 0;
    this.deviceAddr = 0;
  }
}
