/** First-fit allocator over one guest range, with frees that merge neighbours. */
export class Arena {
  /** Free ranges as [start, end) pairs, sorted, never adjacent. */
  private free: number[];

  constructor(
    readonly start: number,
    readonly end: number,
  ) {
    this.free = [start, end];
  }

  alloc(size: number): number {
    const n = Math.ceil(size / 16) * 16;
    const f = this.free;
    for (let i = 0; i < f.length; i += 2) {
      const s = f[i]!;
      if (f[i + 1]! - s >= n) {
        if (f[i + 1]! - s === n) f.splice(i, 2);
        else f[i] = s + n;
        return s;
      }
    }
    throw new RangeError(
      `block driver: no ${n} bytes free for a request (arena of ${this.end - this.start})`,
    );
  }

  get size(): number {
    return this.end - this.start;
  }

  canAlloc(size: number): boolean {
    const n = Math.ceil(size / 16) * 16;
    const f = this.free;
    for (let i = 0; i < f.length; i += 2) if (f[i + 1]! - f[i]! >= n) return true;
    return false;
  }

  release(addr: number, size: number): void {
    const n = Math.ceil(size / 16) * 16;
    const f = this.free;
    let i = 0;
    while (i < f.length && f[i]! < addr) i += 2;
    const prevEnd = i > 0 ? f[i - 1]! : -1;
    const nextStart = i < f.length ? f[i]! : -1;
    if (prevEnd === addr && nextStart === addr + n) {
      f[i - 1] = f[i + 1]!;
      f.splice(i, 2);
    } else if (prevEnd === addr) {
      f[i - 1] = addr + n;
    } else if (nextStart === addr + n) {
      f[i] = addr;
    } else {
      f.splice(i, 0, addr, addr + n);
    }
  }

  reset(): void {
    this.free = [this.start, this.end];
  }
}
