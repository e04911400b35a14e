import type { GuestMemory } from '../memory/guest-memory.js';
import {
  VIRTQ_AVAIL_F_NO_INTERRUPT,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  VIRTQ_USED_F_NO_NOTIFY,
} from '../queue/constants.js';
import {
  availRingBytes,
  descTableBytes,
  type SplitLayout,
  splitLayout,
  usedRingBytes,
} from '../queue/split/layout.js';
import { IdFifo } from './id-fifo.js';

/** A buffer in guest memory. */
export interface DriverBuffer {
  addr: number;
  len: number;
}

export interface SplitDriverOptions {
  /** Queue size, a power of two. */
  size: number;
  /** Where the rings go: a contiguous layout from `base`, or explicit addresses. */
  base?: number;
  layout?: SplitLayout;
  /** VIRTIO_F_EVENT_IDX negotiated. */
  eventIdx?: boolean;
  /**
   * VIRTIO_F_IN_ORDER negotiated: descriptors are used in ring order (§2.7.5) and the device
   * may return a batch with one used entry for its last chain (§2.7.9).
   */
  inOrder?: boolean;
}

/** Thrown when the device breaks the used-ring rules as seen by the driver. */
export class DeviceBehaviourError extends Error {
  override readonly name: string = 'DeviceBehaviourError';
}

const TWO_32 = 2 ** 32;

/**
 * The guest side of a split virtqueue, written to VIRTIO 1.2 §2.7 as a driver must behave:
 * it owns the descriptor table and available ring, publishes with a release store of
 * `avail.idx`, honours `avail_event` / VIRTQ_USED_F_NO_NOTIFY when deciding to notify, and
 * checks every used element the device returns (id in flight, length within the writable
 * part).
 *
 * Descriptor bookkeeping (free list, chain membership) lives in driver-private arrays, never
 * in guest memory the device could corrupt.
 */
export class SplitDriver {
  readonly memory: GuestMemory;
  readonly size: number;
  readonly layout: SplitLayout;
  eventIdx: boolean;
  readonly inOrder: boolean;

  /** Descriptors not in any chain. */
  numFree: number;
  /** Length the device reported for the element {@link popUsed} returned last. */
  lastUsedLen = 0;

  private freeHead = 0;
  private readonly freeNext: Uint16Array;
  /** For each head in flight: number of table descriptors it holds (0 = not in flight). */
  private readonly chainDescs: Uint16Array;
  /** For each head in flight: bytes the device may write. */
  private readonly chainWritable: Float64Array;
  private readonly chainNext: Uint16Array;
  /** In-order mode: next descriptor to allocate, heads in flight in avail order, batch state. */
  private allocPos = 0;
  private readonly fifo: IdFifo;
  private batchLeft = 0;
  private batchLen = 0;
  private availShadow = 0;
  private kickedIdx = 0;
  private lastUsed = 0;

  private readonly desc32: Uint32Array;
  private readonly desc16: Uint16Array;
  private readonly avail16: Uint16Array;
  private readonly used16: Uint16Array;
  private readonly used32: Uint32Array;

  constructor(memory: GuestMemory, options: SplitDriverOptions) {
    const size = options.size;
    if (!Number.isInteger(size) || size < 1 || size > 32768 || (size & (size - 1)) !== 0) {
      throw new RangeError(`split queue size ${size} is not a power of two in 1..32768`);
    }
    this.memory = memory;
    this.size = size;
    this.layout = options.layout ?? splitLayout(options.base ?? 0, size);
    this.eventIdx = options.eventIdx ?? false;
    this.inOrder = options.inOrder ?? false;
    this.fifo = new IdFifo(size);
    const { desc, avail, used } = this.layout;
    this.desc32 = memory.typedView(Uint32Array, desc, 4 * size);
    this.desc16 = memory.typedView(Uint16Array, desc, 8 * size);
    this.avail16 = memory.typedView(Uint16Array, avail, 3 + size);
    this.used16 = memory.typedView(Uint16Array, used, 3 + 4 * size);
    this.used32 = memory.typedView(Uint32Array, used, 1 + 2 * size);
    memory.fill(desc, descTableBytes(size));
    memory.fill(avail, availRingBytes(size));
    memory.fill(used, usedRingBytes(size));
    this.freeNext = new Uint16Array(size);
    for (let i = 0; i < size; i++) this.freeNext[i] = i + 1;
    this.chainDescs = new Uint16Array(size);
    this.chainWritable = new Float64Array(size);
    this.chainNext = new Uint16Array(size);
    this.numFree = size;
  }

  /** Chains added but not yet returned by the device. */
  get inFlight(): number {
    let n = 0;
    for (let i = 0; i < this.size; i++) if (this.chainDescs[i] !== 0) n++;
    return n;
  }

  private writeDesc(i: number, addr: number, len: number, flags: number, next: number): void {
    const w = i << 2;
    this.desc32[w] = addr >>> 0;
    this.desc32[w + 1] = Math.floor(addr / TWO_32);
    this.desc32[w + 2] = len;
    this.desc16[(i << 3) + 6] = flags;
    this.desc16[(i << 3) + 7] = next;
  }

