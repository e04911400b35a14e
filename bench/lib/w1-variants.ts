/**
 * Variants of workload W1 (shared/BENCH.md, bench/lib/w1.ts) for the issue-3 comparisons: the
 * same buffers, batch and device loop on a packed ring, through indirect tables, and with
 * in-order completion through an InOrderCompleter.
 *
 * Every variant walks the same descriptors in the same order as W1 (buffer i at
 * 0x10000 + i * 4096, length 4096; the chains cover buffers 0..255 in order, L at a time), so
 * each one's checksum has W1's closed form and is checked against it.
 *
 * The packed ring mirrors W1's layout: 2 MiB at 0, size 256, descriptor ring at 0x0, driver
 * event suppression area at 0x1000, device area at 0x2000. A chain of L descriptors takes L
 * consecutive ring slots (§2.8.6), so its head slots run 0, L, 2L, ... mod 256 as W1's heads
 * do; its buffer id is its head slot. Indirect chains take one slot each and point at a table
 * of L entries at 0x4000 + 16 * (first buffer).
 *
 * The same-thread driver of the packed ring does what a packed driver must do each round,
 * the counterpart of W1's "B heads into the available ring, then a release store": for each
 * chain, restore the length and id that the device's used descriptor overwrote in the chain's
 * first slot, write the flags of every slot with plain stores, and expose the round by a
 * release store (Atomics.store) of the first slot's flags (§2.8.21.1). With EVENT_IDX it first
 * asks to be notified at the used descriptor of the round's last chain (the counterpart of
 * `used_event` = old used idx + B - 1). It then checks the round's used descriptors.
 */

import { RawPackedRing } from '../../src/driver/index.js';
import { GuestMemory } from '../../src/memory/index.js';
import {
  DescriptorChain,
  InOrderCompleter,
  PackedQueue,
  packOffWrap,
  RING_EVENT_FLAGS_DESC,
  type SplitQueue,
  silentLogger,
  VIRTQ_DESC_F_AVAIL,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_USED,
} from '../../src/queue/index.js';
import {
  W1_BATCH,
  W1_BUFFER_BASE,
  W1_BUFFER_LEN,
  W1_MEMORY_BYTES,
  W1_QUEUE_SIZE,
  W1Ring,
} from './w1.js';

/** Where the indirect tables live: one 16-byte entry per buffer, table k at entry k * L. */
export const W1_TABLES = 0x4000;
/** The packed ring's three parts, at W1's three ring addresses. */
export const W1_PACKED_LAYOUT = { desc: 0x0, driver: 0x1000, device: 0x2000, end: 0x2004 };

function bufferAddr(i: number): number {
  return W1_BUFFER_BASE + i * W1_BUFFER_LEN;
}

/** W1's closed-form checksum of the first `chains` chains of length `chainLength`. */
function expectedChecksum(chainLength: number, chains: number): number {
  return new W1Ring(chainLength, false).expectedChecksum(chains);
}

// ---- split ring, indirect chains ----

/**
 * W1's split ring with every chain behind an indirect descriptor: descriptor kL (W1's head of
 * chain k) points at a table of L split-format entries for buffers kL..kL+L-1, linked inside
 * the table. The available ring, driver and checksum are W1's; the queue accepts indirect
 * descriptors (VIRTIO_F_INDIRECT_DESC).
 */
export class IndirectW1Ring extends W1Ring {
  constructor(chainLength: number, eventIdx: boolean) {
    super(chainLength, eventIdx);
    const m = this.memory;
    for (let i = 0; i < W1_QUEUE_SIZE; i++) {
      const at = W1_TABLES + 16 * i;
      const last = (i + 1) % chainLength === 0;
      m.writeU64(at, bufferAddr(i));
      m.writeU32(at + 8, W1_BUFFER_LEN);
      m.writeU16(at + 12, last ? 0 : VIRTQ_DESC_F_NEXT);
      m.writeU16(at + 14, last ? 0 : (i % chainLength) + 1);
    }
    for (let head = 0; head < W1_QUEUE_SIZE; head += chainLength) {
      this.raw.setDesc(head, W1_TABLES + 16 * head, 16 * chainLength, VIRTQ_DESC_F_INDIRECT, 0);
    }
  }

