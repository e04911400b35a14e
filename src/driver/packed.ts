import type { GuestMemory } from '../memory/guest-memory.js';
import {
  MAX_QUEUE_SIZE,
  VIRTQ_DESC_F_AVAIL,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_USED,
  VIRTQ_DESC_F_WRITE,
} from '../queue/constants.js';
import { eventWanted } from '../queue/packed/event.js';
import {
  PACKED_EVENT_BYTES,
  type PackedLayout,
  packedDescRingBytes,
  packedLayout,
  packOffWrap,
  RING_EVENT_FLAGS_DESC,
  RING_EVENT_FLAGS_DISABLE,
  RING_EVENT_FLAGS_ENABLE,
} from '../queue/packed/layout.js';
import { IdFifo } from './id-fifo.js';
import { DeviceBehaviourError, type DriverBuffer } from './split.js';

export interface PackedDriverOptions {
  /** Queue size, 1..32768 (any value, §2.8.10.1). */
  size: number;
  /** Where the rings go: a contiguous layout from `base` (16-byte aligned), or explicit parts. */
  base?: number;
  layout?: PackedLayout;
  /** Explicit addresses of the three parts (all three, overriding `base` / `layout`). */
  desc?: number;
  driverArea?: number;
  deviceArea?: number;
  /** VIRTIO_F_EVENT_IDX negotiated. */
  eventIdx?: boolean;
  /**
   * VIRTIO_F_IN_ORDER negotiated: the device may return a batch of buffers with one used
   * descriptor for its last buffer (§2.8.8).
   */
  inOrder?: boolean;
}

const TWO_32 = 2 ** 32;
/** Both ring-state bits of a descriptor's flags. */
const AVAIL_USED = VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED;

/**
 * The guest side of a packed virtqueue, written to VIRTIO 1.2 §2.8 as a driver must behave:
 * a driver ring wrap counter and a used wrap counter (§2.8.1), buffer ids from a free list,
 * lists of several descriptors with the id in the last one (§2.8.6), indirect tables
 * (§2.8.7), a batch made visible by writing its first descriptor's flags last (§2.8.21.1),
 * event suppression both ways (§2.8.10), and a check of every used descriptor the device
 * writes (id in flight, length within the writable part).
 *
 * All bookkeeping (free ids, slots per id, in-order queue) lives in driver-private arrays,
 * never in guest memory the device could corrupt.
 */
export class PackedDriver {
  readonly memory: GuestMemory;
  readonly size: number;
  readonly layout: PackedLayout;
  eventIdx: boolean;
  readonly inOrder: boolean;

  /** Ring slots not holding a buffer in flight. */
  numFree: number;
  /** Length the device reported for the buffer {@link popUsed} returned last. */
  lastUsedLen = 0;

  private nextAvail = 0;
  private availWrap = 1;
  private nextUsed = 0;
  private usedWrap = 1;
  /** Ring slots made available since the last notification decision (capped at 2 * size). */
  private numAdded = 0;
  /** Slot and flags of the first descriptor of the unpublished batch (-1: none). */
  private pendingHead = -1;
  private pendingFlags = 0;
  /** Flags last written to the driver event suppression structure. */
  private eventFlags = RING_EVENT_FLAGS_ENABLE;

  private freeHead = 0;
  private readonly freeNext: Uint16Array;
  /** Per id: ring slots its list took (0: free). */
  private readonly idSlots: Uint16Array;
  /** Per id: bytes the device may write. */
  private readonly idWritable: Float64Array;
  private inFlightCount = 0;
  /** In-order mode: ids in flight in the order they were made available, and batch state. */
  private readonly fifo: IdFifo;
  private batchLeft = 0;
  private batchLen = 0;

  private readonly desc16: Uint16Array;
  private readonly desc32: Uint32Array;
  /** Driver area (written by the driver) and device area (read), each one u32. */
  private readonly driver32: Uint32Array;
  private readonly device32: Uint32Array;