  private allocate(): number {
    if (this.inOrder) {
      // §2.7.5: with IN_ORDER, descriptors are used in ring order, wrapping at the end.
      const i = this.allocPos;
      this.allocPos = (i + 1) & (this.size - 1);
      this.numFree--;
      return i;
    }
    const i = this.freeHead;
    this.freeHead = this.freeNext[i]!;
    this.numFree--;
    return i;
  }

  /**
   * Adds a chain of device-readable then device-writable buffers to the available ring
   * (not yet published: see {@link publish}). Returns the head index.
   */
  add(readable: readonly DriverBuffer[], writable: readonly DriverBuffer[] = []): number {
    const n = readable.length + writable.length;
    if (n === 0) throw new RangeError('a chain needs at least one buffer');
    // §2.7.13.1: a chain needs that many free descriptors.
    if (n > this.numFree) throw new RangeError(`need ${n} descriptors, ${this.numFree} free`);
    const head = this.inOrder ? this.allocPos : this.freeHead;
    let prev = -1;
    let writableBytes = 0;
    for (let k = 0; k < n; k++) {
      const isWritable = k >= readable.length;
      const b = isWritable ? writable[k - readable.length]! : readable[k]!;
      const i = this.allocate();
      if (prev >= 0) {
        this.desc16[(prev << 3) + 6]! |= VIRTQ_DESC_F_NEXT;
        this.desc16[(prev << 3) + 7] = i;
        this.chainNext[prev] = i;
      }
      this.writeDesc(i, b.addr, b.len, isWritable ? VIRTQ_DESC_F_WRITE : 0, 0);
      if (isWritable) writableBytes += b.len;
      prev = i;
    }
    this.chainDescs[head] = n;
    this.chainWritable[head] = writableBytes;
    this.pushAvail(head);
    return head;
  }

  /**
   * Adds a chain through an indirect table written at `tableAddr` (§2.7.5.3): one ring
   * descriptor, `readable.length + writable.length` table entries.
   */
  addIndirect(
    tableAddr: number,
    readable: readonly DriverBuffer[],
    writable: readonly DriverBuffer[] = [],
  ): number {
    const n = readable.length + writable.length;
    if (n === 0) throw new RangeError('a chain needs at least one buffer');
    // §2.7.5.3.1: no chain (an indirect table's entries included) longer than the queue size.
    if (n > this.size) {
      throw new RangeError(`an indirect table of ${n} entries exceeds the queue size ${this.size}`);
    }
    if (this.numFree < 1) throw new RangeError('no free descriptors');
    let writableBytes = 0;
    for (let k = 0; k < n; k++) {
      const isWritable = k >= readable.length;
      const b = isWritable ? writable[k - readable.length]! : readable[k]!;
      const at = tableAddr + 16 * k;
      this.memory.writeU64(at, b.addr);
      this.memory.writeU32(at + 8, b.len);
      const flags = (isWritable ? VIRTQ_DESC_F_WRITE : 0) | (k + 1 < n ? VIRTQ_DESC_F_NEXT : 0);
      this.memory.writeU16(at + 12, flags);
      this.memory.writeU16(at + 14, k + 1 < n ? k + 1 : 0);
      if (isWritable) writableBytes += b.len;
    }
    const head = this.allocate();
    this.writeDesc(head, tableAddr, 16 * n, VIRTQ_DESC_F_INDIRECT, 0);
    this.chainDescs[head] = 1;
    this.chainWritable[head] = writableBytes;
    this.pushAvail(head);
    return head;
  }

  private pushAvail(head: number): void {
    if (this.inOrder) {
      this.fifo.push(head);
    }
    this.avail16[2 + (this.availShadow & (this.size - 1))] = head;
    this.availShadow = (this.availShadow + 1) & 0xffff;
  }

  /** Publishes every chain added since the last publish: one release store of `avail.idx`. */
  publish(): void {
    Atomics.store(this.avail16, 1, this.availShadow);
  }

  /**
   * Whether the device wants a notification for what was published since the last call
   * (§2.7.10: `avail_event` with EVENT_IDX, else VIRTQ_USED_F_NO_NOTIFY).
   */
  needsNotification(): boolean {
    const newIdx = this.availShadow;
    const oldIdx = this.kickedIdx;
    this.kickedIdx = newIdx;
    if (this.eventIdx) {
      const event = Atomics.load(this.used16, 2 + 4 * this.size);
      return ((newIdx - event - 1) & 0xffff) < ((newIdx - oldIdx) & 0xffff);
    }
    return (Atomics.load(this.used16, 0) & VIRTQ_USED_F_NO_NOTIFY) === 0;
  }

  /** Publishes, then says whether to notify the device. */
  kick(): boolean {
    this.publish();
    return this.needsNotification();
  }

