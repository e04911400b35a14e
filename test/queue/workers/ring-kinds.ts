/**
 * The stress harness talks to a ring through two small adapters, one per side, so another
 * ring kind is one more entry in {@link RING_KINDS}, not a new harness. The device side is
 * the same for both kinds (it programs against the `Queue` interface, as device code does);
 * the driver side wraps SplitDriver or PackedDriver.
 */
import {
  type DriverBuffer,
  type DriverQueue,
  PackedDriver,
  SplitDriver,
} from '../../../src/driver/index.js';
import type { GuestMemory } from '../../../src/memory/index.js';
import {
  type AnyQueue,
  createQueue,
  type DescriptorChain,
  type InOrderTarget,
  type PackedLayout,
  packedLayout,
  type RingFormat,
  type SplitLayout,
  silentLogger,
  splitLayout,
} from '../../../src/queue/index.js';

/** The guest side of one queue, as the stress driver uses it. */
export interface StressDriver {
  /** True when a chain of `buffers` buffers (through a table when `indirect`) fits now. */
  canAdd(buffers: number, indirect: boolean): boolean;
  /** Makes a chain available (unpublished); returns its id. `table` is set for indirect. */
  add(readable: DriverBuffer[], writable: DriverBuffer[], table: number | null): number;
  /** Publishes what was added; true when the device asked to be notified about it. */
  kick(): boolean;
  /** Next used id, or -1; sets {@link lastUsedLen}. Throws if the device broke the rules. */
  popUsed(): number;
  readonly lastUsedLen: number;
  /** True when used buffers are waiting (an acquire read of the device's progress). */
  hasUsed(): boolean;
  /** Ask for a used-buffer notification for the next used buffer. */
  enableInterrupts(): void;
  /** Ask not to be notified (best effort). */
  disableInterrupts(): void;
}

/**
 * The device side of one queue, as the stress device uses it. It is an {@link InOrderTarget}
 * too, so the in-order runs can put an InOrderCompleter in front of it.
 */
export interface StressDevice extends InOrderTarget {
  pop(into: DescriptorChain): DescriptorChain | null;
  /** Publishes the used buffers added so far; true when the driver wants an interrupt. */
  publish(): boolean;
  /** Whether the driver wants an interrupt for what was published since the last call. */
  kickWanted(): boolean;
  /**
   * Asks the driver to notify about new buffers, then re-checks: true when there is still
   * nothing to pop, so sleeping is safe (a later buffer will come with a notification).
   */
  arm(): boolean;
  /** Asks the driver not to notify (the device is polling anyway). */
  disarm(): void;
  /** True when buffers are available (for classifying a timed-out wait). */
  hasWork(): boolean;
}

export interface RingOptions {
  size: number;
  eventIdx: boolean;
  indirect: boolean;
  /** VIRTIO_F_IN_ORDER negotiated: the device may return a batch with one used entry. */
  inOrder: boolean;
}

export interface RingKind {
  /** Queue sizes must be powers of two (split) or may be anything (packed). */
  readonly powerOfTwo: boolean;
  /** Lays the rings out from `base`; returns the first free byte and a clonable description. */
  layout(base: number, size: number): { end: number; ring: unknown };
  createDriver(memory: GuestMemory, ring: unknown, options: RingOptions): StressDriver;
  createDevice(memory: GuestMemory, ring: unknown, options: RingOptions): StressDevice;
}

// ---- driver side ----

/** What both ring drivers offer beyond {@link DriverQueue}, as the stress driver needs it. */
abstract class RingStressDriver<D extends DriverQueue> implements StressDriver {
  constructor(
    protected readonly d: D,
    protected readonly o: RingOptions,
  ) {}

  canAdd(buffers: number, indirect: boolean): boolean {
    return this.d.numFree >= (indirect ? 1 : buffers);
  }

  add(readable: DriverBuffer[], writable: DriverBuffer[], table: number | null): number {
    return table === null
      ? this.d.add(readable, writable)
      : this.d.addIndirect(table, readable, writable);
  }

  kick(): boolean {
    return this.d.kick();
  }

  popUsed(): number {
    return this.d.popUsed();
  }

  get lastUsedLen(): number {
    return this.d.lastUsedLen;
  }

  hasUsed(): boolean {
    return this.d.hasUsed();
  }

  abstract enableInterrupts(): void;
  abstract disableInterrupts(): void;
}

class SplitStressDriver extends RingStressDriver<SplitDriver> {
  constructor(memory: GuestMemory, layout: SplitLayout, o: RingOptions) {
    super(
      new SplitDriver(memory, { size: o.size, layout, eventIdx: o.eventIdx, inOrder: o.inOrder }),
      o,
    );
    this.disableInterrupts();
  }