  constructor(memory: GuestMemory, options: PackedDriverOptions) {
    const size = options.size;
    if (!Number.isInteger(size) || size < 1 || size > MAX_QUEUE_SIZE) {
      throw new RangeError(`packed queue size ${size} is not in 1..${MAX_QUEUE_SIZE}`);
    }
    this.memory = memory;
    this.size = size;
    if (
      options.desc !== undefined &&
      options.driverArea !== undefined &&
      options.deviceArea !== undefined
    ) {
      const end = Math.max(
        options.desc + packedDescRingBytes(size),
        options.driverArea + PACKED_EVENT_BYTES,
        options.deviceArea + PACKED_EVENT_BYTES,
      );
      this.layout = {
        desc: options.desc,
        driver: options.driverArea,
        device: options.deviceArea,
        end,
      };
    } else {
      this.layout = options.layout ?? packedLayout(options.base ?? 0, size);
    }
    this.eventIdx = options.eventIdx ?? false;
    this.inOrder = options.inOrder ?? false;
    const { desc, driver, device } = this.layout;
    // §2.8.11: each part at its alignment.
    if (desc % 16 !== 0 || driver % 4 !== 0 || device % 4 !== 0) {
      throw new RangeError('packed ring parts need 16 (ring) and 4 (event areas) byte alignment');
    }
    const ringBytes = packedDescRingBytes(size);
    this.desc16 = memory.typedView(Uint16Array, desc, 8 * size);
    this.desc32 = memory.typedView(Uint32Array, desc, 4 * size);
    this.driver32 = memory.typedView(Uint32Array, driver, 1);
    this.device32 = memory.typedView(Uint32Array, device, 1);
    // §2.8.13: the descriptor ring is zero-initialised (so no slot looks available).
    memory.fill(desc, ringBytes);
    memory.fill(driver, PACKED_EVENT_BYTES);
    memory.fill(device, PACKED_EVENT_BYTES);
    this.freeNext = new Uint16Array(size);
    for (let i = 0; i < size; i++) this.freeNext[i] = i + 1;
    this.idSlots = new Uint16Array(size);
    this.idWritable = new Float64Array(size);
    this.fifo = new IdFifo(size);
    this.numFree = size;
    // With EVENT_IDX, ask for a notification when the first used descriptor arrives.
    if (this.eventIdx) this.writeDriverEvent(RING_EVENT_FLAGS_DESC, packOffWrap(0, 1));
  }

  /** Buffers made available and not yet returned by the device. */
  get inFlight(): number {
    return this.inFlightCount;
  }
  /** Driver ring wrap counter (§2.8.1). */
  get availWrapCounter(): boolean {
    return this.availWrap === 1;
  }
  /** Ring slot the next descriptor goes in. */
  get nextAvailIdx(): number {
    return this.nextAvail;
  }
  /** Ring slot the next used descriptor is expected at, and its wrap counter. */
  get nextUsedIdx(): number {
    return this.nextUsed;
  }
  get usedWrapCounter(): boolean {
    return this.usedWrap === 1;
  }
  /**
   * `next_off | next_wrap << 15`: the next descriptor not yet made available, which is what a
   * driver sends with a notification under VIRTIO_F_NOTIFICATION_DATA (§2.8.16).
   */
  get notificationData(): number {
    return packOffWrap(this.nextAvail, this.availWrap);
  }

  // ---- making buffers available ----

  private allocId(): number {
    const id = this.freeHead;
    this.freeHead = this.freeNext[id]!;
    return id;
  }

  /** AVAIL = wrap counter, USED = its inverse (§2.8.1, §2.8.21.1 step 6). */
  private availBits(): number {
    return this.availWrap === 1 ? VIRTQ_DESC_F_AVAIL : VIRTQ_DESC_F_USED;
  }

  private writeDesc(slot: number, addr: number, len: number): void {
    const w = slot << 2;
    this.desc32[w] = addr >>> 0;
    this.desc32[w + 1] = Math.floor(addr / TWO_32);
    this.desc32[w + 2] = len;
  }

