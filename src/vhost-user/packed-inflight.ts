/**
 * One packed ring's region of the inflight buffer (QEMU docs/interop/vhost-user.rst, "Inflight
 * I/O tracking", `QueueRegionPacked`), laid out as DPDK's vhost library lays it out.
 *
 * A packed ring keeps no used index in guest memory, and the device overwrites ring slots with
 * used descriptors out of order, so the region keeps more than the split one: a copy of every
 * ring descriptor of each buffer in flight (so it can be served again even after its slots were
 * overwritten), the device's used position and wrap counter, and "old" copies of the list head
 * and position that a completed batch commits at once, so that a crash mid-batch rolls back or
 * forward cleanly.
 *
 * Header (little-endian): `features` u64, `version` u16, `desc_num` u16, `free_head` u16,
 * `old_free_head` u16, `used_idx` u16, `old_used_idx` u16, `used_wrap_counter` u8,
 * `old_used_wrap_counter` u8, 7 bytes of padding; the entries start at byte 32 (the C struct's
 * alignment). Entry (32 bytes): `inflight` u8, padding u8, `next` u16, `last` u16, `num` u16,
 * `counter` u64, `id` u16, `flags` u16, `len` u32, `addr` u64.
 *
 * Entries form a free list through `next`. A popped buffer takes one entry per ring descriptor
 * from the free list; its first entry (the head) records `counter`, `num` (descriptors) and
 * `last` (its last entry) and is marked in flight. A completed buffer's entries go back to the
 * free list when its batch is published. Everything read back is checked: the region is memory
 * the front-end can write, and a crash can leave it half-updated.
 */
import type { Logger } from '../queue/logger.js';
import type { PackedQueueTracker, RedeliveredBuffer } from '../queue/packed/tracked.js';

const HEADER_BYTES = 32;
const ENTRY_BYTES = 32;
const REGION_ALIGN = 64;
const VERSION = 1;

// Header offsets.
const O_VERSION = 8;
const O_DESC_NUM = 10;
const O_FREE_HEAD = 12;
const O_OLD_FREE_HEAD = 14;
const O_USED_IDX = 16;
const O_OLD_USED_IDX = 18;
const O_USED_WRAP = 20;
const O_OLD_USED_WRAP = 21;
// Entry offsets.
const E_INFLIGHT = 0;
const E_NEXT = 2;
const E_LAST = 4;
const E_NUM = 6;
const E_COUNTER = 8;
const E_ID = 16;
const E_FLAGS = 18;
const E_LEN = 20;
const E_ADDR = 24;

const TWO_32 = 2 ** 32;
/** The AVAIL (bit 7) and USED (bit 15) flags of a packed descriptor. */
const AVAIL_BIT = 1 << 7;
const USED_BIT = 1 << 15;

/** Bytes of one packed queue's region for rings of up to `queueSize` descriptors. */
export function packedInflightRegionBytes(queueSize: number): number {
  const raw = HEADER_BYTES + ENTRY_BYTES * queueSize;
  return Math.ceil(raw / REGION_ALIGN) * REGION_ALIGN;
}

/** Where a packed ring resumes, and the buffers it serves again first (oldest first). */
export interface PackedInflightResume {
  /** The next used slot and its wrap counter (the device's, as the region committed them). */
  readonly nextUsed: number;
  readonly usedWrap: boolean;
  /** The next slot to read, past every ring slot of the buffers still in flight. */
  readonly nextAvail: number;
  readonly availWrap: boolean;
  readonly buffers: readonly RedeliveredBuffer[];
}

/** One packed ring's region; it records as the ring runs ({@link PackedQueueTracker}). */
export class PackedInflight implements PackedQueueTracker {
  private readonly view: DataView;
  private readonly bytes: Uint8Array;
  /** Entries in the region (`desc_num`): the largest ring it can track. */
  readonly descNum: number;
  /** Where the region lives (to hand it to another thread). */
  readonly buffer: SharedArrayBuffer;
  readonly offset: number;
  private counter = 0;
  /** The head entry of each buffer id in flight (-1: none). */
  private headOf: Int32Array;
  /** Head entries of buffers marked used and not yet published. */
  private readonly completed: number[] = [];

