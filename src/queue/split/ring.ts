/**
 * The split ring itself (VIRTIO 1.2 §2.7), under {@link SplitQueue}: its configuration and
 * typed-array views of the three rings (`initialize`, `reset`), the ring positions, and the
 * seed's raw accessors of ring fields. The flow of chains (pop, parse, used, notifications,
 * snapshots) is `SplitQueue`'s.
 */

import { QueueConfigError } from '../../errors.js';
import type { GuestMemory } from '../../memory/guest-memory.js';
import type { GuestRegion } from '../../memory/region.js';
import { ringArea } from '../area.js';
import { QueueBase } from '../base.js';
import {
  AVAIL_RING_ALIGN,
  availRingBytes,
  DESC_TABLE_ALIGN,
  descTableBytes,
  USED_RING_ALIGN,
  usedRingBytes,
} from './layout.js';

const EMPTY16 = new Uint16Array(0);
const EMPTY32 = new Uint32Array(0);
/** A tracking switch that is off, for a queue with no used ring yet. */
const NOT_TRACKING = new Int32Array(1);

/** The ring, its positions and views; {@link SplitQueue} moves chains through it. */
export abstract class SplitRing extends QueueBase {
  readonly format = 'split' as const;

  protected _nextAvail = 0;
  /**
   * The `avail.idx` value the last acquire load (`Atomics.load`) returned; -1 when none is
   * known. Every ring entry before it is ordered by that load, so a pop that finds the index
   * unchanged (a plain load, which only tells whether it moved) needs no new acquire: an
   * `Atomics.load` is a builtin call in V8, about 5 ns, once per pop before.
   */
  protected availSeen = -1;
  protected _nextUsed = 0;
  protected _numAdded = 0;

  // Captured by initialize().
  protected desc32: Uint32Array = EMPTY32;
  protected avail16: Uint16Array = EMPTY16;
  protected used16: Uint16Array = EMPTY16;
  protected used32: Uint32Array = EMPTY32;
  protected usedRegion: GuestRegion | null = null;
  /**
   * The used ring region's dirty-tracking switch (`GuestRegion.tracking`), held here so that
   * `addUsed` tests it with one load fewer and a smaller body (see `SplitQueue.addUsed`).
   */
  protected usedTracking: Int32Array = NOT_TRACKING;
  /**
   * Used ring address captured by initialize(). Dirty tracking uses it, never the register
   * field, which the guest may rewrite while the queue is live.
   */
  protected usedAddr = 0;
  protected usedEventIndex = 0;
  protected availEventIndex = 0;

  /** Index (mod 2^16) of the next available-ring entry the device will read. */
  get nextAvail(): number {
    return this._nextAvail;
  }
  /** {@link nextAvail}: the free-running available index moves with every pop. */
  get availCursor(): number {
    return this._nextAvail;
  }
  set nextAvail(v: number) {
    this._nextAvail = v & 0xffff;
  }
  /** Index (mod 2^16) of the next used-ring entry the device will write. */
  get nextUsed(): number {
    return this._nextUsed;
  }
  set nextUsed(v: number) {
    this._nextUsed = v & 0xffff;
  }
  /** Used entries added since the last {@link prepareKick} (mod 2^16). */
  get numAdded(): number {
    return this._numAdded;
  }
  set numAdded(v: number) {
    this._numAdded = v & 0xffff;
  }