  /** True when the device has published used elements the driver has not collected. */
  hasUsed(): boolean {
    return this.batchLeft > 0 || Atomics.load(this.used16, 1) !== this.lastUsed;
  }

  /**
   * Collects the next used element: returns its id (the chain head) and sets
   * {@link lastUsedLen}, or returns -1 when there is none. Frees the chain's descriptors.
   * Throws {@link DeviceBehaviourError} when the device returns an id that is not in flight or
   * claims to have written more than the chain's writable bytes (§2.7.8.2).
   */
  popUsed(): number {
    if (this.inOrder) return this.popUsedInOrder();
    const usedIdx = Atomics.load(this.used16, 1);
    if (usedIdx === this.lastUsed) return -1;
    if (((usedIdx - this.lastUsed) & 0xffff) > this.size) {
      throw new DeviceBehaviourError(
        `used.idx ${usedIdx} runs more than a ring ahead of ${this.lastUsed}`,
      );
    }
    const slot = this.lastUsed & (this.size - 1);
    const id = this.used32[1 + 2 * slot]!;
    const len = this.used32[2 + 2 * slot]!;
    this.lastUsed = (this.lastUsed + 1) & 0xffff;
    if (id >= this.size || this.chainDescs[id] === 0) {
      throw new DeviceBehaviourError(`device returned id ${id}, which is not in flight`);
    }
    const writable = this.chainWritable[id]!;
    // The chain came back either way: its descriptors are free again before a bad length is
    // reported (the caller may carry on with the ring).
    this.release(id);
    if (this.eventIdx) Atomics.store(this.avail16, 2 + this.size, this.lastUsed);
    if (len > writable) {
      throw new DeviceBehaviourError(
        `device wrote ${len} bytes into chain ${id} of ${writable} writable`,
      );
    }
    this.lastUsedLen = len;
    return id;
  }

  /**
   * In-order collection: a used entry names the last chain of a batch that starts at the
   * oldest chain in flight; the chains before it in the batch are returned first (with their
   * whole writable length, as the device used them completely), then the named one with the
   * entry's length.
   */
  private popUsedInOrder(): number {
    if (this.batchLeft === 0) {
      const usedIdx = Atomics.load(this.used16, 1);
      const published = (usedIdx - this.lastUsed) & 0xffff;
      if (published === 0) return -1;
      if (published > this.size) {
        throw new DeviceBehaviourError(
          `used.idx ${usedIdx} runs more than a ring ahead of ${this.lastUsed}`,
        );
      }
      const slot = this.lastUsed & (this.size - 1);
      const id = this.used32[1 + 2 * slot]!;
      const k = this.fifo.indexOf(id);
      if (k < 0 || k + 1 > published) {
        throw new DeviceBehaviourError(
          `in-order used entry names id ${id}, not a chain it may complete`,
        );
      }
      this.batchLeft = k + 1;
      this.batchLen = this.used32[2 + 2 * slot]!;
      this.lastUsed = (this.lastUsed + k + 1) & 0xffff;
      if (this.eventIdx) Atomics.store(this.avail16, 2 + this.size, this.lastUsed);
    }
    const head = this.fifo.shift();
    this.batchLeft--;
    const len = this.batchLeft === 0 ? this.batchLen : this.chainWritable[head]!;
    if (len > this.chainWritable[head]!) {
      throw new DeviceBehaviourError(
        `device wrote ${len} bytes into a chain of ${this.chainWritable[head]} writable`,
      );
    }
    this.numFree += this.chainDescs[head]!;
    this.chainDescs[head] = 0;
    this.lastUsedLen = len;
    return head;
  }

  private release(id: number): void {
    // Give the chain's descriptors back.
    let i = id;
    for (let k = this.chainDescs[id]!; k > 1; k--) {
      const nx = this.chainNext[i]!;
      this.freeNext[i] = nx;
      i = nx;
    }
    this.freeNext[i] = this.freeHead;
    this.freeHead = id;
    this.numFree += this.chainDescs[id]!;
    this.chainDescs[id] = 0;
  }

  /** Index the driver has consumed up to (its `last_used_idx`). */
  get lastUsedIdx(): number {
    return this.lastUsed;
  }

  /** Sets `used_event` (EVENT_IDX): notify me when used.idx passes this value. */
  setUsedEvent(v: number): void {
    Atomics.store(this.avail16, 2 + this.size, v & 0xffff);
  }

  /**
   * Asks for (true) or suppresses (false) used-buffer notifications. Without EVENT_IDX through
   * VIRTQ_AVAIL_F_NO_INTERRUPT. With it the flags must stay 0 (§2.7.7.1): `used_event` is set
   * to the next used index (true) or half the index space away (false); `popUsed` sets it to
   * the next used index again.
   */
  setInterrupts(enabled: boolean): void {
    if (this.eventIdx) this.setUsedEvent(enabled ? this.lastUsed : this.lastUsed + 0x8000);
    else Atomics.store(this.avail16, 0, enabled ? 0 : VIRTQ_AVAIL_F_NO_INTERRUPT);
  }
}