  constructor(buffer: SharedArrayBuffer, offset: number, descNum: number) {
    const length = HEADER_BYTES + ENTRY_BYTES * descNum;
    this.view = new DataView(buffer, offset, length);
    this.bytes = new Uint8Array(buffer, offset, length);
    this.descNum = descNum;
    this.buffer = buffer;
    this.offset = offset;
    this.headOf = new Int32Array(descNum).fill(-1);
  }

  private u16(at: number): number {
    return this.view.getUint16(at, true);
  }

  private setU16(at: number, v: number): void {
    this.view.setUint16(at, v, true);
  }

  private entry(i: number): number {
    return HEADER_BYTES + i * ENTRY_BYTES;
  }

  /** A fresh region: every entry free, in order; the ring at slot 0 with wrap counter 1. */
  private initialise(usedIdx: number, usedWrap: boolean): void {
    const n = this.descNum;
    this.bytes.fill(0);
    this.setU16(O_VERSION, VERSION);
    this.setU16(O_DESC_NUM, n);
    for (let i = 0; i < n; i++) this.setU16(this.entry(i) + E_NEXT, i + 1 < n ? i + 1 : n);
    this.setU16(O_FREE_HEAD, 0);
    this.setU16(O_OLD_FREE_HEAD, 0);
    this.commitPosition(usedIdx, usedWrap);
    this.counter = 0;
    this.headOf.fill(-1);
    this.completed.length = 0;
  }

  private commitPosition(usedIdx: number, usedWrap: boolean): void {
    this.setU16(O_USED_IDX, usedIdx);
    this.setU16(O_OLD_USED_IDX, usedIdx);
    this.bytes[O_USED_WRAP] = usedWrap ? 1 : 0;
    this.bytes[O_OLD_USED_WRAP] = usedWrap ? 1 : 0;
  }

  /**
   * Prepares the region for a ring of `ringSize` slots, following "When reconnecting". A
   * region never used (or of another shape) is initialised at the front-end's position
   * (`usedIdx`, `usedWrap`) and `'fresh'` returned: the ring starts where VRING_BASE says. A used
   * one has its last batch committed or rolled back (`slotFlags(slot)` reads a ring slot's
   * flags to tell whether the batch reached the driver) and returns the buffers still in flight,
   * oldest first, and the positions to resume at. A region that does not hold together is
   * reported to `logger`, started afresh, and `'unrecoverable'` returned: the ring's position
   * and its buffers in flight are unknown.
   */
  resume(
    ringSize: number,
    usedIdx: number,
    usedWrap: boolean,
    slotFlags: (slot: number) => number,
    logger: Logger,
  ): PackedInflightResume | 'fresh' | 'unrecoverable' {
    const n = this.descNum;
    if (this.u16(O_VERSION) !== VERSION || this.u16(O_DESC_NUM) !== n || ringSize > n) {
      if (this.u16(O_VERSION) !== 0) {
        logger.warn(
          'vhost-user: packed inflight region of unknown version or size; starting afresh',
          {
            version: this.u16(O_VERSION),
            descNum: this.u16(O_DESC_NUM),
            ringSize,
          },
        );
      }
      this.initialise(usedIdx, usedWrap);
      return 'fresh';
    }
    const found = this.recover(ringSize, slotFlags);
    if (typeof found === 'string') {
      logger.warn('vhost-user: packed inflight region is inconsistent; starting afresh', {
        reason: found,
      });
      this.initialise(usedIdx, usedWrap);
      return 'unrecoverable';
    }
    return found;
  }

