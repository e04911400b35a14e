/**
 * Workload W1 of shared/BENCH.md: device-side cost per split-ring chain.
 *
 * - 2 MiB of guest memory at 0; a split queue of size 256 with its descriptor table at 0x0,
 *   available ring at 0x1000 and used ring at 0x2000.
 * - Descriptor i has address 0x10000 + i * 4096 and length 4096; chains of L descriptors are
 *   linked with NEXT, so the chain heads are 0, L, 2L, ... modulo 256.
 * - A round carries B = 16 chains: the driver (same thread) writes B heads into the available
 *   ring with plain stores and publishes `avail.idx` with a release store (Atomics.store);
 *   the device pops B chains, walks every descriptor summing address + length into a
 *   checksum, adds each head to the used ring with the chain's total length, publishes the
 *   used index once and calls `prepareKick`; the driver checks `used.idx` advanced by B.
 * - With EVENT_IDX on, the driver sets `used_event` to old used idx + B - 1 every round.
 *
 * The same ring also drives the naive baselines of the side-by-side comparison and the
 * allocation proof, so every figure comes from the same driver side.
 */

import {
  DescriptorChain,
  RawSplitRing,
  type SplitQueue,
  usedEventOffset,
  usedRingBytes,
  VIRTQ_DESC_F_NEXT,
} from '../../src/index.js';
import { GuestMemory } from '../../src/memory/index.js';

export const W1_MEMORY_BYTES = 2 * 1024 * 1024;
export const W1_QUEUE_SIZE = 256;
export const W1_DESC = 0x0;
export const W1_AVAIL = 0x1000;
export const W1_USED = 0x2000;
export const W1_BUFFER_BASE = 0x10000;
export const W1_BUFFER_LEN = 4096;
/** Chains per round. */
export const W1_BATCH = 16;
/** The three ring parts, as `SplitDriver` and `RawSplitRing` take them. */
export const W1_LAYOUT = {
  desc: W1_DESC,
  avail: W1_AVAIL,
  used: W1_USED,
  end: W1_USED + usedRingBytes(W1_QUEUE_SIZE),
} as const;
/** Chain lengths of the standard cases. */
export const W1_CHAIN_LENGTHS = [1, 4, 16] as const;

/** Sum of address + length over one descriptor. */
function descriptorSum(i: number): number {
  return W1_BUFFER_BASE + i * W1_BUFFER_LEN + W1_BUFFER_LEN;
}

/**
 * A device implementation measured on W1, over one {@link W1Ring}. Each implementation has
 * its own round loop, so the call sites the measurement goes through stay monomorphic
 * whichever other devices ran before in the same process.
 */
export interface W1Device {
  readonly ring: W1Ring;
  /** `rounds` whole rounds: driver publish, the device's B chains, driver check. */
  run(rounds: number): void;
  /** Sum of address + length over every descriptor walked so far. */
  readonly checksum: number;
  /** Rounds after which the device's notification decision said "notify". */
  readonly kicks: number;
}

/** The W1 rings in one guest memory, with the same-thread driver side. */
export class W1Ring {
  readonly memory: GuestMemory;
  readonly chainLength: number;
  readonly eventIdx: boolean;
  readonly raw: RawSplitRing;
  /** Rounds completed (driver side). */
  rounds = 0;

  private readonly avail16: Uint16Array;
  private readonly used16: Uint16Array;
  private readonly usedEventIndex: number;
  private availIdx = 0;
  private usedIdx = 0;
  private nextHead = 0;

  constructor(chainLength: number, eventIdx: boolean) {
    if (!(chainLength >= 1 && W1_QUEUE_SIZE % chainLength === 0)) {
      throw new RangeError(`W1 chain length ${chainLength} does not divide ${W1_QUEUE_SIZE}`);
    }
    this.memory = GuestMemory.create(W1_MEMORY_BYTES);
    this.chainLength = chainLength;
    this.eventIdx = eventIdx;
    this.raw = new RawSplitRing(this.memory, 0, W1_QUEUE_SIZE, { ...W1_LAYOUT });
    for (let i = 0; i < W1_QUEUE_SIZE; i++) {
      const last = (i + 1) % chainLength === 0;
      this.raw.setDesc(
        i,
        W1_BUFFER_BASE + i * W1_BUFFER_LEN,
        W1_BUFFER_LEN,
        last ? 0 : VIRTQ_DESC_F_NEXT,
        last ? 0 : i + 1,
      );
    }
    const region = this.memory.checkRange(W1_AVAIL, W1_LAYOUT.end - W1_AVAIL);
    const at = (addr: number) => region.offset + (addr - region.base);
    this.avail16 = new Uint16Array(region.buffer, at(W1_AVAIL), 3 + W1_QUEUE_SIZE);
    this.used16 = new Uint16Array(region.buffer, at(W1_USED), 3 + 4 * W1_QUEUE_SIZE);
    this.usedEventIndex = usedEventOffset(W1_QUEUE_SIZE) / 2;
  }

