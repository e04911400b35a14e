/**
 * The stress harness talks to a ring through two small adapters, one per side, so another
 * ring kind (packed) is one more entry in {@link RING_KINDS}, not a new harness.
 */
import { type DriverBuffer, SplitDriver } from '../../../src/driver/index.js';
import type { GuestMemory } from '../../../src/memory/index.js';
import {
  type DescriptorChain,
  type SplitLayout,
  SplitQueue,
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

/** The device side of one queue, as the stress device uses it. */
export interface StressDevice {
  pop(into: DescriptorChain): DescriptorChain | null;
  addUsed(id: number, len: number): void;
  /** Publishes the used buffers added so far; true when the driver wants an interrupt. */
  publish(): boolean;
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
}

export interface RingKind {
  /** Lays the rings out from `base`; returns the first free byte and a clonable description. */
  layout(base: number, size: number): { end: number; ring: unknown };
  createDriver(memory: GuestMemory, ring: unknown, options: RingOptions): StressDriver;
  createDevice(memory: GuestMemory, ring: unknown, options: RingOptions): StressDevice;
}

class SplitStressDriver implements StressDriver {
  private readonly d: SplitDriver;

  constructor(
    memory: GuestMemory,
    layout: SplitLayout,
    private readonly o: RingOptions,
  ) {
    this.d = new SplitDriver(memory, { size: o.size, layout, eventIdx: o.eventIdx });
    this.disableInterrupts();
  }

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

class SplitStressDevice implements StressDevice {
  private readonly q: SplitQueue;

  constructor(memory: GuestMemory, layout: SplitLayout, o: RingOptions) {
    const q = new SplitQueue(o.size, { logger: silentLogger });
    q.size = o.size;
    q.descTableAddress = layout.desc;
    q.availRingAddress = layout.avail;
    q.usedRingAddress = layout.used;
    q.usesNotifSuppression = o.eventIdx;
    q.indirectDesc = o.indirect;
    q.ready = true;
    q.initialize(memory);
    this.q = q;
  }

  pop(into: DescriptorChain): DescriptorChain | null {
    return this.q.pop(into);
  }

  addUsed(id: number, len: number): void {
    this.q.addUsed(id, len);
  }

  publish(): boolean {
    this.q.advanceUsedRingIdx();
    return this.q.prepareKick();
  }

  arm(): boolean {
    // With EVENT_IDX, setNotification(true) publishes avail_event and re-reads avail.idx.
    // Without it, it clears VIRTQ_USED_F_NO_NOTIFY and the re-read is ours. Both sides use
    // sequentially consistent atomics, so either we see the new buffer or the driver sees the
    // request and notifies.
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
    layout(base, size) {
      const l = splitLayout(base, size);
      return { end: l.end, ring: l };
    },
    createDriver(memory, ring, options) {
      return new SplitStressDriver(memory, ring as SplitLayout, options);
    },
    createDevice(memory, ring, options) {
      return new SplitStressDevice(memory, ring as SplitLayout, options);
    },
  },
};
