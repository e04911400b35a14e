import { DescriptorError, QueueConfigError, QueueStateError, SnapshotError } from '../errors.js';
import type { GuestMemory } from '../memory/guest-memory.js';
import type { GuestRegion } from '../memory/region.js';
import type { DescriptorChain } from './chain.js';
import { ChainRecord, recordOf } from './chain-record.js';
import { reviveChain } from './chain-walk.js';
import { MAX_QUEUE_SIZE } from './constants.js';
import { consoleLogger, type Logger } from './logger.js';
import type { Queue } from './queue.js';
import { QUEUE_STATE_VERSION, type QueueStateCommon } from './state.js';

/**
 * What both ring formats share: the configuration registers a transport writes, the state
 * captured by `initialize`, and the lifecycle checks around them. The ring-specific parts
 * (layouts, chains, used entries, notifications) live in `SplitQueue` and `PackedQueue`.
 */
export abstract class QueueBase {
  /** Largest size the device offers (1..32768). */
  maxSize: number;
  /** Size the driver chose; validated by `initialize`. */
  size: number;
  /** The driver has finished configuring this queue. */
  ready = false;
  /** Descriptor area: the split descriptor table or the packed descriptor ring. */
  descTableAddress = 0;
  /** Driver area: the split available ring or the packed driver event suppression structure. */
  availRingAddress = 0;
  /** Device area: the split used ring or the packed device event suppression structure. */
  usedRingAddress = 0;
  /** VIRTIO_F_EVENT_IDX negotiated. */
  usesNotifSuppression = false;
  /** VIRTIO_F_INDIRECT_DESC negotiated: accept indirect descriptors. */
  indirectDesc = false;
  /** Where driver behaviour worth a word is reported. */
  logger: Logger;
  /**
   * A poller serves this queue: while true, `popOrEnableNotification` finds the ring empty
   * without asking the driver to notify (see the vhost-user back-end's polling mode).
   */
  polled = false;

  // Captured by initialize(); the per-chain path trusts only these.
  protected active = false;
  protected memory: GuestMemory | null = null;
  protected qsize = 0;

  // The region of the last buffer {@link touch} read, valid while `touchMemory` is `memory`.
  private touchMemory: GuestMemory | null = null;
  private touchRegion: GuestRegion | null = null;
  private touchBase = 0;
  private touchBytes: Uint8Array = new Uint8Array(0);
  /** Offsets below this one have two cache lines of the region after them. */
  private touchLimit = -1;
  /**
   * Where `Queue.warm` stopped reading ahead, as the format counts ring positions (split: an
   * available index; packed: the slot, plus the size in laps whose wrap counter is 0); -1 after
   * initialisation. Behind the ring position it counts as nothing read.
   */
  protected warmedTo = -1;
  /** The bytes `Queue.warm` read, summed and kept so that the engine keeps the reads. */
  protected warmth = 0;

  constructor(maxSize: number, logger: Logger | undefined) {
    if (!Number.isInteger(maxSize) || maxSize < 1 || maxSize > MAX_QUEUE_SIZE) {
      throw new RangeError(`max queue size ${maxSize} is not in 1..${MAX_QUEUE_SIZE}`);
    }
    this.maxSize = maxSize;
    this.size = maxSize;
    this.logger = logger ?? consoleLogger;
  }

  /** True after a successful `initialize`, until `reset`. */
  get isActive(): boolean {
    return this.active;
  }

  /** The queue size captured at initialisation (what the rings really hold). */
  get activeSize(): number {
    return this.qsize;
  }

  /**
   * Reads the first two cache lines of a buffer at guest address `addr` when one region of
   * guest memory holds them, and returns their first bytes summed (0 when it holds them not):
   * a hint for `Queue.warm`. One compare per buffer when it is in the same region as the
   * one before, as the buffers of a burst nearly always are.
   *
   * With `writable` > 0 the buffer is device-writable and that many bytes long: its lines are
   * written instead (a zero into the first byte of each, the second one only when the buffer
   * reaches it), so that they come over for writing. A read would bring them over shared,
   * and the device's first store would then wait for them a second time.
   */
  protected touch(addr: number, writable: number): number {
    let off = addr - this.touchBase;
    if (!(off >= 0 && off < this.touchLimit) || this.touchMemory !== this.memory) {
      const r = this.memory!.findRegion(addr);
      if (r === undefined) return 0;
      this.touchMemory = this.memory;
      this.touchRegion = r;
      this.touchBase = r.base;
      this.touchBytes = r.bytes;
      this.touchLimit = r.bytes.length - 64;
      off = addr - r.base;
      if (!(off < this.touchLimit)) return 0;
    }
    const bytes = this.touchBytes;
    if (writable <= 0) return bytes[off]! + bytes[off + 64]!;
    bytes[off] = 0;
    if (writable > 64) bytes[off + 64] = 0;
    this.touchRegion!.markDirty(addr, writable > 64 ? 65 : 1);
    return 0;
  }

  /** The guest memory the queue was initialised over. */
  get guestMemory(): GuestMemory | null {
    return this.memory;
  }

  /** Notification suppression (VIRTIO_F_EVENT_IDX) was negotiated. */
  enableNotifSuppression(): void {
    this.usesNotifSuppression = true;
  }

