import type { GuestMemory } from '../memory/guest-memory.js';
import {
  availEventOffset,
  type SplitLayout,
  splitLayout,
  usedEventOffset,
} from '../queue/split/layout.js';
import { SplitQueue, type SplitQueueOptions } from '../queue/split/queue.js';

const TWO_32 = 2n ** 32n;

/**
 * Direct access to the three parts of a split ring in guest memory, with no rules: every
 * field can be set to any value, as a buggy or hostile driver would. Tests, fuzzers and
 * benchmarks use it to build exactly the ring contents they want (the seed's test `VirtQueue`).
 */
export class RawSplitRing {
  readonly memory: GuestMemory;
  readonly size: number;
  readonly layout: SplitLayout;

  /** A ring of `size` entries laid out contiguously from `base` (16-byte aligned). */
  constructor(memory: GuestMemory, base: number, size: number, layout?: SplitLayout) {
    this.memory = memory;
    this.size = size;
    this.layout = layout ?? splitLayout(base, size);
  }

  dtableStart(): number {
    return this.layout.desc;
  }
  availStart(): number {
    return this.layout.avail;
  }
  usedStart(): number {
    return this.layout.used;
  }
  /** First byte after the used ring. */
  end(): number {
    return this.layout.end;
  }

  // ---- descriptor table ----

  /** Writes descriptor `i`; `addr` may be a bigint to store any 64-bit value. */
  setDesc(i: number, addr: number | bigint, len: number, flags: number, next: number): void {
    const at = this.layout.desc + 16 * i;
    const a = BigInt(addr);
    this.memory.writeU32(at, Number(a % TWO_32));
    this.memory.writeU32(at + 4, Number((a / TWO_32) % TWO_32));
    this.memory.writeU32(at + 8, len >>> 0);
    this.memory.writeU16(at + 12, flags & 0xffff);
    this.memory.writeU16(at + 14, next & 0xffff);
  }

  desc(i: number): { addr: number; len: number; flags: number; next: number } {
    const at = this.layout.desc + 16 * i;
    return {
      addr: this.memory.readU64(at),
      len: this.memory.readU32(at + 8),
      flags: this.memory.readU16(at + 12),
      next: this.memory.readU16(at + 14),
    };
  }

  setDescFlags(i: number, flags: number): void {
    this.memory.writeU16(this.layout.desc + 16 * i + 12, flags & 0xffff);
  }

  setDescNext(i: number, next: number): void {
    this.memory.writeU16(this.layout.desc + 16 * i + 14, next & 0xffff);
  }

  // ---- available ring ----

  availFlags(): number {
    return this.memory.readU16(this.layout.avail);
  }
  setAvailFlags(v: number): void {
    this.memory.writeU16(this.layout.avail, v & 0xffff);
  }
  availIdx(): number {
    return this.memory.readU16(this.layout.avail + 2);
  }
  setAvailIdx(v: number): void {
    this.memory.writeU16(this.layout.avail + 2, v & 0xffff);
  }
  availRing(i: number): number {
    return this.memory.readU16(this.layout.avail + 4 + 2 * i);
  }
  setAvailRing(i: number, head: number): void {
    this.memory.writeU16(this.layout.avail + 4 + 2 * i, head & 0xffff);
  }
  usedEvent(): number {
    return this.memory.readU16(this.layout.avail + usedEventOffset(this.size));
  }
  setUsedEvent(v: number): void {
    this.memory.writeU16(this.layout.avail + usedEventOffset(this.size), v & 0xffff);
  }

  // ---- used ring ----

  usedFlags(): number {
    return this.memory.readU16(this.layout.used);
  }
  setUsedFlags(v: number): void {
    this.memory.writeU16(this.layout.used, v & 0xffff);
  }
  usedIdx(): number {
    return this.memory.readU16(this.layout.used + 2);
  }
  setUsedIdx(v: number): void {
    this.memory.writeU16(this.layout.used + 2, v & 0xffff);
  }
  usedRing(i: number): { id: number; len: number } {
    const at = this.layout.used + 4 + 8 * i;
    return { id: this.memory.readU32(at), len: this.memory.readU32(at + 4) };
  }
  setUsedRing(i: number, id: number, len: number): void {
    const at = this.layout.used + 4 + 8 * i;
    this.memory.writeU32(at, id >>> 0);
    this.memory.writeU32(at + 4, len >>> 0);
  }
  availEvent(): number {
    return this.memory.readU16(this.layout.used + availEventOffset(this.size));
  }
  setAvailEvent(v: number): void {
    this.memory.writeU16(this.layout.used + availEventOffset(this.size), v & 0xffff);
  }

  /**
   * A device-side {@link SplitQueue} configured for this ring (size, addresses, ready) and, by
   * default, initialised over the same memory.
   */
  createQueue(
    options: SplitQueueOptions & { maxSize?: number; initialize?: boolean } = {},
  ): SplitQueue {
    const q = new SplitQueue(options.maxSize ?? this.size, options);
    q.size = this.size;
    q.ready = true;
    q.descTableAddress = this.layout.desc;
    q.availRingAddress = this.layout.avail;
    q.usedRingAddress = this.layout.used;
    if (options.initialize !== false) q.initialize(this.memory);
    return q;
  }
}
