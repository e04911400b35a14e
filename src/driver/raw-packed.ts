import type { GuestMemory } from '../memory/guest-memory.js';
import { VIRTQ_DESC_F_AVAIL, VIRTQ_DESC_F_USED } from '../queue/constants.js';
import {
  PACKED_DESC_FLAGS,
  PACKED_DESC_ID,
  PACKED_DESC_LEN,
  PACKED_EVENT_FLAGS,
  PACKED_EVENT_OFF_WRAP,
  type PackedLayout,
  packedLayout,
} from '../queue/packed/layout.js';
import { PackedQueue, type PackedQueueOptions } from '../queue/packed/queue.js';

const TWO_32 = 2n ** 32n;

/** One packed descriptor as stored in guest memory. */
export interface RawPackedDesc {
  addr: number;
  len: number;
  id: number;
  flags: number;
}

/** An event suppression structure as stored in guest memory. */
export interface RawPackedEvent {
  offWrap: number;
  flags: number;
}

/**
 * Direct access to the three parts of a packed ring in guest memory, with no rules: every
 * descriptor field and both event suppression structures can be set to any value, as a buggy
 * or hostile driver would. Tests and fuzzers use it to build exactly the ring they want.
 */
export class RawPackedRing {
  readonly memory: GuestMemory;
  readonly size: number;
  readonly layout: PackedLayout;

  /** A ring of `size` descriptors laid out from `base` (16-byte aligned), or at `layout`. */
  constructor(memory: GuestMemory, base: number, size: number, layout?: PackedLayout) {
    this.memory = memory;
    this.size = size;
    this.layout = layout ?? packedLayout(base, size);
  }

  /** Flags bits that mark a descriptor available under driver wrap counter `wrap` (§2.8.1). */
  static availBits(wrap: boolean): number {
    return wrap ? VIRTQ_DESC_F_AVAIL : VIRTQ_DESC_F_USED;
  }

  /** Flags bits that mark a descriptor used under device wrap counter `wrap` (§2.8.1). */
  static usedBits(wrap: boolean): number {
    return wrap ? VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED : 0;
  }

  descStart(): number {
    return this.layout.desc;
  }
  driverStart(): number {
    return this.layout.driver;
  }
  deviceStart(): number {
    return this.layout.device;
  }
  /** First byte after the last part. */
  end(): number {
    return this.layout.end;
  }

  // ---- descriptor ring ----

  private at(i: number): number {
    return this.layout.desc + 16 * i;
  }

  /** Writes descriptor `i` whole; `addr` may be a bigint to store any 64-bit value. */
  setDesc(i: number, addr: number | bigint, len: number, id: number, flags: number): void {
    const at = this.at(i);
    const a = BigInt(addr);
    this.memory.writeU32(at, Number(a % TWO_32));
    this.memory.writeU32(at + 4, Number((a / TWO_32) % TWO_32));
    this.memory.writeU32(at + PACKED_DESC_LEN, len >>> 0);
    this.memory.writeU16(at + PACKED_DESC_ID, id & 0xffff);
    this.memory.writeU16(at + PACKED_DESC_FLAGS, flags & 0xffff);
  }

  /**
   * Writes descriptor `i` with `flags` plus the AVAIL/USED bits of an available descriptor
   * under driver wrap counter `wrap`.
   */
  setAvail(
    i: number,
    addr: number | bigint,
    len: number,
    id: number,
    flags: number,
    wrap: boolean,
  ): void {
    this.setDesc(i, addr, len, id, flags | RawPackedRing.availBits(wrap));
  }

  desc(i: number): RawPackedDesc {
    const at = this.at(i);
    return {
      addr: this.memory.readU64(at),
      len: this.memory.readU32(at + PACKED_DESC_LEN),
      id: this.memory.readU16(at + PACKED_DESC_ID),
      flags: this.memory.readU16(at + PACKED_DESC_FLAGS),
    };
  }

  descFlags(i: number): number {
    return this.memory.readU16(this.at(i) + PACKED_DESC_FLAGS);
  }
  setDescFlags(i: number, flags: number): void {
    this.memory.writeU16(this.at(i) + PACKED_DESC_FLAGS, flags & 0xffff);
  }
  setDescId(i: number, id: number): void {
    this.memory.writeU16(this.at(i) + PACKED_DESC_ID, id & 0xffff);
  }
  setDescLen(i: number, len: number): void {
    this.memory.writeU32(this.at(i) + PACKED_DESC_LEN, len >>> 0);
  }

  // ---- event suppression structures ----

  private readEvent(addr: number): RawPackedEvent {
    return {
      offWrap: this.memory.readU16(addr + PACKED_EVENT_OFF_WRAP),
      flags: this.memory.readU16(addr + PACKED_EVENT_FLAGS),
    };
  }
  private writeEvent(addr: number, flags: number, offWrap: number): void {
    this.memory.writeU16(addr + PACKED_EVENT_OFF_WRAP, offWrap & 0xffff);
    this.memory.writeU16(addr + PACKED_EVENT_FLAGS, flags & 0xffff);
  }

  /** Driver event suppression structure (driver area; the device reads it). */
  driverEvent(): RawPackedEvent {
    return this.readEvent(this.layout.driver);
  }
  setDriverEvent(flags: number, offWrap = 0): void {
    this.writeEvent(this.layout.driver, flags, offWrap);
  }

  /** Device event suppression structure (device area; the device writes it). */
  deviceEvent(): RawPackedEvent {
    return this.readEvent(this.layout.device);
  }
  setDeviceEvent(flags: number, offWrap = 0): void {
    this.writeEvent(this.layout.device, flags, offWrap);
  }

  /**
   * A device-side {@link PackedQueue} configured for this ring (size, addresses, ready) and,
   * by default, initialised over the same memory.
   */
  createQueue(
    options: PackedQueueOptions & {
      maxSize?: number;
      initialize?: boolean;
      eventIdx?: boolean;
      indirect?: boolean;
    } = {},
  ): PackedQueue {
    const q = new PackedQueue(options.maxSize ?? this.size, options);
    q.size = this.size;
    q.ready = true;
    q.descTableAddress = this.layout.desc;
    q.availRingAddress = this.layout.driver;
    q.usedRingAddress = this.layout.device;
    q.usesNotifSuppression = options.eventIdx ?? false;
    q.indirectDesc = options.indirect ?? false;
    if (options.initialize !== false) q.initialize(this.memory);
    return q;
  }
}
