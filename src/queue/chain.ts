import type { GuestMemory } from '../memory/guest-memory.js';
import type { GuestRegion } from '../memory/region.js';
import { ChainRecord } from './chain-record.js';

/** One descriptor of a chain, as a plain object (for tests, logs and iteration). */
export interface Descriptor {
  /** Index in the table the descriptor came from (the ring's table, or an indirect table). */
  index: number;
  addr: number;
  len: number;
  flags: number;
  next: number;
  /** True when the descriptor came from an indirect table. */
  indirect: boolean;
}

/**
 * A descriptor chain the driver made available, read and validated once when it was popped.
 *
 * The queue copies every descriptor of the chain out of guest memory at pop time (so a driver
 * that rewrites the table afterwards cannot change what the device sees) and checks it: table
 * indices, chain length, indirect-table rules, device-readable before device-writable, total
 * length, and every buffer against guest memory. After that, walking the chain cannot fail.
 *
 * Device code sees the chain read-only: only a queue fills one (`pop`, `chainAt`,
 * `reviveChain`). A chain made with `new DescriptorChain()` is storage for `pop(into)`, so a
 * device parses chain after chain without allocating. The chain is a cursor over its
 * descriptors too, in the manner of the seed's `DescriptorChain`: `index`, `addr`, `len`,
 * `flags`, `next` describe the current descriptor, `advance` moves on.
 */
export interface DescriptorChain {
  /** Head descriptor index (split ring) or buffer id (packed ring): what goes in the used ring. */
  readonly head: number;
  /** Number of descriptors in the chain, counting those of an indirect table, not the pointer. */
  readonly count: number;
  /** Descriptor slots the chain takes in the ring itself (an indirect table counts as one). */
  readonly ringCount: number;
  /** Position of the first device-writable descriptor; `count` when there is none. */
  readonly writableStart: number;
  /** Bytes the device may read (sum of the device-readable lengths). */
  readonly readableLength: number;
  /** Bytes the device may write (sum of the device-writable lengths). */
  readonly writableLength: number;
  /** Total bytes the chain describes. */
  readonly totalLength: number;
  /** Guest memory the buffers live in (null before the first pop). */
  readonly memory: GuestMemory | null;
  /** Position of the current descriptor (0 = head). */
  readonly cursor: number;
  /** Guest-physical address of each descriptor's buffer, positions [0, count). */
  readonly addrs: ArrayLike<number>;
  /** Length of each descriptor's buffer, positions [0, count). */
  readonly lens: ArrayLike<number>;
  /** The region holding each descriptor's whole buffer; null when it spans regions or is empty. */
  readonly regions: ArrayLike<GuestRegion | null>;
  /** `regions[i]`, read without building the list (a chain in one region keeps it once). */
  regionAt(i: number): GuestRegion | null;

  /** Table index of the current descriptor. */
  readonly index: number;
  /** Guest-physical address of the current descriptor's buffer. */
  readonly addr: number;
  /** Length of the current descriptor's buffer. */
  readonly len: number;
  /** Flags of the current descriptor. */
  readonly flags: number;
  /** `next` field of the current descriptor (meaningful when it has NEXT). */
  readonly next: number;

  /** True when another descriptor follows the current one. */
  hasNext(): boolean;
  /** True when the device may write the current descriptor's buffer (and not read it). */
  isWriteOnly(): boolean;
  /** Moves to the next descriptor in place; false (and no move) at the end of the chain. */
  advance(): boolean;
  /** Moves back to the head descriptor. */
  rewind(): void;
  /**
   * A copy of this chain positioned at the next descriptor, or null at the end (the seed's
   * `next_descriptor`). Allocates; the hot path uses {@link advance}.
   */
  nextDescriptor(): DescriptorChain | null;
  /** Descriptor `i` of the chain as a plain object. */
  descriptor(i: number): Descriptor;
  /** Every descriptor, head first. */
  [Symbol.iterator](): IterableIterator<Descriptor>;
  /**
   * A zero-copy view of descriptor `i`'s buffer (default: the current one). The buffer was
   * checked against guest memory at pop time; one that spans two regions cannot be a single
   * view and throws `GuestMemoryError` (read it through `src/iovec` instead).
   */
  slice(i?: number): Uint8Array;
  /** An independent copy (allocates). */
  clone(): DescriptorChain;
  /** Makes this chain a copy of `other`, reusing this chain's storage when it is big enough. */
  copyFrom(other: DescriptorChain): void;
}

/** Makes empty chain storage for `pop(into)`; `capacity` descriptors before it first grows. */
export interface DescriptorChainConstructor {
  new (capacity?: number): DescriptorChain;
  readonly prototype: DescriptorChain;
}

/**
 * Empty chain storage: `new DescriptorChain()` gives a chain a queue can pop into. Only the
 * queues of `src/queue` fill chains; what they hand out is read-only to device code.
 */
export const DescriptorChain: DescriptorChainConstructor = ChainRecord;