  /** A virtq device-side queue over this ring (EVENT_IDX as configured). */
  createQueue(): SplitQueue {
    const q = this.raw.createQueue();
    if (this.eventIdx) q.enableNotifSuppression();
    return q;
  }

  /** Driver, step 1: B heads into the available ring, then a release store of `avail.idx`. */
  publish(): void {
    const ring = this.avail16;
    const l = this.chainLength;
    let idx = this.availIdx;
    let head = this.nextHead;
    for (let k = 0; k < W1_BATCH; k++) {
      ring[2 + (idx & (W1_QUEUE_SIZE - 1))] = head;
      idx = (idx + 1) & 0xffff;
      head = (head + l) & (W1_QUEUE_SIZE - 1);
    }
    this.nextHead = head;
    this.availIdx = idx;
    if (this.eventIdx) {
      Atomics.store(ring, this.usedEventIndex, (this.usedIdx + W1_BATCH - 1) & 0xffff);
    }
    Atomics.store(ring, 1, idx);
  }

  /** Driver, step 3: `used.idx` must have advanced by exactly B. */
  check(): void {
    const now = Atomics.load(this.used16, 1);
    const want = (this.usedIdx + W1_BATCH) & 0xffff;
    if (now !== want) throw new Error(`W1: used.idx is ${now}, expected ${want}`);
    this.usedIdx = now;
    this.rounds++;
  }

  /** The checksum of the first `chains` chains of this ring (what a correct walk sums). */
  expectedChecksum(chains: number): number {
    const perCycle = W1_QUEUE_SIZE / this.chainLength;
    let tableSum = 0;
    for (let i = 0; i < W1_QUEUE_SIZE; i++) tableSum += descriptorSum(i);
    const cycles = Math.floor(chains / perCycle);
    let sum = cycles * tableSum;
    // The remaining chains start again at head 0 and cover descriptors 0, 1, ... in order.
    for (let i = 0; i < (chains - cycles * perCycle) * this.chainLength; i++) {
      sum += descriptorSum(i);
    }
    return sum;
  }
}

/** virtq's device loop: `pop(into)` with one reused chain, the chain's cursor, one publish. */
export class VirtqW1Device implements W1Device {
  readonly ring: W1Ring;
  checksum = 0;
  kicks = 0;
  private readonly queue: SplitQueue;
  private readonly chain = new DescriptorChain();

  constructor(ring: W1Ring) {
    this.ring = ring;
    this.queue = ring.createQueue();
  }

  run(rounds: number): void {
    const ring = this.ring;
    for (let r = 0; r < rounds; r++) {
      ring.publish();
      this.round();
      ring.check();
    }
  }

  /** Device, step 2: pops B chains, walks them, adds them used, publishes once, prepareKick. */
  private round(): void {
    const q = this.queue;
    const into = this.chain;
    let sum = 0;
    for (let k = 0; k < W1_BATCH; k++) {
      const c = q.pop(into);
      if (c === null) throw new Error('W1: the available ring ran dry');
      do {
        sum += c.addr + c.len;
      } while (c.advance());
      q.addUsed(c.head, c.totalLength);
    }
    q.advanceUsedRingIdx();
    if (q.prepareKick()) this.kicks++;
    this.checksum += sum;
  }
}

// ---- naive baselines for the side-by-side ratio ----

/**
 * Ring state of a typical JavaScript split-queue device: every ring and descriptor field is
 * read or written through a `GuestMemory.readU16/readU32/readU64/writeU16/writeU32` call,
 * i.e. one region lookup, bounds check and DataView access per field. It keeps the checks a
 * device owes a hostile driver (head and next in range, chain bounded, buffers inside guest
 * memory) but nothing else virtq does (no validate-once views, no Atomics).
 */
abstract class NaiveDeviceBase implements W1Device {
  readonly ring: W1Ring;
  checksum = 0;
  kicks = 0;
  protected readonly memory: GuestMemory;
  protected readonly eventIdx: boolean;
  protected nextAvail = 0;
  protected nextUsed = 0;
  protected numAdded = 0;

  constructor(ring: W1Ring) {
    this.ring = ring;
    this.memory = ring.memory;
    this.eventIdx = ring.eventIdx;
  }

  run(rounds: number): void {
    const ring = this.ring;
    for (let r = 0; r < rounds; r++) {
      ring.publish();
      this.round();
      ring.check();
    }
  }

  protected abstract round(): void;

  /** Head of the next available chain, or -1 when there is none. */
  protected nextHead(): number {
    const m = this.memory;
    const availIdx = m.readU16(W1_AVAIL + 2);
    if (availIdx === this.nextAvail) return -1;
    const head = m.readU16(W1_AVAIL + 4 + 2 * (this.nextAvail % W1_QUEUE_SIZE));
    this.nextAvail = (this.nextAvail + 1) & 0xffff;
    if (head >= W1_QUEUE_SIZE) throw new RangeError(`head ${head} out of range`);
    return head;
  }