  private stepAvail(): void {
    // §2.8.21.1 step 9: after the ring's last descriptor, toggle the driver wrap counter.
    if (++this.nextAvail === this.size) {
      this.nextAvail = 0;
      this.availWrap ^= 1;
    }
  }

  /**
   * Exposes a list whose first descriptor is `slot`: the flags of the batch's very first
   * descriptor are held back until {@link publish}; later lists of the batch are exposed at
   * once (the device cannot reach them before the held-back one).
   */
  private exposeHead(slot: number, flags: number): void {
    if (this.pendingHead < 0) {
      this.pendingHead = slot;
      this.pendingFlags = flags;
    } else {
      Atomics.store(this.desc16, (slot << 3) + 7, flags);
    }
  }

  private track(id: number, slots: number, writableBytes: number): void {
    this.idSlots[id] = slots;
    this.idWritable[id] = writableBytes;
    this.numFree -= slots;
    this.inFlightCount++;
    const added = this.numAdded + slots;
    this.numAdded = Math.min(added, 2 * this.size);
    if (this.inOrder) {
      this.fifo.push(id);
    }
  }

  /**
   * Adds a buffer of device-readable then device-writable elements as a list of consecutive
   * descriptors (not visible before {@link publish}). Returns its buffer id.
   */
  add(readable: readonly DriverBuffer[], writable: readonly DriverBuffer[] = []): number {
    const n = readable.length + writable.length;
    if (n === 0) throw new RangeError('a buffer needs at least one element');
    // §2.8.17: no list longer than the queue size, and room for all of it before exposing it.
    if (n > this.size) throw new RangeError(`a list of ${n} exceeds the queue size ${this.size}`);
    if (n > this.numFree) throw new RangeError(`need ${n} ring slots, ${this.numFree} free`);
    const id = this.allocId();
    const head = this.nextAvail;
    let headFlags = 0;
    let writableBytes = 0;
    for (let k = 0; k < n; k++) {
      const isWritable = k >= readable.length;
      const b = isWritable ? writable[k - readable.length]! : readable[k]!;
      const slot = this.nextAvail;
      this.writeDesc(slot, b.addr, b.len);
      // §2.8.6: the buffer id goes in the list's last descriptor.
      if (k + 1 === n) this.desc16[(slot << 3) + 6] = id;
      const flags =
        this.availBits() |
        (isWritable ? VIRTQ_DESC_F_WRITE : 0) |
        (k + 1 < n ? VIRTQ_DESC_F_NEXT : 0);
      // §2.8.17: the first descriptor of a list is made available after all the others.
      if (k === 0) headFlags = flags;
      else Atomics.store(this.desc16, (slot << 3) + 7, flags);
      if (isWritable) writableBytes += b.len;
      this.stepAvail();
    }
    this.track(id, n, writableBytes);
    this.exposeHead(head, headFlags);
    return id;
  }

  /**
   * Adds a buffer through an indirect table written at `tableAddr` (§2.8.7): packed-format
   * entries used in order, one ring descriptor pointing at them.
   */
  addIndirect(
    tableAddr: number,
    readable: readonly DriverBuffer[],
    writable: readonly DriverBuffer[] = [],
  ): number {
    const n = readable.length + writable.length;
    if (n === 0) throw new RangeError('a buffer needs at least one element');
    if (n > this.size) throw new RangeError(`a list of ${n} exceeds the queue size ${this.size}`);
    if (this.numFree < 1) throw new RangeError('no free ring slots');
    let writableBytes = 0;
    for (let k = 0; k < n; k++) {
      const isWritable = k >= readable.length;
      const b = isWritable ? writable[k - readable.length]! : readable[k]!;
      const at = tableAddr + 16 * k;
      this.memory.writeU64(at, b.addr);
      this.memory.writeU32(at + 8, b.len);
      // §2.8.19: WRITE is the only flag an indirect entry may carry; its id is reserved.
      this.memory.writeU16(at + 12, 0);
      this.memory.writeU16(at + 14, isWritable ? VIRTQ_DESC_F_WRITE : 0);
      if (isWritable) writableBytes += b.len;
    }
    const id = this.allocId();
    const slot = this.nextAvail;
    this.writeDesc(slot, tableAddr, 16 * n);
    this.desc16[(slot << 3) + 6] = id;
    const flags = this.availBits() | VIRTQ_DESC_F_INDIRECT;
    this.stepAvail();
    this.track(id, 1, writableBytes);
    this.exposeHead(slot, flags);
    return id;
  }

