/** What {@link InOrderCompleter} needs from a queue. */
export interface InOrderTarget {
  readonly size: number;
  addUsed(id: number, len: number): void;
  addUsedBatch(count: number, lastId: number, lastLen: number): void;
  advanceUsedRingIdx(): void;
}

/**
 * Publishes completions in the order their chains were popped, whatever order the device
 * finishes them in (VIRTIO_F_IN_ORDER: "a device MUST use buffers in the same order in which
 * they have been available", VIRTIO 1.2 §6).
 *
 * Call {@link popped} for each chain as it is popped and {@link complete} when the device is
 * done with it; {@link flush} then publishes the longest completed prefix and keeps the rest
 * back. With `collapse` (the default when the queue negotiated IN_ORDER) the prefix becomes a
 * single used entry for its last chain (§2.7.9, §2.8.21), so the lengths of the other chains
 * in the batch are not reported: use it where the driver does not need them (transmit queues,
 * block requests whose status is in the buffer), not for receive queues.
 */
export class InOrderCompleter {
  private readonly ids: Uint16Array;
  private readonly lens: Uint32Array;
  private readonly done: Uint8Array;
  /** Position in the pending ring of each id in flight, or -1. */
  private readonly posOf: Int32Array;
  private first = 0;
  private count = 0;

  constructor(
    private readonly queue: InOrderTarget,
    private readonly collapse = true,
  ) {
    const n = queue.size;
    this.ids = new Uint16Array(n);
    this.lens = new Uint32Array(n);
    this.done = new Uint8Array(n);
    this.posOf = new Int32Array(n).fill(-1);
  }

  /** Chains popped and not yet published. */
  get pending(): number {
    return this.count;
  }

  /** Records that the chain with this id was popped (in pop order). */
  popped(id: number): void {
    const n = this.ids.length;
    if (!(id >= 0 && id < n)) throw new RangeError(`id ${id} is outside a queue of ${n}`);
    if (this.posOf[id] !== -1) throw new RangeError(`id ${id} is already pending`);
    if (this.count === n) throw new RangeError('more chains pending than the queue holds');
    const p = (this.first + this.count) % n;
    this.ids[p] = id;
    this.lens[p] = 0;
    this.done[p] = 0;
    this.posOf[id] = p;
    this.count++;
  }

  /** Records that the device finished chain `id`, having written `len` bytes. */
  complete(id: number, len: number): void {
    const p = id >= 0 && id < this.posOf.length ? this.posOf[id]! : -1;
    if (p < 0) throw new RangeError(`id ${id} is not pending`);
    if (this.done[p] === 1) throw new RangeError(`id ${id} was already completed`);
    this.lens[p] = len;
    this.done[p] = 1;
  }

  /**
   * Adds the used entries of the longest completed prefix and publishes them with one
   * `advanceUsedRingIdx`. Returns how many chains were published (0: nothing was written).
   */
  flush(): number {
    const n = this.ids.length;
    let k = 0;
    while (k < this.count && this.done[(this.first + k) % n] === 1) k++;
    if (k === 0) return 0;
    if (this.collapse) {
      const last = (this.first + k - 1) % n;
      this.queue.addUsedBatch(k, this.ids[last]!, this.lens[last]!);
    } else {
      for (let j = 0; j < k; j++) {
        const p = (this.first + j) % n;
        this.queue.addUsed(this.ids[p]!, this.lens[p]!);
      }
    }
    for (let j = 0; j < k; j++) this.posOf[this.ids[(this.first + j) % n]!] = -1;
    this.first = (this.first + k) % n;
    this.count -= k;
    this.queue.advanceUsedRingIdx();
    return k;
  }

  /** Forgets everything pending (after a device reset). */
  clear(): void {
    this.posOf.fill(-1);
    this.first = 0;
    this.count = 0;
  }
}