  override createQueue(): SplitQueue {
    const q = super.createQueue();
    q.indirectDesc = true;
    return q;
  }
}

// ---- packed ring ----

export interface PackedW1Options {
  /** Every chain through an indirect table (one ring slot per chain). */
  indirect?: boolean;
  /**
   * The device completes each round in order with one used descriptor for the whole round
   * (VIRTIO_F_IN_ORDER, §2.8.8); the driver's check expects exactly that.
   */
  collapsed?: boolean;
}

/** W1 on a packed ring, with the same-thread driver side (see the file comment). */
export class PackedW1Ring {
  readonly memory: GuestMemory;
  readonly chainLength: number;
  readonly eventIdx: boolean;
  readonly indirect: boolean;
  readonly collapsed: boolean;
  /** Ring slots one chain takes. */
  readonly slotsPerChain: number;
  /** Rounds completed (driver side). */
  rounds = 0;

  private readonly desc16: Uint16Array;
  private readonly desc32: Uint32Array;
  private readonly driver32: Uint32Array;
  /** Length the first slot of a chain holds when available. */
  private readonly headLen: number;
  /** Flags (without AVAIL/USED) of a chain's slots: [0] first ... [slotsPerChain - 1] last. */
  private readonly slotFlags: Uint16Array;
  private availPos = 0;
  private availWrap = 1;
  private usedPos = 0;
  private usedWrap = 1;

  constructor(chainLength: number, eventIdx: boolean, options: PackedW1Options = {}) {
    if (!(chainLength >= 1 && W1_QUEUE_SIZE % chainLength === 0)) {
      throw new RangeError(`W1 chain length ${chainLength} does not divide ${W1_QUEUE_SIZE}`);
    }
    this.memory = GuestMemory.create(W1_MEMORY_BYTES);
    this.chainLength = chainLength;
    this.eventIdx = eventIdx;
    this.indirect = options.indirect ?? false;
    this.collapsed = options.collapsed ?? false;
    const raw = new RawPackedRing(this.memory, 0, W1_QUEUE_SIZE, { ...W1_PACKED_LAYOUT });
    const l = chainLength;
    if (this.indirect) {
      // Packed-format tables (§2.8.7): addr, len, id (reserved), flags (only WRITE counts).
      for (let i = 0; i < W1_QUEUE_SIZE; i++) {
        const at = W1_TABLES + 16 * i;
        this.memory.writeU64(at, bufferAddr(i));
        this.memory.writeU32(at + 8, W1_BUFFER_LEN);
      }
      // Slot s carries chain s mod (256 / L) on every lap: its table never changes.
      for (let s = 0; s < W1_QUEUE_SIZE; s++) {
        raw.setDesc(s, W1_TABLES + 16 * l * (s % (W1_QUEUE_SIZE / l)), 16 * l, s, 0);
      }
      this.slotsPerChain = 1;
      this.headLen = 16 * l;
      this.slotFlags = Uint16Array.of(VIRTQ_DESC_F_INDIRECT);
    } else {
      // Every slot of chain k (slots kL..kL+L-1) carries buffer id kL; only the last counts.
      for (let s = 0; s < W1_QUEUE_SIZE; s++) {
        raw.setDesc(s, bufferAddr(s), W1_BUFFER_LEN, s - (s % l), 0);
      }
      this.slotsPerChain = l;
      this.headLen = W1_BUFFER_LEN;
      this.slotFlags = new Uint16Array(l).fill(VIRTQ_DESC_F_NEXT);
      this.slotFlags[l - 1] = 0;
    }
    const region = this.memory.checkRange(0, W1_PACKED_LAYOUT.end);
    this.desc16 = new Uint16Array(region.buffer, region.offset, 8 * W1_QUEUE_SIZE);
    this.desc32 = new Uint32Array(region.buffer, region.offset, 4 * W1_QUEUE_SIZE);
    this.driver32 = new Uint32Array(region.buffer, region.offset + W1_PACKED_LAYOUT.driver, 1);
  }

