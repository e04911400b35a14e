import type { GuestMemory } from '../memory/guest-memory.js';
import type { DescriptorChain } from './chain.js';
import type { QueueState } from './state.js';

/** Which ring layout the driver negotiated. */
export type RingFormat = 'split' | 'packed';

/**
 * What device code programs against: one interface for the split ring (VIRTIO 1.2 §2.7) and
 * the packed ring (§2.8), so a device never needs to know which one the driver negotiated.
 *
 * The three area addresses keep the split ring's names; for a packed ring they are the
 * descriptor ring, the driver event suppression area and the device event suppression area
 * (the "driver area" and "device area" of §2.6 in both cases).
 */
export interface Queue {
  readonly format: RingFormat;

  /** Largest size the device offers. */
  maxSize: number;
  /** Size the driver chose. */
  size: number;
  /** The driver finished configuring the queue. */
  ready: boolean;
  /** Descriptor area. */
  descTableAddress: number;
  /** Driver area. */
  availRingAddress: number;
  /** Device area. */
  usedRingAddress: number;
  /** VIRTIO_F_EVENT_IDX negotiated. */
  usesNotifSuppression: boolean;
  /** VIRTIO_F_INDIRECT_DESC negotiated. */
  indirectDesc: boolean;

  /** True after a successful {@link initialize}, until {@link reset}. */
  readonly isActive: boolean;

  /** Validates the configuration against the spec and `memory`; throws QueueConfigError. */
  initialize(memory: GuestMemory): void;

  /** Pops the next available chain (into `into` when given), or null when there is none. */
  pop(into?: DescriptorChain): DescriptorChain | null;
  /**
   * Pops, or when empty re-enables driver notifications and returns null (see the split ring).
   * While {@link polled}, it only pops.
   */
  popOrEnableNotification(into?: DescriptorChain): DescriptorChain | null;
  /**
   * A poller serves the queue: {@link popOrEnableNotification} does not ask the driver to
   * notify. The poller disables notifications ({@link setNotification}) when it starts and
   * enables them when it stops. Cleared by {@link reset}.
   */
  polled: boolean;
  /**
   * Where the device reads the next available chain, as a number that changes with every pop
   * (a poller compares it between turns to see whether the ring moved).
   */
  readonly availCursor: number;
  /**
   * Rebuilds, checked as at pop, a chain the device held across a snapshot: `head`, the ring
   * slots it takes, its buffers as [address, length] pairs (device-writable from
   * `writableFrom` on). Throws DescriptorError when any of it does not hold.
   */
  reviveChain(
    head: number,
    slots: number,
    buffers: readonly (readonly [number, number])[],
    writableFrom: number,
    into?: DescriptorChain,
  ): DescriptorChain;
  /**
   * A hint before a pop: reads ahead the first descriptors of the next `count` available
   * chains and the first two cache lines of their buffers. The driver's CPU has just written
   * those lines; read in one short loop, their transfers overlap, where inside the pops each
   * would stall the device on its own (about 40% more transmitted frames per second,
   * docs/PERFORMANCE.md). Cheap enough to call before every pop: it reads each chain once, and
   * reads more only when fewer than half of `count` read chains are left ahead. Without
   * `write` it changes nothing the device or the driver sees; it skips what is not in guest
   * memory (the pops still check everything).
   *
   * With `write` (a queue whose buffers the device fills, such as a network receive queue),
   * the lines of a chain whose first buffer is device-writable are written instead: a zero
   * into the first byte of each that lies in that buffer, logged when dirty pages are
   * tracked. The device may write such a buffer before it uses the chain, and write more
   * than it then reports (§2.7.8.2); the lines then come over ready for the device's stores
   * (up to a third more received frames per second against testpmd, docs/PERFORMANCE.md).
   */
  warm(count: number, write?: boolean): void;
  /** Gives back the chain popped last. */
  undoPop(): void;

  /** Marks chain `id` (a popped chain's `head`) used with `len` bytes written. */
  addUsed(id: number, len: number): void;
  /**
   * In-order completion (VIRTIO_F_IN_ORDER): the next `count` popped chains are used, with one
   * used entry for the last of them (`lastId`, `lastLen`).
   */
  addUsedBatch(count: number, lastId: number, lastLen: number): void;
  /**
   * Used entries (split) or ring slots (packed) added since the last {@link prepareKick}: not
   * 0 at rest only when something added is not yet published (or not yet notified).
   */
  readonly numAdded: number;
  /** Makes every used entry added so far visible to the driver, in one publication. */
  advanceUsedRingIdx(): void;
  /** Whether the driver wants a used-buffer notification for what was published. */
  prepareKick(): boolean;

  /** Asks the driver to notify (true) or not to notify (false) about new chains. */
  setNotification(enabled: boolean): boolean;
  /** VIRTIO_F_EVENT_IDX was negotiated. */
  enableNotifSuppression(): void;

  /**
   * Buffers popped and not yet used, where the ring format keeps count (the packed ring tracks
   * its buffer ids in flight); undefined for the split ring, whose device side needs no count.
   */
  readonly inFlight?: number;

  /** Back to the state of a new queue (device reset). */
  reset(): void;
  /** The queue's whole state, JSON-safe (see `queueFromState` for the way back). */
  save(): QueueState;
}
