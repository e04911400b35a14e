import { DescriptorError, type DescriptorErrorCode, GuestMemoryError } from '../errors.js';
import type { GuestMemory } from '../memory/guest-memory.js';
import { joinU64 } from '../memory/guest-memory.js';
import type { GuestRegion } from '../memory/region.js';
import type { Descriptor, DescriptorChain } from './chain.js';
import {
  DESCRIPTOR_SIZE,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
} from './constants.js';

const TWO_32 = 2 ** 32;
/** VIRTIO 1.2 §2.7.5.2 / §2.8.5: a chain carries at most 2^32 bytes in total. */
const MAX_CHAIN_BYTES = TWO_32;

/** A guest address from the two u32 halves of a descriptor's u64 field (see U64_UNSAFE). */
const joinAddr = joinU64;

const IS_RECORD = Symbol('virtq.ChainRecord');

/**
 * The one implementation of {@link DescriptorChain}, and the only code that fills one: the
 * queues of `src/queue` build chains through `begin`, `push`, `pushIndirect`,
 * `pushIndirectPacked` and `end`, which check every rule as they go. Nothing outside
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

  // Builder state (see begin/push).
  private limit = 0;
  private allowIndirect = false;
  private sawIndirect = false;

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
    let region: GuestRegion | null = null;
    if (len > 0) {
      const memory = this.memory!;
      const r = memory.findRegion(addr);
      if (r !== undefined && len <= r.end - addr) region = r;
      else if (!memory.covers(addr, len)) {
        this.fail(
          'DESC_BUFFER_OUT_OF_MEMORY',
          index,
          `buffer [0x${addr.toString(16)}, +${len}) is outside guest memory`,
        );
      }
    }
    this.links[n] = index | (next << 16);
    this.addrs[n] = addr;
    this.lens[n] = len;
    this.flagsOf[n] = fromIndirect ? flags | 0x10000 : flags;
    this.regions[n] = region;
    this.count = n + 1;
  }

  /**
   * Follows an indirect descriptor (`index`, with the given raw fields) into its table and
   * pushes every descriptor of the table's chain (VIRTIO 1.2 §2.7.5.3): split-format entries
   * linked by NEXT / `next` inside the table.
   */
  pushIndirect(index: number, addrLo: number, addrHi: number, len: number, flags: number): void {
    const r = this.enterIndirect(index, addrLo, addrHi, len, flags);
    const entries = len / DESCRIPTOR_SIZE;
    const view = r.view;
    const base = joinAddr(addrLo, addrHi) - r.base;
    let j = 0;
    let steps = 0;
    for (;;) {
      // A table of `entries` descriptors holds a chain of at most `entries`; more means a loop.
      if (++steps > entries) this.fail('DESC_INDIRECT_LOOP', j, 'indirect table chain loops');
      const off = base + j * DESCRIPTOR_SIZE;
      const lo = view.getUint32(off, true);
      const hi = view.getUint32(off + 4, true);
      const dlen = view.getUint32(off + 8, true);
      const dflags = view.getUint16(off + 12, true);
      const dnext = view.getUint16(off + 14, true);
      if ((dflags & VIRTQ_DESC_F_INDIRECT) !== 0) {
        this.fail('DESC_INDIRECT_NESTED', j, 'indirect descriptor inside an indirect table');
      }
      this.push(j, lo, hi, dlen, dflags, dnext, true);
      if ((dflags & VIRTQ_DESC_F_NEXT) === 0) return;
      // §2.7.5.3.1: `next` indexes the indirect table.
      if (dnext >= entries)
        this.fail(
          'DESC_NEXT_OUT_OF_RANGE',
          j,
          `next ${dnext} is outside an indirect table of ${entries}`,
        );
      j = dnext;
    }
  }

  /**
   * Follows a packed-ring indirect descriptor (VIRTIO 1.2 §2.8.7) into its table and pushes all
   * `len / 16` entries in order. Entries have the packed layout (addr u64, len u32, id u16,
   * flags u16); only VIRTQ_DESC_F_WRITE means anything there, so their id, NEXT and other
   * reserved bits are ignored, except INDIRECT, which the driver MUST NOT set (§2.8.19) and
   * which is rejected as a nested table. The pushed entries carry NEXT / `next` linking each to
   * the following one, so the chain looks the same as any other chain to device code.
   */
  pushIndirectPacked(
    index: number,
    addrLo: number,
    addrHi: number,
    len: number,
    flags: number,
  ): void {
    const r = this.enterIndirect(index, addrLo, addrHi, len, flags);
    // §2.8.19: an indirect descriptor MUST NOT sit in a list linked by NEXT (§2.8.5: a list is
    // either direct descriptors or one indirect descriptor).
    if (this.count > 0) {
      this.fail('DESC_INDIRECT_WITH_NEXT', index, 'indirect descriptor after a direct one');
    }
    const entries = len / DESCRIPTOR_SIZE;
    const view = r.view;
    const base = joinAddr(addrLo, addrHi) - r.base;
    for (let j = 0; j < entries; j++) {
      const off = base + j * DESCRIPTOR_SIZE;
      const dflags = view.getUint16(off + 14, true);
      // §2.8.19: no flag but WRITE inside an indirect table; a nested table is refused.
      if ((dflags & VIRTQ_DESC_F_INDIRECT) !== 0) {
        this.fail('DESC_INDIRECT_NESTED', j, 'indirect descriptor inside an indirect table');
      }
      const last = j + 1 === entries;
      this.push(
        j,
        view.getUint32(off, true),
        view.getUint32(off + 4, true),
        view.getUint32(off + 8, true),
        (dflags & VIRTQ_DESC_F_WRITE) | (last ? 0 : VIRTQ_DESC_F_NEXT),
        last ? 0 : j + 1,
        true,
      );
    }
  }

  /**
   * The checks both ring formats make on an indirect descriptor before reading its table
   * (§2.7.5.3.1 split, §2.8.7 / §2.8.19 packed). Returns the region holding the whole table and
   * counts the descriptor as this chain's one indirect ring slot.
   */
  private enterIndirect(
    index: number,
    addrLo: number,
    addrHi: number,
    len: number,
    flags: number,
  ): GuestRegion {
    // §2.7.5.3.1 / §2.8.19: the driver MUST NOT set INDIRECT unless VIRTIO_F_INDIRECT_DESC was
    // negotiated.
    if (!this.allowIndirect) {
      this.fail(
        'DESC_INDIRECT_NOT_NEGOTIATED',
        index,
        'indirect descriptor without VIRTIO_F_INDIRECT_DESC',
      );
    }
    // §2.7.5.3.1: an indirect table MUST NOT itself contain an indirect descriptor, and a chain
    // has at most one.
    if (this.sawIndirect)
      this.fail('DESC_INDIRECT_NESTED', index, 'indirect descriptor inside an indirect table');
    // §2.7.5.3.1 / §2.8.19: the driver MUST NOT set both INDIRECT and NEXT.
    if ((flags & VIRTQ_DESC_F_NEXT) !== 0) {
      this.fail('DESC_INDIRECT_WITH_NEXT', index, 'indirect descriptor with NEXT set');
    }
    // §2.7.5.3 / §2.8.7: the table is an array of 16-byte descriptors; it cannot be empty.
    if (len === 0 || len % DESCRIPTOR_SIZE !== 0) {
      this.fail(
        'DESC_INDIRECT_BAD_LENGTH',
        index,
        `indirect table length ${len} is not a positive multiple of 16`,
      );
    }
    const entries = len / DESCRIPTOR_SIZE;
    // §2.7.5.3.1 / §2.8.19: the whole chain is bounded, so is the table.
    if (entries > this.limit) {
      this.fail(
        'DESC_INDIRECT_BAD_LENGTH',
        index,
        `indirect table of ${entries} entries exceeds ${this.limit}`,
      );
    }
    const addr = joinAddr(addrLo, addrHi);
    const r = this.memory!.findRegion(addr);
    if (r === undefined || len > r.end - addr) {
      this.fail(
        'DESC_INDIRECT_OUT_OF_MEMORY',
        index,
        `indirect table [0x${addr.toString(16)}, +${len}) is not inside one region`,
      );
    }
    this.sawIndirect = true;
    this.ringCount++;
    return r;
  }

  /**
   * Rebuilds a chain a device held across a snapshot from its saved buffers, checking each
   * again as `push` does at pop: `buffers` are [address, length] pairs, device-readable before
   * `writableFrom` and device-writable from it on; the chain takes `ringSlots` ring slots. The
   * queue checks the head (see `Queue.reviveChain`).
   */
  revive(
    head: number,
    memory: GuestMemory,
    limit: number,
    ringSlots: number,
    buffers: readonly (readonly [number, number])[],
    writableFrom: number,
  ): void {
    this.begin(head, memory, limit, false);
    if (!(Number.isInteger(ringSlots) && ringSlots >= 1 && ringSlots <= limit)) {
      this.fail('DESC_CHAIN_TOO_LONG', head, `${ringSlots} ring slots, expected 1 to ${limit}`);
    }
    if (buffers.length === 0) this.fail('DESC_CHAIN_TOO_LONG', head, 'a chain with no buffer');
    const last = buffers.length - 1;
    for (let k = 0; k <= last; k++) {
      const [addr, len] = buffers[k]!;
      if (!(Number.isSafeInteger(addr) && addr >= 0 && len >>> 0 === len)) {
        this.fail('DESC_BUFFER_OUT_OF_MEMORY', k, `buffer [${addr}, +${len}) is not a guest range`);
      }
      const flags =
        (k >= writableFrom ? VIRTQ_DESC_F_WRITE : 0) | (k < last ? VIRTQ_DESC_F_NEXT : 0);
      this.push(
        k,
        addr % TWO_32,
        Math.floor(addr / TWO_32),
        len,
        flags,
        k < last ? k + 1 : 0,
        false,
      );
    }
    this.end();
    this.ringCount = ringSlots;
  }

  /** Throws a {@link DescriptorError} about this chain. */
  fail(code: DescriptorErrorCode, index: number, message: string): never {
    throw new DescriptorError(code, this.head, index, `chain ${this.head}: ${message}`);
  }

  private ensureCapacity(n: number): void {
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