  private recover(
    ringSize: number,
    slotFlags: (slot: number) => number,
  ): PackedInflightResume | string {
    const n = this.descNum;
    const v = this.view;
    let used = this.u16(O_USED_IDX);
    let wrap = this.bytes[O_USED_WRAP]!;
    const oldUsed = this.u16(O_OLD_USED_IDX);
    const oldWrap = this.bytes[O_OLD_USED_WRAP]!;
    if (used >= ringSize || oldUsed >= ringSize || wrap > 1 || oldWrap > 1) {
      return 'used position outside the ring';
    }
    if (used !== oldUsed || wrap !== oldWrap) {
      // A batch was being published. If the slot at the old position no longer holds an
      // available descriptor of that lap, the driver saw the batch: commit it; else roll back.
      const flags = slotFlags(oldUsed) & (AVAIL_BIT | USED_BIT);
      const available = oldWrap === 1 ? AVAIL_BIT : USED_BIT;
      if (flags !== available) {
        this.setU16(O_OLD_FREE_HEAD, this.u16(O_FREE_HEAD));
        this.setU16(O_OLD_USED_IDX, used);
        this.bytes[O_OLD_USED_WRAP] = wrap;
      }
    }
    // Roll back whatever was under way: the old values are the committed ones.
    const freeHead = this.u16(O_OLD_FREE_HEAD);
    used = this.u16(O_OLD_USED_IDX);
    wrap = this.bytes[O_OLD_USED_WRAP]!;
    this.setU16(O_FREE_HEAD, freeHead);
    this.setU16(O_USED_IDX, used);
    this.bytes[O_USED_WRAP] = wrap;

    // Entries on the free list are not in flight, whatever their flag says.
    const onFreeList = new Uint8Array(n);
    let steps = 0;
    for (let i = freeHead; i < n; i = this.u16(this.entry(i) + E_NEXT)) {
      if (onFreeList[i] === 1 || ++steps > n) return 'free list loops';
      onFreeList[i] = 1;
      this.bytes[this.entry(i) + E_INFLIGHT] = 0;
    }

    // The buffers in flight, each a list of `num` entries from its head to `last`.
    const owner = new Uint8Array(n);
    const heads: { head: number; counter: number }[] = [];
    let slots = 0;
    let maxCounter = -1;
    for (let h = 0; h < n; h++) {
      const at = this.entry(h);
      if (this.bytes[at + E_INFLIGHT] === 0) continue;
      const num = this.u16(at + E_NUM);
      if (num < 1 || num > ringSize) return `entry ${h}: ${num} descriptors`;
      let e = h;
      for (let k = 0; k < num; k++) {
        if (e >= n || onFreeList[e] === 1 || owner[e] === 1) return `entry ${h}: bad list`;
        owner[e] = 1;
        if (k + 1 < num) e = this.u16(this.entry(e) + E_NEXT);
      }
      if (e !== this.u16(at + E_LAST)) return `entry ${h}: last is not the list's end`;
      const counter =
        v.getUint32(at + E_COUNTER, true) + v.getUint32(at + E_COUNTER + 4, true) * TWO_32;
      heads.push({ head: h, counter });
      if (counter > maxCounter) maxCounter = counter;
      slots += num;
    }
    if (slots > ringSize) return `${slots} ring slots in flight in a ring of ${ringSize}`;
    heads.sort((a, b) => a.counter - b.counter);

    const buffers: RedeliveredBuffer[] = [];
    const ids = new Uint8Array(ringSize);
    for (const { head } of heads) {
      const descs: number[] = [];
      let e = head;
      const num = this.u16(this.entry(head) + E_NUM);
      let id = 0;
      for (let k = 0; k < num; k++) {
        const at = this.entry(e);
        id = this.u16(at + E_ID);
        descs.push(
          v.getUint32(at + E_ADDR, true),
          v.getUint32(at + E_ADDR + 4, true),
          v.getUint32(at + E_LEN, true),
          this.u16(at + E_FLAGS),
          id,
        );
        e = this.u16(at + E_NEXT);
      }
      // §2.8.6: the buffer id is the one in the list's last descriptor.
      if (id >= ringSize || ids[id] === 1) return `buffer id ${id} in flight twice or out of range`;
      ids[id] = 1;
      this.headOf[id] = head;
      buffers.push({ id, descriptors: descs });
    }
    this.counter = maxCounter + 1;
    this.completed.length = 0;
    let nextAvail = used + slots;
    let availWrap = wrap === 1;
    if (nextAvail >= ringSize) {
      nextAvail -= ringSize;
      availWrap = !availWrap;
    }
    return { nextUsed: used, usedWrap: wrap === 1, nextAvail, availWrap, buffers };
  }