  /**
   * Makes every buffer added since the last publish visible: a release store of the first
   * descriptor's flags (§2.8.21.1 "Updating flags").
   */
  publish(): void {
    const slot = this.pendingHead;
    if (slot < 0) return;
    Atomics.store(this.desc16, (slot << 3) + 7, this.pendingFlags);
    this.pendingHead = -1;
  }

  /**
   * Whether the device wants an available-buffer notification for the descriptors made
   * available since the last call, from the device event suppression structure (§2.8.10,
   * §2.8.21.2): DISABLE no, DESC (with EVENT_IDX) when its descriptor is among them, else yes.
   */
  needsNotification(): boolean {
    const added = this.numAdded;
    this.numAdded = 0;
    // §2.8.21.3.1: read after the flags are exposed (both accesses sequentially consistent).
    return eventWanted(
      Atomics.load(this.device32, 0),
      this.eventIdx,
      this.size,
      this.nextAvail,
      this.availWrap,
      added,
    );
  }

  /** Publishes, then says whether to notify the device. */
  kick(): boolean {
    this.publish();
    return this.needsNotification();
  }

  // ---- collecting used buffers ----

  /** §2.8.1: used when AVAIL and USED both equal the driver's used wrap counter. */
  private isUsedAt(slot: number): boolean {
    const flags = Atomics.load(this.desc16, (slot << 3) + 7);
    const wrap = this.usedWrap;
    return ((flags >>> 7) & 1) === wrap && ((flags >>> 15) & 1) === wrap;
  }

  /** True when the device has used buffers the driver has not collected. */
  hasUsed(): boolean {
    return this.batchLeft > 0 || (this.inFlightCount > 0 && this.isUsedAt(this.nextUsed));
  }

  /**
   * Collects the next used buffer: returns its id and sets {@link lastUsedLen}, or returns -1
   * when there is none. Throws {@link DeviceBehaviourError} when the device names an id that is
   * not in flight or claims more bytes than the buffer's writable part.
   */
  popUsed(): number {
    if (this.inOrder) return this.popUsedInOrder();
    // Nothing in flight: whatever the slot holds is not a used descriptor of ours.
    if (this.inFlightCount === 0 || !this.isUsedAt(this.nextUsed)) return -1;
    const slot = this.nextUsed;
    const id = Atomics.load(this.desc16, (slot << 3) + 6);
    if (id >= this.size || this.idSlots[id] === 0) {
      throw new DeviceBehaviourError(`device returned id ${id}, which is not in flight`);
    }
    const len = this.usedLen(slot);
    if (len > this.idWritable[id]!) {
      throw new DeviceBehaviourError(
        `device wrote ${len} bytes into a buffer of ${this.idWritable[id]} writable`,
      );
    }
    // §2.8.6: skip every slot of the buffer's list to reach the next used descriptor.
    this.stepUsed(this.idSlots[id]!);
    this.release(id);
    this.rearm();
    this.lastUsedLen = len;
    return id;
  }

