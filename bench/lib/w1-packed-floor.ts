/**
 * The floor of W1 on a packed ring (bench/lib/w1-variants.ts's `PackedW1Ring`), in JavaScript:
 * the smallest device loop that still owes a hostile driver what `PackedQueue` owes it, written
 * with no library, as bench/lib/w1-floor.ts is for the split ring. Set beside that split
 * floor, it shows what the packed format itself costs the engine, whoever writes the device.
 *
 * Per buffer it does what `PackedQueue.pop` + walk + `addUsed` guarantee:
 * - the head's flags read with an acquire load (`Atomics.load`), once per buffer: the driver
 *   release-stores each head's flags, and only that load orders the reads of the list after it
 *   (§2.8.21.3); AVAIL must equal the driver wrap counter and USED must not (§2.8.1);
 * - the list takes at most the ring slots not in flight (§2.8.17), every buffer lies in guest
 *   memory (the one region: address high word 0, address + length inside it), no indirect
 *   descriptor (not negotiated), and the total length fits in 32 bits;
 * - the buffer id (in the list's last descriptor) is below the size and not already in flight
 *   (§2.8.21.1), and the ring slots it took are kept per id;
 * - the descriptors are copied out once (address, length, flags);
 * - a used descriptor per buffer (length, id, then flags, §2.8.9) at the used position, which
 *   moves past the buffer's ring slots; the first one of the round gets its flags last, with a
 *   release store; then the notification decision from the driver's event suppression
 *   structure (ENABLE, DISABLE, or DESC with EVENT_IDX: the named slot among those just used).
 * What it leaves out is what a library adds around that: typed errors, indirect tables, the
 * pop order of buffers in flight (in-order completion, snapshots), undoing a pop, multiple
 * regions, dirty tracking.
 */

import { W1_BATCH, W1_QUEUE_SIZE } from './w1.js';
import { floorViews } from './w1-floor.js';
import { type PackedW1Ring, W1_PACKED_LAYOUT } from './w1-variants.js';

const NEXT = 1;
const WRITE = 2;
const INDIRECT = 4;
/** AVAIL (bit 7) and USED (bit 15) of a descriptor's flags. */
const AVAIL_USED = 0x8080;
/** Flags of an event suppression structure: 0 enable, 1 disable, 2 descriptor-specific. */
const EVENT_DISABLE = 1;
const EVENT_DESC = 2;

export class PackedFloorW1Device {
  readonly ring: PackedW1Ring;
  checksum = 0;
  kicks = 0;
  private readonly u16: Uint16Array;
  private readonly u32: Uint32Array;
  private readonly memBytes: number;
  private readonly eventIdx: boolean;
  private nextAvail = 0;
  private availWrap = 1;
  private nextUsed = 0;
  private usedWrap = 1;
  /** Ring slots marked used since the last notification decision. */
  private usedSince = 0;
  /** Per buffer id: ring slots its list took; 0 when not in flight. */
  private readonly slotsOf = new Uint16Array(W1_QUEUE_SIZE);
  private slotsInFlight = 0;
  /** The copied list of the buffer popped last (reused): address, length, flags. */
  private readonly addrs = new Float64Array(W1_QUEUE_SIZE);
  private readonly lens = new Uint32Array(W1_QUEUE_SIZE);
  private readonly flags = new Uint16Array(W1_QUEUE_SIZE);
  private count = 0;
  /** Slot of the round's first used descriptor (-1: none yet) and the flags it gets last. */
  private firstUsed = -1;
  private firstFlags = 0;