  /** A virtq device-side packed queue over this ring. */
  createQueue(): PackedQueue {
    const q = new PackedQueue(W1_QUEUE_SIZE, { logger: silentLogger });
    q.size = W1_QUEUE_SIZE;
    q.descTableAddress = W1_PACKED_LAYOUT.desc;
    q.availRingAddress = W1_PACKED_LAYOUT.driver;
    q.usedRingAddress = W1_PACKED_LAYOUT.device;
    q.usesNotifSuppression = this.eventIdx;
    q.indirectDesc = this.indirect;
    q.ready = true;
    q.initialize(this.memory);
    return q;
  }

  /** Driver, step 1: B chains made available, the first slot's flags stored last. */
  publish(): void {
    const d16 = this.desc16;
    const d32 = this.desc32;
    const spc = this.slotsPerChain;
    const slotFlags = this.slotFlags;
    const first = this.availPos;
    let pos = first;
    let wrap = this.availWrap;
    let firstFlags = 0;
    let lastHead = 0;
    let lastWrap = 0;
    for (let k = 0; k < W1_BATCH; k++) {
      // What the device's used descriptor overwrote: length and id of the chain's first slot.
      d32[(pos << 2) + 2] = this.headLen;
      d16[(pos << 3) + 6] = pos;
      lastHead = pos;
      lastWrap = wrap;
      // §2.8.1: available = AVAIL equal to the driver wrap counter, USED its inverse.
      const avail = wrap === 1 ? VIRTQ_DESC_F_AVAIL : VIRTQ_DESC_F_USED;
      for (let j = 0; j < spc; j++) {
        const flags = slotFlags[j]! | avail;
        if (k === 0 && j === 0) firstFlags = flags;
        else d16[(pos << 3) + 7] = flags;
        if (++pos === W1_QUEUE_SIZE) {
          pos = 0;
          wrap ^= 1;
        }
      }
    }
    this.availPos = pos;
    this.availWrap = wrap;
    if (this.eventIdx) {
      // Notify me when the round's last chain is used (its used descriptor goes in its head slot).
      const offWrap = packOffWrap(lastHead, lastWrap);
      Atomics.store(this.driver32, 0, ((RING_EVENT_FLAGS_DESC << 16) | offWrap) >>> 0);
    }
    // §2.8.21.1: the first descriptor's flags last, with a release store.
    Atomics.store(d16, (first << 3) + 7, firstFlags);
  }

  /**
   * Driver, step 3: the round's first slot holds a used descriptor (§2.8.1: AVAIL and USED
   * both equal to the used wrap counter) for its first chain, or with `collapsed` for its last
   * chain; without `collapsed` the last chain's used descriptor is there too.
   */
  check(): void {
    const spc = this.slotsPerChain;
    const first = this.usedPos;
    const lastOffset = (W1_BATCH - 1) * spc;
    const last = (first + lastOffset) % W1_QUEUE_SIZE;
    const lastWrap = first + lastOffset >= W1_QUEUE_SIZE ? this.usedWrap ^ 1 : this.usedWrap;
    this.expectUsed(first, this.usedWrap, this.collapsed ? last : first);
    if (!this.collapsed) this.expectUsed(last, lastWrap, last);
    let next = first + W1_BATCH * spc;
    let wrap = this.usedWrap;
    while (next >= W1_QUEUE_SIZE) {
      next -= W1_QUEUE_SIZE;
      wrap ^= 1;
    }
    this.usedPos = next;
    this.usedWrap = wrap;
    this.rounds++;
  }

  private expectUsed(slot: number, wrap: number, id: number): void {
    const flags = Atomics.load(this.desc16, (slot << 3) + 7);
    const used = ((flags >>> 7) & 1) === wrap && ((flags >>> 15) & 1) === wrap;
    const gotId = this.desc16[(slot << 3) + 6]!;
    if (!used || gotId !== id) {
      throw new Error(
        `W1 packed: slot ${slot} has flags 0x${flags.toString(16)} id ${gotId}, expected used (wrap ${wrap}) id ${id}`,
      );
    }
  }