  /**
   * In-order collection (§2.8.8): a used descriptor names the last buffer of a batch that
   * starts at the oldest buffer in flight; the buffers before it are returned first (with
   * their whole writable length: the device used them completely), then the named one with
   * the descriptor's length.
   */
  private popUsedInOrder(): number {
    if (this.batchLeft === 0) {
      if (this.fifo.count === 0 || !this.isUsedAt(this.nextUsed)) return -1;
      const slot = this.nextUsed;
      const id = Atomics.load(this.desc16, (slot << 3) + 6);
      const k = this.fifo.indexOf(id);
      if (k < 0) {
        throw new DeviceBehaviourError(`in-order used descriptor names id ${id}, not in flight`);
      }
      let slots = 0;
      for (let j = 0; j <= k; j++) slots += this.idSlots[this.fifo.at(j)]!;
      this.batchLeft = k + 1;
      this.batchLen = this.usedLen(slot);
      this.stepUsed(slots);
      this.rearm();
    }
    const id = this.fifo.shift();
    this.batchLeft--;
    const len = this.batchLeft === 0 ? this.batchLen : this.idWritable[id]!;
    if (len > this.idWritable[id]!) {
      throw new DeviceBehaviourError(
        `device wrote ${len} bytes into a buffer of ${this.idWritable[id]} writable`,
      );
    }
    this.release(id);
    this.lastUsedLen = len;
    return id;
  }

  /** §2.8.4: a used descriptor's length counts only with WRITE; otherwise it is reserved. */
  private usedLen(slot: number): number {
    const flags = Atomics.load(this.desc16, (slot << 3) + 7);
    return (flags & VIRTQ_DESC_F_WRITE) !== 0 ? this.desc32[(slot << 2) + 2]! : 0;
  }

  private stepUsed(slots: number): void {
    let next = this.nextUsed + slots;
    if (next >= this.size) {
      next -= this.size;
      this.usedWrap ^= 1;
    }
    this.nextUsed = next;
  }

  private release(id: number): void {
    this.numFree += this.idSlots[id]!;
    this.idSlots[id] = 0;
    this.inFlightCount--;
    this.freeNext[id] = this.freeHead;
    this.freeHead = id;
  }

  /** With a descriptor-specific event armed, move it to the next used descriptor. */
  private rearm(): void {
    if (this.eventIdx && this.eventFlags === RING_EVENT_FLAGS_DESC) {
      this.writeDriverEvent(RING_EVENT_FLAGS_DESC, packOffWrap(this.nextUsed, this.usedWrap));
    }
  }

  // ---- used-buffer notifications ----

  private writeDriverEvent(flags: number, offWrap: number): void {
    this.eventFlags = flags;
    Atomics.store(this.driver32, 0, ((flags << 16) | offWrap) >>> 0);
  }

  /**
   * Asks for (true) or suppresses (false) used-buffer notifications (§2.8.10): DISABLE, or
   * with EVENT_IDX a descriptor-specific event at the next used descriptor, else ENABLE.
   */
  setInterrupts(enabled: boolean): void {
    if (!enabled) this.writeDriverEvent(RING_EVENT_FLAGS_DISABLE, 0);
    else if (this.eventIdx) {
      this.writeDriverEvent(RING_EVENT_FLAGS_DESC, packOffWrap(this.nextUsed, this.usedWrap));
    } else this.writeDriverEvent(RING_EVENT_FLAGS_ENABLE, 0);
  }

  /** EVENT_IDX: notify me when descriptor `offset` is used with wrap counter `wrap`. */
  setUsedEvent(offset: number, wrap: boolean): void {
    this.writeDriverEvent(RING_EVENT_FLAGS_DESC, packOffWrap(offset, wrap));
  }
}

/** Flags that mark a descriptor available for driver wrap counter `wrap` (§2.8.1). */
export function packedAvailFlags(wrap: boolean): number {
  return wrap ? VIRTQ_DESC_F_AVAIL : VIRTQ_DESC_F_USED;
}

/** Flags that mark a descriptor used for device wrap counter `wrap` (§2.8.1). */
export function packedUsedFlags(wrap: boolean): number {
  return wrap ? AVAIL_USED : 0;
}
