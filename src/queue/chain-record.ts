import { DescriptorError, type DescriptorErrorCode, GuestMemoryError } from '../errors.js';
import type { GuestMemory } from '../memory/guest-memory.js';
import { joinU64 } from '../memory/guest-memory.js';
import type { GuestRegion } from '../memory/region.js';
import type { Descriptor, DescriptorChain } from './chain.js';
import { followSplitIndirect } from './chain-walk.js';
import { VIRTQ_DESC_F_WRITE } from './constants.js';
import {
  SPLIT_DESC_ADDR_HI_U32,
  SPLIT_DESC_ADDR_LO_U32,
  SPLIT_DESC_LEN_U32,
} from './split/layout.js';

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
 * queues of `src/queue` build chains through `begin`, the walks of `chain-walk.ts` (or `push`)
 * and `end`, which check every rule as they go. Nothing outside
 * `src/queue` imports this module (test/api/chain-internal.test.ts checks it); device code sees
 * the read-only interface.
 *
 * Storage is struct-of-arrays, five stores per descriptor, grown on demand and reused from one
 * pop to the next, so a chain costs no allocation once its storage is big enough.
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

  /** Per descriptor, positions [0, count): table index (bits 0-15) and `next` (bits 16-31). */
  links: Uint32Array;
  addrs: Float64Array;
  lens: Uint32Array;
  /** Flags (bits 0-15) of each descriptor; bit 16 set when it came from an indirect table. */
  flagsOf: Uint32Array;
  /** The region holding the whole buffer, or null when it spans regions or is empty. */
  regions: (GuestRegion | null)[];

  /** Ring slots the last {@link pushPackedList} read (consumed even when the list failed). */
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
    this.links = new Uint32Array(cap);
    this.addrs = new Float64Array(cap);
    this.lens = new Uint32Array(cap);
    this.flagsOf = new Uint32Array(cap);
    this.regions = new Array<GuestRegion | null>(cap).fill(null);
  }

  // ---- the current descriptor (seed-style cursor) ----

  /** Table index of the current descriptor. */
  get index(): number {
    return this.links[this.cursor]! & 0xffff;
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
    return this.flagsOf[this.cursor]! & 0xffff;
  }
  /** `next` field of the current descriptor (meaningful when it has NEXT). */
  get next(): number {
    return this.links[this.cursor]! >>> 16;
  }

  /** True when another descriptor follows the current one. */
  hasNext(): boolean {
    return this.cursor + 1 < this.count;
  }

  /** True when the device may write the current descriptor's buffer (and not read it). */
  isWriteOnly(): boolean {
    return (this.flagsOf[this.cursor]! & VIRTQ_DESC_F_WRITE) !== 0;
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
    return {
      index: this.links[i]! & 0xffff,
      addr: this.addrs[i]!,
      len: this.lens[i]!,
      flags: this.flagsOf[i]! & 0xffff,
      next: this.links[i]! >>> 16,
      indirect: this.flagsOf[i]! >>> 16 === 1,
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
    const r = this.regions[i];
    if (r === null || r === undefined) {
      if (len === 0) return new Uint8Array(0);
      throw new GuestMemoryError(addr, len, 'spans two regions: read it piece by piece');
    }
    const off = addr - r.base;
    if ((this.flagsOf[i]! & VIRTQ_DESC_F_WRITE) !== 0) r.markDirty(addr, len);
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
    this.links.set(other.links.subarray(0, n));
    this.addrs.set(other.addrs.subarray(0, n));
    this.lens.set(other.lens.subarray(0, n));
    this.flagsOf.set(other.flagsOf.subarray(0, n));
    for (let i = 0; i < n; i++) this.regions[i] = other.regions[i] ?? null;
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
    if (n >= this.links.length) this.ensureCapacity(n + 1);
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
    this.links[n] = index | (next << 16);
    this.addrs[n] = addr;
    this.lens[n] = len;
    this.flagsOf[n] = fromIndirect ? flags | 0x10000 : flags;
    this.regions[n] = region;
    this.count = n + 1;
  }

  /**
   * Copies the split-format chain that starts at descriptor `head` of a descriptor table
   * (`table`: four u32 per descriptor, `size` entries) into this record, which {@link begin}
   * just emptied: the per-chain hot path of the split ring.
   *
   * This is the fast path for what drivers send nearly always: direct descriptors, each buffer
   * non-empty and in the region of the one before, the chain within its storage and limit.
   * Anything else (an indirect table, an empty buffer, another region, a broken rule) starts
   * the chain again in {@link walkSplitChecked}, which checks and reports everything. Only the
   * checked walk's copy is kept then, so the device still sees the table as read once. The
   * fast path is small enough for V8 to inline into the pop; that took W1 L=1 from about 31
   * to 24 ns per chain (docs/PERFORMANCE.md).
   */
  walkSplit(table: Uint32Array, head: number, size: number): void {
    // Named constants as literals in place, each with its name in a comment that
    // test/queue/hot-literals.test.ts checks (see walkSplitChecked).
    const links = this.links;
    const addrs = this.addrs;
    const lens = this.lens;
    const flagsOf = this.flagsOf;
    const regions = this.regions;
    const room = links.length < this.limit ? links.length : this.limit;
    const hint = this.hint;
    const rBase = hint.base;
    const rEnd = hint.end;
    let n = 0;
    let readable = 0;
    let writable = 0;
    let wstart = -1;
    let i = head;
    for (;;) {
      const w = i << 2;
      const fn = table[w + /* SPLIT_DESC_FLAGS_NEXT_U32 */ 3]!;
      const len = table[w + /* SPLIT_DESC_LEN_U32 */ 2]!;
      const addr = joinU64(
        table[w + /* SPLIT_DESC_ADDR_LO_U32 */ 0]!,
        table[w + /* SPLIT_DESC_ADDR_HI_U32 */ 1]!,
      );
      if (
        (fn & /* VIRTQ_DESC_F_INDIRECT */ 4) !== 0 ||
        n >= room ||
        !(len > 0 && addr >= rBase && len <= rEnd - addr)
      )
        break;
      if ((fn & /* VIRTQ_DESC_F_WRITE */ 2) !== 0) {
        if (wstart < 0) wstart = n;
        writable += len;
      } else if (wstart < 0) readable += len;
      else break;
      if (readable + writable > /* MAX_CHAIN_BYTES */ 2 ** 32) break;
      // Compare-then-store: a reused chain usually holds this region there already.
      if (regions[n] !== hint) regions[n] = hint;
      links[n] = i | (fn & 0xffff0000);
      addrs[n] = addr;
      lens[n] = len;
      flagsOf[n] = fn & 0xffff;
      n++;
      if ((fn & /* VIRTQ_DESC_F_NEXT */ 1) === 0) {
        this.commit(n, n, readable, writable, wstart);
        return;
      }
      i = fn >>> 16;
      if (i >= size) break;
    }
    this.walkSplitChecked(table, head, size);
  }

  /**
   * The split walk that checks and reports everything ({@link walkSplit} starts the chain
   * again here when it meets anything unusual): what {@link push} checks, in one loop that
   * keeps the running totals in locals, with an indirect descriptor followed into its table
   * ({@link followSplitIndirect}).
   */
  private walkSplitChecked(table: Uint32Array, head: number, size: number): void {
    // Named constants as literals in locals: V8 (11.3, Node 20) loads an imported binding at
    // every use with a check that it is initialised; here that cost about 15% per descriptor
    // at L=16 and 4 ns per chain at L=1 (bench/run.ts w1-floor/). test/queue/hot-literals.test.ts
    // checks each literal against the constant named beside it.
    const ADDR_LO = 0; // SPLIT_DESC_ADDR_LO_U32
    const ADDR_HI = 1; // SPLIT_DESC_ADDR_HI_U32
    const LEN = 2; // SPLIT_DESC_LEN_U32
    const FLAGS_NEXT = 3; // SPLIT_DESC_FLAGS_NEXT_U32
    const F_NEXT = 1; // VIRTQ_DESC_F_NEXT
    const F_WRITE = 2; // VIRTQ_DESC_F_WRITE
    const F_INDIRECT = 4; // VIRTQ_DESC_F_INDIRECT
    const MAX_BYTES = 2 ** 32; // MAX_CHAIN_BYTES
    const join = joinU64; // the one u64 join, loaded once per call
    const start = this.count;
    const ringBase = this.ringCount - start;
    let n = start;
    let readable = this.readableLength;
    let writable = this.writableLength;
    let wstart = this.writableStart;
    let links = this.links;
    let addrs = this.addrs;
    let lens = this.lens;
    let flagsOf = this.flagsOf;
    let regions = this.regions;
    const limit = this.limit;
    // The last buffer's region, in locals: most chains live in one region.
    let hint = this.hint;
    let rBase = hint.base;
    let rEnd = hint.end;
    let i = head;
    let stop = -1;
    let stopFlags = 0;
    for (;;) {
      const w = i << 2;
      // flags (bits 0-15) and next (bits 16-31) are one little-endian u32.
      const fn = table[w + FLAGS_NEXT]!;
      if ((fn & F_INDIRECT) !== 0) {
        stop = i;
        stopFlags = fn & 0xffff;
        break;
      }
      if (n >= limit) {
        this.commit(n, ringBase + n, readable, writable, wstart);
        this.fail('DESC_CHAIN_TOO_LONG', i, `chain is longer than ${limit} descriptors`);
      }
      if (n >= links.length) {
        this.ensureCapacity(n + 1);
        links = this.links;
        addrs = this.addrs;
        lens = this.lens;
        flagsOf = this.flagsOf;
        regions = this.regions;
      }
      const lo = table[w + ADDR_LO]!;
      const hi = table[w + ADDR_HI]!;
      const len = table[w + LEN]!;
      const flags = fn & 0xffff;
      if ((flags & F_WRITE) !== 0) {
        if (wstart < 0) wstart = n;
        writable += len;
      } else {
        // §2.7.4.2: device-readable descriptors MUST come before device-writable ones.
        if (wstart >= 0) {
          this.commit(n, ringBase + n, readable, writable, wstart);
          this.fail(
            'DESC_WRITABLE_BEFORE_READABLE',
            i,
            'device-readable descriptor after a device-writable one',
          );
        }
        readable += len;
      }
      // §2.7.5.2: a chain MUST NOT describe more than 2^32 bytes in total.
      if (readable + writable > MAX_BYTES) {
        this.commit(n, ringBase + n, readable, writable, wstart);
        this.fail('DESC_CHAIN_LENGTH_OVERFLOW', i, 'chain describes more than 2^32 bytes');
      }
      const addr = join(lo, hi);
      if (len === 0) {
        if (regions[n] !== null) regions[n] = null;
      } else if (addr >= rBase && len <= rEnd - addr) {
        // Compare-then-store: a reused chain usually holds this region there already.
        if (regions[n] !== hint) regions[n] = hint;
      } else {
        // A miss: look the region up (the totals are stored first, in case it fails).
        this.commit(n, ringBase + n, readable, writable, wstart);
        const region = this.regionOf(addr, len, i);
        if (region !== null) {
          hint = region;
          rBase = region.base;
          rEnd = region.end;
        }
        regions[n] = region;
      }
      links[n] = i | (fn & 0xffff0000);
      addrs[n] = addr;
      lens[n] = len;
      flagsOf[n] = flags;
      n++;
      if ((flags & F_NEXT) === 0) break;
      const next = fn >>> 16;
      // §2.7.5: `next` must index the descriptor table.
      if (next >= size) {
        this.commit(n, ringBase + n, readable, writable, wstart);
        this.fail('DESC_NEXT_OUT_OF_RANGE', i, `next ${next} is outside a table of ${size}`);
      }
      i = next;
    }
    this.commit(n, ringBase + n, readable, writable, wstart);
    if (stop >= 0) {
      // The chain ends in an indirect table: follow it.
      const w = stop << 2;
      followSplitIndirect(
        this,
        stop,
        table[w + SPLIT_DESC_ADDR_LO_U32]!,
        table[w + SPLIT_DESC_ADDR_HI_U32]!,
        table[w + SPLIT_DESC_LEN_U32]!,
        stopFlags,
      );
    }
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

  /** Throws a {@link DescriptorError} about this chain. */
  fail(code: DescriptorErrorCode, index: number, message: string): never {
    throw new DescriptorError(code, this.head, index, `chain ${this.head}: ${message}`);
  }

  ensureCapacity(n: number): void {
    if (n <= this.links.length) return;
    let cap = this.links.length;
    while (cap < n) cap *= 2;
    const grow = <T extends Uint16Array | Float64Array | Uint32Array | Uint8Array>(
      a: T,
      make: (n: number) => T,
    ): T => {
      const b = make(cap);
      b.set(a as never);
      return b;
    };
    this.links = grow(this.links, (k) => new Uint32Array(k));
    this.addrs = grow(this.addrs, (k) => new Float64Array(k));
    this.lens = grow(this.lens, (k) => new Uint32Array(k));
    this.flagsOf = grow(this.flagsOf, (k) => new Uint32Array(k));
    while (this.regions.length < cap) this.regions.push(null);
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
