import { DescriptorError, type DescriptorErrorCode, GuestMemoryError } from '../errors.js';
import type { GuestMemory } from '../memory/guest-memory.js';
import { joinU64 } from '../memory/guest-memory.js';
import type { GuestRegion } from '../memory/region.js';
import type { Descriptor, DescriptorChain } from './chain.js';
import { VIRTQ_DESC_F_WRITE } from './constants.js';

const TWO_32 = 2 ** 32;
/** VIRTIO 1.2 §2.7.5.2 / §2.8.5: a chain carries at most 2^32 bytes in total. */
export const MAX_CHAIN_BYTES = TWO_32;

/** A guest address from the two u32 halves of a descriptor's u64 field (see U64_UNSAFE). */
const joinAddr = joinU64;

const IS_RECORD = Symbol('virtq.ChainRecord');

/** A region guess that matches no address (base above every end). */
const NO_REGION = { base: Number.POSITIVE_INFINITY, end: 0 } as GuestRegion;

/**
 * The one implementation of {@link DescriptorChain}, and the only code that fills one: the
 * queues of `src/queue` build chains through `begin`, the walks of `split-walk.ts` and
 * `chain-walk.ts` (or `push`)
 * and `end`, which check every rule as they go. Nothing outside
 * `src/queue` imports this module (test/api/chain-internal.test.ts checks it); device code sees
 * the read-only interface.
 *
 * Storage is struct-of-arrays, three stores per descriptor (flags and next, address, length;
 * the index and the region are kept per chain, see {@link indexAt} and {@link uniform}), grown
 * on demand and reused from one pop to the next, so a chain costs no allocation once its
 * storage is big enough.
 */
export class ChainRecord implements DescriptorChain {
  /** Marks a record for {@link recordOf}. */
  readonly [IS_RECORD] = true;
  /** Head descriptor index (split ring) or buffer id (packed ring): what goes in the used ring. */
  head = 0;
  /** Number of descriptors in the chain, counting those of an indirect table, not the pointer. */
  count = 0;
  /** Descriptor slots the chain takes in the ring itself (an indirect table counts as one). */
  ringCount = 0;
  /** Position of the first device-writable descriptor; `count` when there is none. */
  writableStart = 0;
  /** Bytes the device may read (sum of the device-readable lengths). */
  readableLength = 0;
  /** Bytes the device may write (sum of the device-writable lengths). */
  writableLength = 0;
  /** Guest memory the buffers live in. */
  memory: GuestMemory | null = null;
  /** Position of the current descriptor (0 = head). */
  cursor = 0;

  /**
   * Per descriptor, positions [0, count): flags (bits 0-15) and `next` (bits 16-31), as a
   * split table entry holds them. A descriptor's table index is not stored: it is the `next`
   * of the one before ({@link indexAt}).
   */
  flagsNext: Uint32Array;
  addrs: Float64Array;
  lens: Uint32Array;
  /** Table index (split) or ring slot (packed) of the chain's first descriptor. */
  firstIndex = 0;
  /**
   * Position of the first descriptor read from an indirect table (its index is 0, and it and
   * every later one count as indirect); -1 when the chain has none.
   */
  indirectFrom = -1;
  /**
   * The region that holds every buffer of the chain, when the fast walk found them all in one
   * (then `regionList` is not filled until `regions` is read); null when `regionList` holds
   * each descriptor's region.
   */
  uniform: GuestRegion | null = null;
  /** Per descriptor: the region holding the whole buffer, or null (see {@link uniform}). */
  regionList: (GuestRegion | null)[];

  /** Ring slots the last checked packed walk (`walkPackedListChecked`) read, also when it failed. */
  slotsRead = 0;

  // Builder state (see begin/push; read and written by the walks of chain-walk.ts).
  /** The region the last buffer pushed lay in (a guess checked before any look-up). */
  hint: GuestRegion = NO_REGION;
  /** Most descriptors the chain may have, indirect table included. */
  limit = 0;
  /** Whether VIRTIO_F_INDIRECT_DESC was negotiated. */
  allowIndirect = false;
  /** Whether the chain already followed its one indirect table. */
  sawIndirect = false;

