/**
 * The packed ring itself (VIRTIO 1.2 §2.8), under {@link PackedQueue}: its configuration and
 * views of guest memory (`initialize`, `reset`), the ring state both directions share
 * (positions, wrap counters, buffers in flight, the unpublished used batch), and the two event
 * suppression structures (`tryEnableNotification`, `setNotification`, `prepareKick`). The
 * flow of buffers (pop, parse, used, snapshots) is `PackedQueue`'s.
 */

import { DescriptorError, QueueConfigError } from '../../errors.js';
import type { GuestMemory } from '../../memory/guest-memory.js';
import type { GuestRegion } from '../../memory/region.js';
import { ringArea } from '../area.js';
import { QueueBase } from '../base.js';
import { eventWanted } from './event.js';
import { InFlightBuffers } from './in-flight.js';
import {
  PACKED_DESC_FLAGS_U16,
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
/** A tracking switch that is off, for a queue with no ring yet. */
const NOT_TRACKING = new Int32Array(1);
/** The ring, its state and its event suppression; {@link PackedQueue} moves buffers through it. */
export abstract class PackedRing extends QueueBase {
  readonly format = 'packed' as const;

  // Ring state, built for `stateSize` slots (0: none yet).
  protected stateSize = 0;
  protected _nextAvail = 0;
  protected _availWrap = 1;
  protected _nextUsed = 0;
  protected _usedWrap = 1;
  /** Ring slots marked used since the last prepareKick, capped at 2 * size. */
  protected _numAdded = 0;
  /** The buffers in flight, in pop order (internal to the packed queue). @internal */
  protected readonly buffers = new InFlightBuffers();

  /** Slot of the first used descriptor of the unpublished batch, or -1. */
  protected pendingSlot = -1;
  /** The flags that slot gets when the batch is published. */
  protected pendingFlags = 0;
  /** Ring slots the unpublished batch covers so far. */
  protected pendingSpan = 0;

  /**
   * The id popped last, which undoPop gives back (-1: nothing to undo). The position before
   * the pop is not kept: it is the buffer's ring slots back from the position now.
   */
  protected undoId = -1;
  /** The flags value last written to the device event suppression structure. */
  protected deviceEventFlags = RING_EVENT_FLAGS_ENABLE;

  // Captured by initialize().
  protected desc16: Uint16Array = EMPTY16;
  protected desc32: Uint32Array = EMPTY32;
  protected driver32: Uint32Array = EMPTY32;
  protected device32: Uint32Array = EMPTY32;
  protected descRegion: GuestRegion | null = null;
  /** The descriptor ring region's dirty-tracking switch, held here (see `SplitRing.usedTracking`). */
  protected descTracking: Int32Array = NOT_TRACKING;
  protected deviceRegion: GuestRegion | null = null;
  protected descAddr = 0;
  protected deviceAddr = 0;

  /** Ring slot the device reads next. */
  get nextAvail(): number {
    return this._nextAvail;
  }
  /** The next slot to read and its lap (wrap counter), as one number from 0 to 2 * size. */
  get availCursor(): number {
    return this._availWrap === 1 ? this._nextAvail : this._nextAvail + this.qsize;
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
    this.descTracking = desc.tracking;
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
    this.warmedTo = -1;
    this.active = true;
  }

  /** Ring state of a new queue of `size` slots: both wrap counters 1 (§2.8.1), nothing in flight. */
  protected freshState(size: number): void {
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

  // ---- available side ----

  /** §2.8.1: available when AVAIL matches the driver wrap counter and USED does not. */
  protected isAvailFlags(flags: number): boolean {
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
    this.descTracking = NOT_TRACKING;
    this.deviceRegion = null;
    this.descAddr = 0;
    this.deviceAddr = 0;
  }
}
