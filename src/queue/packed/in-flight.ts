/**
 * The buffers a packed queue has popped and not yet marked used (VIRTIO 1.2 §2.8.6, §2.8.21):
 * per buffer id the ring slots its list took, and the ids in pop order, as a doubly linked list
 * over two arrays of queue size, so that adding, removing any one and finding the oldest are
 * O(1) and allocate nothing.
 */

import { SnapshotError } from '../../errors.js';

const EMPTY16 = new Uint16Array(0);
const EMPTY_I32 = new Int32Array(0);

export class InFlightBuffers {
  /** Per buffer id: ring slots its list took; 0 = not in flight. */
  slotsOf: Uint16Array = EMPTY16;
  /** Buffers in flight. */
  count = 0;
  /** Ring slots they took. */
  slots = 0;
  /** The id popped longest ago (-1: none). */
  oldest = -1;
  private newest = -1;
  private prevId: Int32Array = EMPTY_I32;
  private nextId: Int32Array = EMPTY_I32;

  /** Nothing in flight, for buffer ids below `size`. */
  reset(size: number): void {
    this.slotsOf = size === 0 ? EMPTY16 : new Uint16Array(size);
    this.prevId = size === 0 ? EMPTY_I32 : new Int32Array(size);
    this.nextId = size === 0 ? EMPTY_I32 : new Int32Array(size);
    this.oldest = -1;
    this.newest = -1;
    this.count = 0;
    this.slots = 0;
  }

  /** True when buffer `id` is in flight. */
  has(id: number): boolean {
    return id >= 0 && id < this.slotsOf.length && this.slotsOf[id] !== 0;
  }

  /** Buffer `id` (not in flight) goes in flight, newest, taking `slots` ring slots. */
  add(id: number, slots: number): void {
    this.slotsOf[id] = slots;
    this.slots += slots;
    this.count++;
    this.prevId[id] = this.newest;
    this.nextId[id] = -1;
    if (this.newest >= 0) this.nextId[this.newest] = id;
    else this.oldest = id;
    this.newest = id;
  }

  /** Buffer `id` (in flight) leaves; returns the ring slots it took. */
  remove(id: number): number {
    const p = this.prevId[id]!;
    const n = this.nextId[id]!;
    if (p >= 0) this.nextId[p] = n;
    else this.oldest = n;
    if (n >= 0) this.prevId[n] = p;
    else this.newest = p;
    const slots = this.slotsOf[id]!;
    this.slots -= slots;
    this.count--;
    this.slotsOf[id] = 0;
    return slots;
  }

  /** The id of the `k`-th oldest buffer (0: the oldest); `k` below {@link count}. */
  nth(k: number): number {
    let id = this.oldest;
    for (let j = 0; j < k; j++) id = this.nextId[id]!;
    return id;
  }

  /** [id, slots] of every buffer, oldest first (allocates; snapshots and diagnostics). */
  entries(): [number, number][] {
    const out: [number, number][] = [];
    for (let id = this.oldest; id >= 0; id = this.nextId[id]!) out.push([id, this.slotsOf[id]!]);
    return out;
  }

  /**
   * Puts saved `entries` ([id, slots], oldest first) in flight on a ring of `size` slots,
   * checking each: an id below `size`, at most once, 1 to `size` slots, no more than `size`
   * slots in all. Throws {@link SnapshotError} naming the entry under `field`.
   */
  restore(entries: readonly unknown[], size: number, field: string): void {
    let total = 0;
    for (let k = 0; k < entries.length; k++) {
      const at = `${field}.${k}`;
      const e = entries[k];
      if (!Array.isArray(e) || e.length !== 2) throw new SnapshotError(at, 'is not [id, slots]');
      const [id, slots] = e as unknown[];
      if (typeof id !== 'number' || !Number.isInteger(id) || id < 0 || id >= size) {
        throw new SnapshotError(at, `id ${String(id)} is not below ${size}`);
      }
      if (typeof slots !== 'number' || !Number.isInteger(slots) || slots < 1 || slots > size) {
        throw new SnapshotError(at, `slot count ${String(slots)} is not in 1..${size}`);
      }
      if (this.slotsOf[id] !== 0) throw new SnapshotError(at, `id ${id} appears twice`);
      total += slots;
      if (total > size) throw new SnapshotError(at, `buffers in flight take over ${size} slots`);
      this.add(id, slots);
    }
  }
}