  constructor(capacity = 16) {
    const cap = Math.max(1, capacity | 0);
    this.flagsNext = new Uint32Array(cap);
    this.addrs = new Float64Array(cap);
    this.lens = new Uint32Array(cap);
    this.regionList = new Array<GuestRegion | null>(cap).fill(null);
  }

  // ---- the current descriptor (seed-style cursor) ----

  /** Table index of the current descriptor. */
  get index(): number {
    return this.indexAt(this.cursor);
  }

  /**
   * Table index of descriptor `i`: the chain's first index, 0 for the first entry of an
   * indirect table, and otherwise the `next` of the descriptor before (every walk follows it).
   */
  indexAt(i: number): number {
    if (i === this.indirectFrom) return 0;
    return i === 0 ? this.firstIndex : this.flagsNext[i - 1]! >>> 16;
  }

  /** The region holding each descriptor's whole buffer; null when it spans regions or is empty. */
  get regions(): (GuestRegion | null)[] {
    const u = this.uniform;
    if (u !== null) {
      const list = this.regionList;
      for (let i = 0; i < this.count; i++) list[i] = u;
      this.uniform = null;
    }
    return this.regionList;
  }

  /** The region holding descriptor `i`'s whole buffer, or null (no array filled). */
  regionAt(i: number): GuestRegion | null {
    const u = this.uniform;
    return u !== null ? u : (this.regionList[i] ?? null);
  }
  /** Guest-physical address of the current descriptor's buffer. */
  get addr(): number {
    return this.addrs[this.cursor]!;
  }
  /** Length of the current descriptor's buffer. */
  get len(): number {
    return this.lens[this.cursor]!;
  }
  /** Flags of the current descriptor. */
  get flags(): number {
    return this.flagsNext[this.cursor]! & 0xffff;
  }
  /** `next` field of the current descriptor (meaningful when it has NEXT). */
  get next(): number {
    return this.flagsNext[this.cursor]! >>> 16;
  }

  /** True when another descriptor follows the current one. */
  hasNext(): boolean {
    return this.cursor + 1 < this.count;
  }

  /** True when the device may write the current descriptor's buffer (and not read it). */
  isWriteOnly(): boolean {
    return (this.flagsNext[this.cursor]! & VIRTQ_DESC_F_WRITE) !== 0;
  }

  /** Moves to the next descriptor in place; false (and no move) at the end of the chain. */
  advance(): boolean {
    if (this.cursor + 1 >= this.count) return false;
    this.cursor++;
    return true;
  }

  /** Moves back to the head descriptor. */
  rewind(): void {
    this.cursor = 0;
  }

  /**
   * A copy of this chain positioned at the next descriptor, or null at the end (the seed's
   * `next_descriptor`). Allocates; the hot path uses {@link advance}.
   */
  nextDescriptor(): ChainRecord | null {
    if (!this.hasNext()) return null;
    const c = this.clone();
    c.cursor = this.cursor + 1;
    return c;
  }

  /** Descriptor `i` of the chain as a plain object. */
  descriptor(i: number): Descriptor {
    if (!(i >= 0 && i < this.count))
      throw new RangeError(`descriptor ${i} of a chain of ${this.count}`);
    const fn = this.flagsNext[i]!;
    return {
      index: this.indexAt(i),
      addr: this.addrs[i]!,
      len: this.lens[i]!,
      flags: fn & 0xffff,
      next: fn >>> 16,
      indirect: this.indirectFrom >= 0 && i >= this.indirectFrom,
    };
  }

  /** Every descriptor, head first. */
  *[Symbol.iterator](): IterableIterator<Descriptor> {
    for (let i = 0; i < this.count; i++) yield this.descriptor(i);
  }

  /** Total bytes the chain describes. */
  get totalLength(): number {
    return this.readableLength + this.writableLength;
  }