  enableInterrupts(): void {
    // With EVENT_IDX: interrupt me when used.idx moves past what I have consumed.
    if (this.o.eventIdx) this.d.setUsedEvent(this.d.lastUsedIdx);
    else this.d.setInterrupts(true);
  }

  disableInterrupts(): void {
    // With EVENT_IDX there is no flag: a stale used_event suppresses (SplitDriver refreshes it
    // on every popUsed, so the device still interrupts at batch boundaries).
    if (!this.o.eventIdx) this.d.setInterrupts(false);
  }
}

class PackedStressDriver extends RingStressDriver<PackedDriver> {
  constructor(memory: GuestMemory, layout: PackedLayout, o: RingOptions) {
    super(
      new PackedDriver(memory, { size: o.size, layout, eventIdx: o.eventIdx, inOrder: o.inOrder }),
      o,
    );
    this.disableInterrupts();
  }

  enableInterrupts(): void {
    // With EVENT_IDX: a descriptor event at the next used descriptor; else RING_EVENT_FLAGS_ENABLE.
    this.d.setInterrupts(true);
  }

  disableInterrupts(): void {
    // As for the split ring: with EVENT_IDX the descriptor event stays armed (PackedDriver
    // moves it to the next used descriptor on every popUsed), so the device still interrupts
    // at batch boundaries and the event window logic runs all the time. Without it,
    // RING_EVENT_FLAGS_DISABLE.
    if (!this.o.eventIdx) this.d.setInterrupts(false);
  }
}

// ---- device side ----

/** Ring addresses as the Queue interface names them (descriptor, driver and device areas). */
interface Areas {
  desc: number;
  driver: number;
  device: number;
}

/** The device side over a virtq queue of either format, through the Queue interface only. */
class QueueStressDevice implements StressDevice {
  private readonly q: AnyQueue;

  constructor(memory: GuestMemory, format: RingFormat, areas: Areas, o: RingOptions) {
    const q = createQueue(format, o.size, { logger: silentLogger });
    q.size = o.size;
    q.descTableAddress = areas.desc;
    q.availRingAddress = areas.driver;
    q.usedRingAddress = areas.device;
    q.usesNotifSuppression = o.eventIdx;
    q.indirectDesc = o.indirect;
    q.ready = true;
    q.initialize(memory);
    this.q = q;
  }

  get size(): number {
    return this.q.size;
  }

  pop(into: DescriptorChain): DescriptorChain | null {
    return this.q.pop(into);
  }

  addUsed(id: number, len: number): void {
    this.q.addUsed(id, len);
  }

  addUsedBatch(count: number, lastId: number, lastLen: number): void {
    this.q.addUsedBatch(count, lastId, lastLen);
  }

  advanceUsedRingIdx(): void {
    this.q.advanceUsedRingIdx();
  }

  publish(): boolean {
    this.q.advanceUsedRingIdx();
    return this.q.prepareKick();
  }

  kickWanted(): boolean {
    return this.q.prepareKick();
  }

  arm(): boolean {
    // With EVENT_IDX, setNotification(true) publishes the event (split: avail_event; packed:
    // a descriptor event at nextAvail) and re-reads the ring. Without it, it clears the
    // suppression flag (split: VIRTQ_USED_F_NO_NOTIFY; packed: RING_EVENT_FLAGS_ENABLE) and
    // the re-read is ours. Both sides use sequentially consistent atomics, so either we see
    // the new buffer or the driver sees the request and notifies.
    return this.q.setNotification(true) && this.q.isEmpty();
  }

  disarm(): void {
    this.q.setNotification(false);
  }

  hasWork(): boolean {
    return !this.q.isEmpty();
  }
}

export const RING_KINDS: Record<string, RingKind> = {
  split: {
    powerOfTwo: true,
    layout(base, size) {
      const l = splitLayout(base, size);
      return { end: l.end, ring: l };
    },
    createDriver(memory, ring, options) {
      return new SplitStressDriver(memory, ring as SplitLayout, options);
    },
    createDevice(memory, ring, options) {
      const l = ring as SplitLayout;
      return new QueueStressDevice(
        memory,
        'split',
        { desc: l.desc, driver: l.avail, device: l.used },
        options,
      );
    },
  },
  packed: {
    powerOfTwo: false,
    layout(base, size) {
      const l = packedLayout(base, size);
      return { end: l.end, ring: l };
    },
    createDriver(memory, ring, options) {
      return new PackedStressDriver(memory, ring as PackedLayout, options);
    },
    createDevice(memory, ring, options) {
      return new QueueStressDevice(memory, 'packed', ring as PackedLayout, options);
    },
  },
};