  /** The checksum of the first `chains` chains (W1's closed form). */
  expectedChecksum(chains: number): number {
    return expectedChecksum(this.chainLength, chains);
  }
}

/**
 * virtq's W1 device loop on the packed ring: `pop(into)` with one reused chain, the chain's
 * cursor, `addUsed` per chain, one publish and one `prepareKick` per round. It is W1's
 * VirtqW1Device typed on PackedQueue: a class of its own, so that when both run in one process
 * each loop's call sites see one queue class.
 */
export class PackedW1Device {
  readonly ring: PackedW1Ring;
  checksum = 0;
  kicks = 0;
  private readonly queue: PackedQueue;
  private readonly chain = new DescriptorChain();

  constructor(ring: PackedW1Ring) {
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

  private round(): void {
    const q = this.queue;
    const into = this.chain;
    let sum = 0;
    for (let k = 0; k < W1_BATCH; k++) {
      const c = q.pop(into);
      if (c === null) throw new Error('W1 packed: the ring ran dry');
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

// ---- in-order completion ----

/** Either W1 ring, as the in-order device drives it. */
export type AnyW1Ring = W1Ring | PackedW1Ring;

/**
 * W1's device loop with in-order completion (VIRTIO_F_IN_ORDER) on either ring: each chain is
 * recorded with an InOrderCompleter when popped and completed after its walk, and one
 * `flush()` per round publishes the round (collapsed: one used entry through `addUsedBatch`;
 * otherwise `addUsed` per chain) with one `advanceUsedRingIdx`, then `prepareKick`. A process
 * runs it on one ring format only, so its call sites see one queue class.
 */
export class InOrderW1Device {
  readonly ring: AnyW1Ring;
  checksum = 0;
  kicks = 0;
  private readonly queue: SplitQueue | PackedQueue;
  private readonly completer: InOrderCompleter;
  private readonly chain = new DescriptorChain();

  constructor(ring: AnyW1Ring, collapse: boolean) {
    // The packed ring's check must expect what the device writes.
    if (ring instanceof PackedW1Ring && ring.collapsed !== collapse) {
      throw new RangeError('the packed W1 ring must be built with collapsed = collapse');
    }
    this.ring = ring;
    this.queue = ring.createQueue();
    this.completer = new InOrderCompleter(this.queue, collapse);
  }

  run(rounds: number): void {
    const ring = this.ring;
    for (let r = 0; r < rounds; r++) {
      ring.publish();
      this.round();
      ring.check();
    }
  }

  private round(): void {
    const q = this.queue;
    const done = this.completer;
    const into = this.chain;
    let sum = 0;
    for (let k = 0; k < W1_BATCH; k++) {
      const c = q.pop(into);
      if (c === null) throw new Error('W1 in-order: the ring ran dry');
      done.popped(c.head);
      do {
        sum += c.addr + c.len;
      } while (c.advance());
      done.complete(c.head, c.totalLength);
    }
    if (done.flush() !== W1_BATCH) throw new Error('W1 in-order: the round was not published');
    if (q.prepareKick()) this.kicks++;
    this.checksum += sum;
  }
}

/** What {@link verifyW1Variant} needs of a device. */
export interface W1VariantDevice {
  readonly ring: AnyW1Ring;
  readonly checksum: number;
  readonly kicks: number;
}

/**
 * Throws unless a device walked exactly the chains its ring carried (W1's closed form) and
 * was asked to notify once per round, as W1's verifyW1 does for the split ring.
 */
export function verifyW1Variant(device: W1VariantDevice, label: string): void {
  const ring = device.ring;
  const want = ring.expectedChecksum(ring.rounds * W1_BATCH);
  if (device.checksum !== want) {
    throw new Error(
      `${label} L=${ring.chainLength}: checksum ${device.checksum}, expected ${want}`,
    );
  }
  if (device.kicks !== ring.rounds) {
    throw new Error(
      `${label} L=${ring.chainLength}: ${device.kicks} notifications in ${ring.rounds} rounds`,
    );
  }
}