  /**
   * A zero-copy view of descriptor `i`'s buffer (default: the current one). The buffer was
   * checked against guest memory at pop time; one that spans two regions cannot be a single
   * view and throws {@link GuestMemoryError} (read it through `src/iovec` instead).
   */
  slice(i = this.cursor): Uint8Array {
    if (!(i >= 0 && i < this.count))
      throw new RangeError(`descriptor ${i} of a chain of ${this.count}`);
    const addr = this.addrs[i]!;
    const len = this.lens[i]!;
    const r = this.regionAt(i);
    if (r === null) {
      if (len === 0) return new Uint8Array(0);
      throw new GuestMemoryError(addr, len, 'spans two regions: read it piece by piece');
    }
    const off = addr - r.base;
    if ((this.flagsNext[i]! & VIRTQ_DESC_F_WRITE) !== 0) r.markDirty(addr, len);
    return r.bytes.subarray(off, off + len);
  }

  /** An independent copy (allocates). */
  clone(): ChainRecord {
    const c = new ChainRecord(this.count);
    c.copyFrom(this);
    return c;
  }

  /** Makes this chain a copy of `other`, reusing this chain's storage when it is big enough. */
  copyFrom(chain: DescriptorChain): void {
    const other = recordOf(chain);
    this.ensureCapacity(other.count);
    const n = other.count;
    this.flagsNext.set(other.flagsNext.subarray(0, n));
    this.addrs.set(other.addrs.subarray(0, n));
    this.lens.set(other.lens.subarray(0, n));
    this.uniform = other.uniform;
    if (other.uniform === null) {
      for (let i = 0; i < n; i++) this.regionList[i] = other.regionList[i] ?? null;
    }
    this.firstIndex = other.firstIndex;
    this.indirectFrom = other.indirectFrom;
    this.head = other.head;
    this.count = n;
    this.ringCount = other.ringCount;
    this.writableStart = other.writableStart;
    this.readableLength = other.readableLength;
    this.writableLength = other.writableLength;
    this.memory = other.memory;
    this.cursor = other.cursor;
  }

  // ---- building (used by the queues) ----

  /**
   * Starts a new chain. `limit` bounds the number of descriptors over the whole chain,
   * indirect table included, so no driver-made loop can run the walk forever.
   */
  begin(head: number, memory: GuestMemory, limit: number, allowIndirect: boolean): void {
    this.head = head;
    this.count = 0;
    this.ringCount = 0;
    this.writableStart = -1;
    this.readableLength = 0;
    this.writableLength = 0;
    if (this.memory !== memory) this.hint = NO_REGION;
    this.memory = memory;
    this.cursor = 0;
    this.firstIndex = head;
    this.indirectFrom = -1;
    this.uniform = null;
    this.limit = limit;
    this.allowIndirect = allowIndirect;
    this.sawIndirect = false;
  }

  /** Ends the chain; call after the last push. */
  end(): void {
    if (this.writableStart < 0) this.writableStart = this.count;
  }

  /**
   * The region holding all of buffer [addr, +len) of descriptor `index`; null when the buffer
   * is empty or spans regions (it must still lie in guest memory). Fails the chain when it is
   * not guest memory. The last buffer's region is tried first: most chains live in one.
   */
  regionOf(addr: number, len: number, index: number): GuestRegion | null {
    const hint = this.hint;
    if (len > 0 && addr >= hint.base && len <= hint.end - addr) return hint;
    return this.lookUpRegion(addr, len, index);
  }

  private lookUpRegion(addr: number, len: number, index: number): GuestRegion | null {
    if (len === 0) return null;
    const memory = this.memory!;
    const r = memory.findRegion(addr);
    if (r !== undefined && len <= r.end - addr) {
      this.hint = r;
      return r;
    }
    if (memory.covers(addr, len)) return null;
    this.fail(
      'DESC_BUFFER_OUT_OF_MEMORY',
      index,
      `buffer [0x${addr.toString(16)}, +${len}) is outside guest memory`,
    );
  }

