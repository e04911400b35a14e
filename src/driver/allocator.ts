import type { GuestMemory } from '../memory/guest-memory.js';

/**
 * Hands out guest-physical ranges from [start, end) for a simulated driver's rings and
 * buffers: a bump allocator with alignment, and `reset()` to start over. Every range it
 * returns lies inside guest memory.
 */
export class GuestAllocator {
  private next: number;

  constructor(
    readonly memory: GuestMemory,
    readonly start: number,
    readonly end: number,
  ) {
    if (!memory.isValidRange(start, end - start)) {
      throw new RangeError(`allocator range [${start}, ${end}) is not inside one memory region`);
    }
    this.next = start;
  }

  /** `size` bytes aligned to `align` (a power of two). */
  alloc(size: number, align = 16): number {
    const at = Math.ceil(this.next / align) * align;
    if (!(size >= 0) || size > this.end - at) {
      throw new RangeError(`guest allocator: ${size} bytes do not fit (${this.end - at} left)`);
    }
    this.next = at + size;
    return at;
  }

  /** Bytes still free. */
  get free(): number {
    return this.end - this.next;
  }

  reset(): void {
    this.next = this.start;
  }
}
