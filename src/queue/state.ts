import { SnapshotError } from '../errors.js';
import { U64_UNSAFE } from '../memory/guest-memory.js';

/** Version of the saved queue state format. Bumped on any incompatible change. */
export const QUEUE_STATE_VERSION = 1;

/** Fields both ring formats save. All values are JSON-safe numbers and booleans. */
export interface QueueStateCommon {
  version: typeof QUEUE_STATE_VERSION;
  maxSize: number;
  size: number;
  ready: boolean;
  descTableAddress: number;
  availRingAddress: number;
  usedRingAddress: number;
  eventIdx: boolean;
  indirectDesc: boolean;
  /** The queue was initialised (its rings validated against guest memory) when saved. */
  active: boolean;
}

/** Saved state of a split queue. */
export interface SplitQueueState extends QueueStateCommon {
  format: 'split';
  nextAvail: number;
  nextUsed: number;
  numAdded: number;
}

/** Saved state of a packed queue. */
export interface PackedQueueState extends QueueStateCommon {
  format: 'packed';
  /** Next descriptor slot the device reads, and the driver's wrap counter expected there. */
  nextAvail: number;
  availWrap: boolean;
  /** Next descriptor slot the device writes, and its wrap counter. */
  nextUsed: number;
  usedWrap: boolean;
  /** Used descriptors written since the last notification decision. */
  numAdded: number;
  /** Buffers popped and not yet used, in pop order: [id, ring slots it took]. */
  inFlight: [number, number][];
  /** Used entries written but not yet published (their first flags held back). */
  pendingUsed: number;
  /** Value of the device event suppression area's flags field (0 enable, 1 disable, 2 desc). */
  deviceEventFlags: number;
}

/** Saved state of any queue. */
export type QueueState = SplitQueueState | PackedQueueState;

/**
 * Strict readers of a saved state that report the dotted path of the first bad field.
 * Everything a restore reads goes through these, so a corrupted state can only end in a
 * {@link SnapshotError}.
 */
export class StateReader {
  constructor(
    private readonly obj: Record<string, unknown>,
    private readonly path: string,
  ) {}

  static root(value: unknown, path: string): StateReader {
    if (typeof value !== 'object' || value === null || Array.isArray(value)) {
      throw new SnapshotError(path, 'is not an object');
    }
    return new StateReader(value as Record<string, unknown>, path);
  }

  private name(field: string): string {
    return `${this.path}.${field}`;
  }

  int(field: string, min: number, max: number): number {
    const v = this.obj[field];
    if (typeof v !== 'number' || !Number.isSafeInteger(v)) {
      throw new SnapshotError(this.name(field), `expected an integer, got ${describe(v)}`);
    }
    if (v < min || v > max)
      throw new SnapshotError(this.name(field), `${v} is outside [${min}, ${max}]`);
    return v;
  }

  bool(field: string): boolean {
    const v = this.obj[field];
    if (typeof v !== 'boolean')
      throw new SnapshotError(this.name(field), `expected a boolean, got ${describe(v)}`);
    return v;
  }

  literal<T extends string | number>(field: string, allowed: readonly T[]): T {
    const v = this.obj[field];
    if (!allowed.includes(v as T)) {
      throw new SnapshotError(
        this.name(field),
        `expected one of ${allowed.join(', ')}, got ${describe(v)}`,
      );
    }
    return v as T;
  }

  array(field: string, maxLength: number): unknown[] {
    const v = this.obj[field];
    if (!Array.isArray(v))
      throw new SnapshotError(this.name(field), `expected an array, got ${describe(v)}`);
    if (v.length > maxLength)
      throw new SnapshotError(this.name(field), `has ${v.length} entries, at most ${maxLength}`);
    return v;
  }

  /** A 64-bit feature mask saved as a lowercase hex string of 1 to 16 digits. */
  hex64(field: string): bigint {
    const v = this.obj[field];
    if (typeof v !== 'string' || !/^[0-9a-f]{1,16}$/.test(v)) {
      throw new SnapshotError(
        this.name(field),
        `expected a hex string of at most 64 bits, got ${describe(v)}`,
      );
    }
    return BigInt(`0x${v}`);
  }

  /** The value of `field`, unchecked (for a nested reader or validator). */
  raw(field: string): unknown {
    return this.obj[field];
  }

  /**
   * A ring address register: a non-negative safe integer, or U64_UNSAFE, which is what a
   * transport stores for a guest-written u64 at or above 2^53 (and initialize() rejects).
   */
  address(field: string): number {
    if (this.obj[field] === U64_UNSAFE) return U64_UNSAFE;
    return this.int(field, 0, Number.MAX_SAFE_INTEGER);
  }

  /**
   * Fields common to both formats, with the cross-field rules they obey. `size` and the ring
   * addresses are registers the driver writes: until the queue is active they may hold any
   * value a transport stores (an out-of-range size, an unsafe address), and save() of such a
   * queue must restore. An active state is checked by initialize() when it is restored.
   * `sizeLimit` bounds `size` (default: `maxSize`, for a format that sizes its restored
   * bookkeeping by it); the split ring passes 0xffffffff (a u32 register).
   */
  common(maxQueueSize: number, sizeLimit?: number): Omit<QueueStateCommon, 'version'> {
    this.literal('version', [QUEUE_STATE_VERSION]);
    const maxSize = this.int('maxSize', 1, maxQueueSize);
    const size = this.int('size', 0, sizeLimit ?? maxSize);
    return {
      maxSize,
      size,
      ready: this.bool('ready'),
      descTableAddress: this.address('descTableAddress'),
      availRingAddress: this.address('availRingAddress'),
      usedRingAddress: this.address('usedRingAddress'),
      eventIdx: this.bool('eventIdx'),
      indirectDesc: this.bool('indirectDesc'),
      active: this.bool('active'),
    };
  }
}

/**
 * Runs `read` over a nested state, reporting a {@link SnapshotError} it throws under `prefix`
 * (so a queue's `split.size` becomes, say, `mmio.queues.0.split.size`).
 */
export function nestedState<T>(prefix: string, read: () => T): T {
  try {
    return read();
  } catch (e) {
    if (e instanceof SnapshotError) {
      const reason = e.message.slice(`snapshot field ${e.field}: `.length);
      throw new SnapshotError(`${prefix}.${e.field}`, reason);
    }
    throw e;
  }
}

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'number') return String(v);
  return typeof v;
}