  /**
   * Checks the configuration against VIRTIO 1.2 §2.7 and `memory`, then builds the ring views
   * and marks the ring memory dirty. Throws {@link QueueConfigError}; on error the queue is
   * left inactive.
   */
  initialize(memory: GuestMemory): void {
    // §2.7: Queue Size is a power of 2 no larger than the device's maximum.
    const size = this.beginInitialize(true);
    this.availSeen = -1;
    // §2.7 alignment table: descriptor table 16, available ring 2, used ring 4.
    const desc = ringArea(
      memory,
      'descTableAddress',
      this.descTableAddress,
      descTableBytes(size),
      DESC_TABLE_ALIGN,
    );
    const avail = ringArea(
      memory,
      'availRingAddress',
      this.availRingAddress,
      availRingBytes(size),
      AVAIL_RING_ALIGN,
    );
    const used = ringArea(
      memory,
      'usedRingAddress',
      this.usedRingAddress,
      usedRingBytes(size),
      USED_RING_ALIGN,
    );

    // ringArea() checked range and alignment, so these views cannot fail.
    this.desc32 = memory.typedView(Uint32Array, this.descTableAddress, 4 * size);
    this.avail16 = memory.typedView(Uint16Array, this.availRingAddress, 3 + size);
    this.used16 = memory.typedView(Uint16Array, this.usedRingAddress, 3 + 4 * size);
    // The u32 view stops before avail_event (2 bytes past the last whole word).
    this.used32 = memory.typedView(Uint32Array, this.usedRingAddress, 1 + 2 * size);
    this.usedRegion = used;
    this.usedTracking = used.tracking;
    this.usedAddr = this.usedRingAddress;
    this.usedEventIndex = 2 + size;
    this.availEventIndex = 2 + 4 * size;
    this.memory = memory;
    this.qsize = size;

    // As the seed does: ring memory counts as written from the moment the queue is live.
    desc.markDirty(this.descTableAddress, descTableBytes(size));
    avail.markDirty(this.availRingAddress, availRingBytes(size));
    used.markDirty(this.usedRingAddress, usedRingBytes(size));
    this.warmedTo = -1;
    this.active = true;
  }

  // ---- ring field accessors ----

  /** `avail.flags`. */
  availRingFlagsGet(): number {
    this.requireActive();
    return Atomics.load(this.avail16, 0);
  }

  /** `avail.idx` (acquire). */
  availRingIdxGet(): number {
    this.requireActive();
    return Atomics.load(this.avail16, 1);
  }

  /** `avail.ring[index]`, for index in [0, size). */
  availRingRingGet(index: number): number {
    this.requireActive();
    if (!(index >= 0 && index < this.qsize)) throw new RangeError(`avail ring index ${index}`);
    return this.avail16[2 + index]!;
  }

  /** `avail.used_event`. */
  availRingUsedEventGet(): number {
    this.requireActive();
    return Atomics.load(this.avail16, this.usedEventIndex);
  }

  /** `used.flags`. */
  usedRingFlagsGet(): number {
    this.requireActive();
    return Atomics.load(this.used16, 0);
  }

  /** Sets `used.flags`. */
  usedRingFlagsSet(value: number): void {
    this.requireActive();
    Atomics.store(this.used16, 0, value);
    this.usedRegion!.markPageDirty(this.usedAddr);
  }

  /** `used.idx`. */
  usedRingIdxGet(): number {
    this.requireActive();
    return Atomics.load(this.used16, 1);
  }

  /** Sets `used.idx` (release). */
  usedRingIdxSet(value: number): void {
    this.requireActive();
    Atomics.store(this.used16, 1, value);
    this.usedRegion!.markPageDirty(this.usedAddr + 2);
  }

  /** Writes `used.ring[index]`, for index in [0, size). */
  usedRingRingSet(index: number, id: number, len: number): void {
    this.requireActive();
    if (!(index >= 0 && index < this.qsize)) throw new RangeError(`used ring index ${index}`);
    this.used32[1 + 2 * index] = id;
    this.used32[2 + 2 * index] = len;
    this.usedRegion!.markDirty(this.usedAddr + 4 + 8 * index, 8);
  }

  /** Reads `used.ring[index]` as [id, len]. */
  usedRingRingGet(index: number): [number, number] {
    this.requireActive();
    if (!(index >= 0 && index < this.qsize)) throw new RangeError(`used ring index ${index}`);
    return [this.used32[1 + 2 * index]!, this.used32[2 + 2 * index]!];
  }

  /** `used.avail_event`. */
  usedRingAvailEventGet(): number {
    this.requireActive();
    return Atomics.load(this.used16, this.availEventIndex);
  }

  /** Sets `used.avail_event`. */
  usedRingAvailEventSet(value: number): void {
    this.requireActive();
    Atomics.store(this.used16, this.availEventIndex, value);
    this.usedRegion!.markPageDirty(this.usedAddr + 2 * this.availEventIndex);
  }

  /** Back to the state of a new queue (device reset, §2.4): inactive, size = maxSize, zeroes. */
  reset(): void {
    this.resetConfig();
    this.availSeen = -1;
    this._nextAvail = 0;
    this._nextUsed = 0;
    this._numAdded = 0;
    this.desc32 = EMPTY32;
    this.avail16 = EMPTY16;
    this.used16 = EMPTY16;
    this.used32 = EMPTY32;
    this.usedRegion = null;
    this.usedTracking = NOT_TRACKING;
    this.usedAddr = 0;
  }
}