  /**
   * Rebuilds a chain the device held across a snapshot (popped, not yet used) from its saved
   * buffers: [address, length] pairs, device-readable before `writableFrom`, device-writable
   * from it on, taking `slots` ring slots. Everything is checked again as at pop (the head
   * against the queue, each buffer against guest memory, the chain's bounds); a bad one throws
   * {@link DescriptorError}. The only way besides a pop to get a filled chain.
   */
  reviveChain(
    head: number,
    slots: number,
    buffers: readonly (readonly [number, number])[],
    writableFrom: number,
    into?: DescriptorChain,
  ): DescriptorChain {
    this.requireActive();
    const size = this.qsize;
    if (!(Number.isInteger(head) && head >= 0 && head < size)) {
      throw new DescriptorError(
        'DESC_HEAD_OUT_OF_RANGE',
        head,
        head,
        `chain head ${head} is outside a queue of ${size}`,
      );
    }
    if (!(Number.isInteger(slots) && slots >= 1 && slots <= size)) {
      throw new DescriptorError(
        'DESC_CHAIN_TOO_LONG',
        head,
        head,
        `chain ${head}: ${slots} ring slots, expected 1 to ${size}`,
      );
    }
    this.checkHeldHead(head, slots);
    const c = into === undefined ? new ChainRecord(Math.max(1, buffers.length)) : recordOf(into);
    reviveChain(c, head, this.memory!, size, slots, buffers, writableFrom);
    return c;
  }

  /** What a ring format knows about a held chain's head (the packed ring: it is in flight). */
  protected checkHeldHead(_head: number, _slots: number): void {}

  // ---- what both formats save and restore ----

  /** The configuration part of a saved state (the fields both formats save). */
  protected saveCommon(): QueueStateCommon {
    return {
      version: QUEUE_STATE_VERSION,
      maxSize: this.maxSize,
      size: this.size,
      ready: this.ready,
      descTableAddress: this.descTableAddress,
      availRingAddress: this.availRingAddress,
      usedRingAddress: this.usedRingAddress,
      eventIdx: this.usesNotifSuppression,
      indirectDesc: this.indirectDesc,
      active: this.active,
    };
  }

  /** Copies the configuration part of a saved state onto this (new) queue. */
  protected applyCommon(c: Omit<QueueStateCommon, 'version'>): void {
    this.size = c.size;
    this.ready = c.ready;
    this.descTableAddress = c.descTableAddress;
    this.availRingAddress = c.availRingAddress;
    this.usedRingAddress = c.usedRingAddress;
    this.usesNotifSuppression = c.eventIdx;
    this.indirectDesc = c.indirectDesc;
  }

  /**
   * Initialises a queue being restored from an active state, turning a configuration the memory
   * cannot hold into a {@link SnapshotError} named `<format>.<field>`.
   */
  protected initializeRestored(memory: GuestMemory | null, format: string): void {
    if (memory === null)
      throw new SnapshotError(`${format}.active`, 'an active queue needs guest memory');
    try {
      this.initialize(memory);
    } catch (e) {
      if (e instanceof QueueConfigError) throw new SnapshotError(`${format}.${e.field}`, e.message);
      throw e;
    }
  }

  /** Validates the saved state and builds a new queue of this format from it (`fromState`). */
  protected abstract fromSaved(state: unknown, memory: GuestMemory | null): Queue;

  /** Fields that describe this object's life rather than the ring, kept across a restore. */
  protected keptAcrossRestore(): object {
    return {};
  }

  /** Replaces this queue's state with a saved one; on error this queue is left unchanged. */
  restore(state: unknown, memory: GuestMemory | null): void {
    const fresh = this.fromSaved(state, memory);
    Object.assign(this, fresh, this.keptAcrossRestore());
  }

  /** Validates the configuration against the spec and `memory`; throws QueueConfigError. */
  abstract initialize(memory: GuestMemory): void;

  protected requireActive(): void {
    // `!== true`: one comparison where `!` is V8's generic truthiness test (the pop path).
    if (this.active !== true)
      throw new QueueStateError('QUEUE_NOT_ACTIVE', 'queue is not initialised');
  }

  /**
   * The checks every `initialize` starts with: the queue is ready, and its size is in
   * 1..maxSize (and a power of two when `powerOfTwo`, as split rings need, §2.7; packed rings
   * take any size, §2.8.10.1). Leaves the queue inactive; returns the size.
   */
  protected beginInitialize(powerOfTwo: boolean): number {
    this.active = false;
    if (!this.ready) throw new QueueConfigError('QUEUE_NOT_READY', 'ready', 'queue is not ready');
    const size = this.size;
    if (
      !Number.isInteger(size) ||
      size <= 0 ||
      size > this.maxSize ||
      (powerOfTwo && (size & (size - 1)) !== 0)
    ) {
      throw new QueueConfigError('QUEUE_INVALID_SIZE', 'size', `invalid queue size ${size}`);
    }
    return size;
  }

  /** Back to a new queue's configuration (device reset, §2.4): not ready, maxSize, zeroes. */
  protected resetConfig(): void {
    this.ready = false;
    this.size = this.maxSize;
    this.descTableAddress = 0;
    this.availRingAddress = 0;
    this.usedRingAddress = 0;
    this.usesNotifSuppression = false;
    this.indirectDesc = false;
    this.polled = false;
    this.active = false;
    this.memory = null;
    this.qsize = 0;
  }
}