  /**
   * Appends one buffer descriptor (not an indirect pointer), given its raw 64-bit address as
   * two halves. Checks the chain bound, the ordering rule, the total length and the buffer.
   */
  push(
    index: number,
    addrLo: number,
    addrHi: number,
    len: number,
    flags: number,
    next: number,
    fromIndirect: boolean,
  ): void {
    const n = this.count;
    if (n >= this.limit) {
      this.fail('DESC_CHAIN_TOO_LONG', index, `chain is longer than ${this.limit} descriptors`);
    }
    if (n >= this.flagsNext.length) this.ensureCapacity(n + 1);
    const addr = joinAddr(addrLo, addrHi);
    if ((flags & VIRTQ_DESC_F_WRITE) !== 0) {
      if (this.writableStart < 0) this.writableStart = n;
      this.writableLength += len;
    } else {
      // §2.7.4.2 / §2.8.4: device-readable descriptors MUST come before device-writable ones.
      if (this.writableStart >= 0) {
        this.fail(
          'DESC_WRITABLE_BEFORE_READABLE',
          index,
          'device-readable descriptor after a device-writable one',
        );
      }
      this.readableLength += len;
    }
    // §2.7.5.2: a chain MUST NOT describe more than 2^32 bytes in total.
    if (this.readableLength + this.writableLength > MAX_CHAIN_BYTES) {
      this.fail('DESC_CHAIN_LENGTH_OVERFLOW', index, 'chain describes more than 2^32 bytes');
    }
    const region = this.regionOf(addr, len, index);
    // The index is kept only as the chain's first and through the `next` before it (indexAt).
    if (fromIndirect) {
      if (this.indirectFrom < 0) this.indirectFrom = n;
    } else if (n === 0) this.firstIndex = index;
    this.flagsNext[n] = (flags & 0xffff) | (next << 16);
    this.addrs[n] = addr;
    this.lens[n] = len;
    this.regionList[n] = region;
    this.count = n + 1;
  }

  /**
   * Stores a walk's running totals: `n` descriptors, `ringSlots` ring slots. Idempotent, so a
   * walk stores them before anything that may throw and again at its end.
   */
  commit(n: number, ringSlots: number, readable: number, writable: number, wstart: number) {
    this.count = n;
    this.ringCount = ringSlots;
    this.readableLength = readable;
    this.writableLength = writable;
    this.writableStart = wstart;
  }

  /**
   * Stores what a fast walk found: `n` direct descriptors, one ring slot each, starting at
   * table index or ring slot `first`, every buffer in the region {@link hint}. It stores
   * {@link commit}'s fields itself: calling `commit` from here measured about 1.6 ns per chain
   * slower (W1 L=1 evidx=1, 28.8 against 27.2 ns, `bench/run.ts w1-floor/`).
   */
  commitFast(n: number, readable: number, writable: number, wstart: number, first: number) {
    this.count = n;
    this.ringCount = n;
    this.readableLength = readable;
    this.writableLength = writable;
    this.writableStart = wstart;
    this.cursor = 0;
    this.firstIndex = first;
    this.indirectFrom = -1;
    this.uniform = this.hint;
  }

  /** Throws a {@link DescriptorError} about this chain. */
  fail(code: DescriptorErrorCode, index: number, message: string): never {
    throw new DescriptorError(code, this.head, index, `chain ${this.head}: ${message}`);
  }

  ensureCapacity(n: number): void {
    if (n <= this.flagsNext.length) return;
    let cap = this.flagsNext.length;
    while (cap < n) cap *= 2;
    const grow = <T extends Uint16Array | Float64Array | Uint32Array | Uint8Array>(
      a: T,
      make: (n: number) => T,
    ): T => {
      const b = make(cap);
      b.set(a as never);
      return b;
    };
    this.flagsNext = grow(this.flagsNext, (k) => new Uint32Array(k));
    this.addrs = grow(this.addrs, (k) => new Float64Array(k));
    this.lens = grow(this.lens, (k) => new Uint32Array(k));
    while (this.regionList.length < cap) this.regionList.push(null);
  }
}

/**
 * The record behind a chain. Every chain is one (made by `new DescriptorChain()` or by a
 * queue); anything else is refused with a TypeError rather than half-filled.
 */
export function recordOf(chain: DescriptorChain): ChainRecord {
  // A field load, not instanceof: this runs on every pop, and instanceof cost about 10 ns there.
  if ((chain as Partial<ChainRecord>)[IS_RECORD] === true) return chain as ChainRecord;
  throw new TypeError('a chain must come from new DescriptorChain() or from a queue');
}