  protected addUsed(head: number, len: number): void {
    const at = W1_USED + 4 + 8 * (this.nextUsed % W1_QUEUE_SIZE);
    this.memory.writeU32(at, head);
    this.memory.writeU32(at + 4, len);
    this.nextUsed = (this.nextUsed + 1) & 0xffff;
    this.numAdded++;
  }

  protected publishAndKick(): void {
    const m = this.memory;
    m.writeU16(W1_USED + 2, this.nextUsed);
    let notify: boolean;
    if (this.eventIdx) {
      const usedEvent = m.readU16(W1_AVAIL + usedEventOffset(W1_QUEUE_SIZE));
      const newIdx = this.nextUsed;
      const oldIdx = (newIdx - this.numAdded) & 0xffff;
      notify = ((newIdx - usedEvent - 1) & 0xffff) < ((newIdx - oldIdx) & 0xffff);
    } else {
      notify = (m.readU16(W1_AVAIL) & 1) === 0;
    }
    this.numAdded = 0;
    if (notify) this.kicks++;
  }
}

/** Naive baseline 1: per-field GuestMemory calls, no allocation per chain. */
export class NaiveFieldsW1Device extends NaiveDeviceBase {
  protected round(): void {
    const m = this.memory;
    let sum = 0;
    for (let k = 0; k < W1_BATCH; k++) {
      const head = this.nextHead();
      if (head < 0) throw new Error('W1: the available ring ran dry');
      let i = head;
      let total = 0;
      for (let n = 0; ; n++) {
        if (n >= W1_QUEUE_SIZE) throw new RangeError('chain too long');
        const d = W1_DESC + 16 * i;
        const addr = m.readU64(d);
        const len = m.readU32(d + 8);
        const flags = m.readU16(d + 12);
        const next = m.readU16(d + 14);
        if (!m.isValidRange(addr, len)) throw new RangeError('buffer outside guest memory');
        sum += addr + len;
        total += len;
        if ((flags & VIRTQ_DESC_F_NEXT) === 0) break;
        if (next >= W1_QUEUE_SIZE) throw new RangeError(`next ${next} out of range`);
        i = next;
      }
      this.addUsed(head, total);
    }
    this.publishAndKick();
    this.checksum += sum;
  }
}

/** One descriptor as a typical implementation hands it to device code. */
interface NaiveDescriptor {
  addr: number;
  len: number;
  flags: number;
  next: number;
}

/** Naive baseline 2: as baseline 1, plus an array of descriptor objects per chain. */
export class NaiveObjectsW1Device extends NaiveDeviceBase {
  private pop(): { head: number; descs: NaiveDescriptor[] } | null {
    const head = this.nextHead();
    if (head < 0) return null;
    const m = this.memory;
    const descs: NaiveDescriptor[] = [];
    let i = head;
    for (;;) {
      if (descs.length >= W1_QUEUE_SIZE) throw new RangeError('chain too long');
      const d = W1_DESC + 16 * i;
      const desc = {
        addr: m.readU64(d),
        len: m.readU32(d + 8),
        flags: m.readU16(d + 12),
        next: m.readU16(d + 14),
      };
      if (!m.isValidRange(desc.addr, desc.len)) {
        throw new RangeError('buffer outside guest memory');
      }
      descs.push(desc);
      if ((desc.flags & VIRTQ_DESC_F_NEXT) === 0) break;
      if (desc.next >= W1_QUEUE_SIZE) throw new RangeError(`next ${desc.next} out of range`);
      i = desc.next;
    }
    return { head, descs };
  }

  protected round(): void {
    let sum = 0;
    for (let k = 0; k < W1_BATCH; k++) {
      const chain = this.pop();
      if (chain === null) throw new Error('W1: the available ring ran dry');
      let total = 0;
      for (const d of chain.descs) {
        sum += d.addr + d.len;
        total += d.len;
      }
      this.addUsed(chain.head, total);
    }
    this.publishAndKick();
    this.checksum += sum;
  }
}

/** Throws unless the device walked exactly the chains its ring carried so far. */
export function verifyW1(device: W1Device): void {
  const ring = device.ring;
  const want = ring.expectedChecksum(ring.rounds * W1_BATCH);
  if (device.checksum !== want) {
    throw new Error(`W1 L=${ring.chainLength}: checksum ${device.checksum}, expected ${want}`);
  }
  // Both configurations ask for a notification every round: flags 0, or used_event at B - 1.
  if (device.kicks !== ring.rounds) {
    throw new Error(
      `W1 L=${ring.chainLength}: ${device.kicks} notifications in ${ring.rounds} rounds`,
    );
  }
}