  // ---- recording ("When receiving available buffers from the driver", and after) ----

  popped(id: number, ring: Uint32Array, first: number, count: number, ringSize: number): void {
    const n = this.descNum;
    const head = this.u16(O_OLD_FREE_HEAD);
    if (id >= n || head >= n) return;
    let free = this.u16(O_FREE_HEAD);
    const h = this.entry(head);
    this.setU16(h + E_NUM, 0);
    const c = this.counter++;
    this.view.setUint32(h + E_COUNTER, c % TWO_32, true);
    this.view.setUint32(h + E_COUNTER + 4, Math.floor(c / TWO_32), true);
    this.bytes[h + E_INFLIGHT] = 1;
    let slot = first;
    for (let k = 0; k < count; k++) {
      if (free >= n) return; // cannot happen with desc_num >= ring size; never write outside
      const at = this.entry(free);
      const w = slot << 2;
      this.view.setUint32(at + E_ADDR, ring[w]!, true);
      this.view.setUint32(at + E_ADDR + 4, ring[w + 1]!, true);
      this.view.setUint32(at + E_LEN, ring[w + 2]!, true);
      const idFlags = ring[w + 3]!;
      this.setU16(at + E_ID, idFlags & 0xffff);
      this.setU16(at + E_FLAGS, idFlags >>> 16);
      this.setU16(h + E_NUM, k + 1);
      if (k + 1 === count) this.setU16(h + E_LAST, free);
      free = this.u16(at + E_NEXT);
      this.setU16(O_FREE_HEAD, free);
      slot = slot + 1 === ringSize ? 0 : slot + 1;
    }
    // The buffer is recorded whole: commit the list head.
    this.setU16(O_OLD_FREE_HEAD, free);
    this.headOf[id] = head;
  }

  unpopped(id: number): void {
    if (id < 0 || id >= this.descNum) return;
    const head = this.headOf[id]!;
    if (head < 0) return;
    this.headOf[id] = -1;
    this.counter--;
    // Its entries go back to the front of the free list, committed at once; the flag is cleared
    // last, so a crash in between leaves a free entry marked in flight, which recovery clears.
    const last = this.u16(this.entry(head) + E_LAST);
    if (last < this.descNum) {
      this.setU16(this.entry(last) + E_NEXT, this.u16(O_FREE_HEAD));
      this.setU16(O_FREE_HEAD, head);
      this.setU16(O_OLD_FREE_HEAD, head);
    }
    this.bytes[this.entry(head) + E_INFLIGHT] = 0;
  }

  used(id: number): void {
    if (id >= this.descNum) return;
    const head = this.headOf[id]!;
    if (head < 0) return;
    this.headOf[id] = -1;
    this.completed.push(head);
  }

  publishing(nextUsed: number, usedWrap: boolean): void {
    // "When supplying used buffers": each completed buffer's entries go back to the free list,
    // then the new used position; all of it is rolled back unless the driver saw the batch.
    for (const head of this.completed) {
      const last = this.u16(this.entry(head) + E_LAST);
      if (last >= this.descNum) continue;
      this.setU16(this.entry(last) + E_NEXT, this.u16(O_FREE_HEAD));
      this.setU16(O_FREE_HEAD, head);
    }
    this.setU16(O_USED_IDX, nextUsed);
    this.bytes[O_USED_WRAP] = usedWrap ? 1 : 0;
  }

  published(): void {
    for (const head of this.completed) this.bytes[this.entry(head) + E_INFLIGHT] = 0;
    this.completed.length = 0;
    this.setU16(O_OLD_FREE_HEAD, this.u16(O_FREE_HEAD));
    this.setU16(O_OLD_USED_IDX, this.u16(O_USED_IDX));
    this.bytes[O_OLD_USED_WRAP] = this.bytes[O_USED_WRAP]!;
  }

  /** Buffer ids in flight as the region records them (for tests and diagnostics). */
  inflightIds(): number[] {
    const out: number[] = [];
    for (let id = 0; id < this.descNum; id++) if (this.headOf[id]! >= 0) out.push(id);
    return out;
  }
}
