/**
 * The ids a driver has made available and not yet got back, oldest first: what an in-order
 * driver (VIRTIO_F_IN_ORDER) needs to turn one used entry naming a batch's last buffer into
 * the whole batch. A fixed ring of `capacity` ids, kept in driver-private memory.
 */
export class IdFifo {
  private readonly ids: Uint16Array;
  private first = 0;
  /** Ids held. */
  count = 0;

  constructor(capacity: number) {
    this.ids = new Uint16Array(capacity);
  }

  push(id: number): void {
    this.ids[(this.first + this.count) % this.ids.length] = id;
    this.count++;
  }

  /** The k-th oldest id (0: the oldest). */
  at(k: number): number {
    return this.ids[(this.first + k) % this.ids.length]!;
  }

  /** Position of `id` from the oldest, or -1 when it is not held. */
  indexOf(id: number): number {
    for (let k = 0; k < this.count; k++) if (this.at(k) === id) return k;
    return -1;
  }

  /** Removes and returns the oldest id. */
  shift(): number {
    const id = this.ids[this.first]!;
    this.first = (this.first + 1) % this.ids.length;
    this.count--;
    return id;
  }
}