  constructor(ring: PackedW1Ring) {
    this.ring = ring;
    if (ring.indirect || ring.collapsed) {
      throw new RangeError('the packed floor loop serves direct lists, completed one by one');
    }
    ({ u16: this.u16, u32: this.u32, bytes: this.memBytes } = floorViews(ring.memory));
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

  /** Takes the list at the available position into the copy; its buffer id, or -1 if none. */
  private pop(): number {
    const u16 = this.u16;
    const u32 = this.u32;
    const size = W1_QUEUE_SIZE;
    const wrap = this.availWrap;
    let slot = this.nextAvail;
    let f = Atomics.load(u16, (slot << 3) + 7);
    if (((f >>> 7) & 1) !== wrap || ((f >>> 15) & 1) === wrap) return -1;
    const free = size - this.slotsInFlight;
    let n = 0;
    let total = 0;
    for (;;) {
      if (n === free) throw new RangeError('list longer than the free ring slots');
      if ((f & INDIRECT) !== 0) throw new RangeError('indirect descriptors not negotiated');
      const w = slot << 2;
      const addr = u32[w]!;
      const high = u32[w + 1]!;
      const len = u32[w + 2]!;
      if (high !== 0 || addr + len > this.memBytes) throw new RangeError('buffer outside memory');
      total += len;
      if (total > 0xffffffff) throw new RangeError('list length overflows 32 bits');
      this.addrs[n] = addr;
      this.lens[n] = len;
      this.flags[n] = f;
      n++;
      if ((f & NEXT) === 0) break;
      slot = slot + 1 === size ? 0 : slot + 1;
      f = u16[(slot << 3) + 7]!;
    }
    const id = u16[(slot << 3) + 6]!;
    if (id >= size || this.slotsOf[id] !== 0) throw new RangeError('bad buffer id');
    this.slotsOf[id] = n;
    this.slotsInFlight += n;
    let next = this.nextAvail + n;
    if (next >= size) {
      next -= size;
      this.availWrap ^= 1;
    }
    this.nextAvail = next;
    this.count = n;
    return id;
  }

  /** A used descriptor for buffer `id` with `len` bytes written. */
  private addUsed(id: number, len: number): void {
    const slots = this.slotsOf[id]!;
    if (slots === 0) throw new RangeError('buffer not in flight');
    this.slotsOf[id] = 0;
    this.slotsInFlight -= slots;
    const slot = this.nextUsed;
    const flags = (this.usedWrap === 1 ? AVAIL_USED : 0) | (len > 0 ? WRITE : 0);
    this.u32[(slot << 2) + 2] = len;
    this.u16[(slot << 3) + 6] = id;
    if (this.firstUsed < 0) {
      this.firstUsed = slot;
      this.firstFlags = flags;
    } else {
      this.u16[(slot << 3) + 7] = flags;
    }
    let next = slot + slots;
    if (next >= W1_QUEUE_SIZE) {
      next -= W1_QUEUE_SIZE;
      this.usedWrap ^= 1;
    }
    this.nextUsed = next;
    this.usedSince += slots;
  }

  private round(): void {
    let sum = 0;
    for (let k = 0; k < W1_BATCH; k++) {
      const id = this.pop();
      if (id < 0) throw new Error('W1 packed floor: the ring ran dry');
      const n = this.count;
      let total = 0;
      for (let d = 0; d < n; d++) {
        // The walk sees only the copy.
        const len = this.lens[d]!;
        sum += this.addrs[d]! + len;
        total += len;
      }
      this.addUsed(id, total);
    }
    Atomics.store(this.u16, (this.firstUsed << 3) + 7, this.firstFlags);
    this.firstUsed = -1;
    const event = Atomics.load(this.u32, W1_PACKED_LAYOUT.driver >>> 2);
    const mode = event >>> 16;
    const added = this.usedSince;
    this.usedSince = 0;
    let notify = mode !== EVENT_DISABLE;
    if (mode === EVENT_DESC && this.eventIdx) {
      // Positions on a circle of two laps (wrap 1 first): is the named slot among the last
      // `added` ones used?
      const lap = 2 * W1_QUEUE_SIZE;
      const named = (event & 0x7fff) + ((event >>> 15) & 1 ? 0 : W1_QUEUE_SIZE);
      const now = this.nextUsed + (this.usedWrap === 1 ? 0 : W1_QUEUE_SIZE);
      const d = (now - named + lap) % lap;
      notify = added >= lap || (d >= 1 && d <= added);
    }
    if (notify) this.kicks++;
    this.checksum += sum;
  }
}
