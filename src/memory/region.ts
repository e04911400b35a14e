import { assertLittleEndianHost } from './endian.js';

assertLittleEndianHost();

/** Size of the pages the dirty bitmap tracks. */
export const DIRTY_PAGE_SIZE = 4096;
const PAGE_SHIFT_DIVISOR = DIRTY_PAGE_SIZE;

/** Where a region's bytes live. */
export interface RegionSpec {
  /** Guest-physical address of the first byte. */
  base: number;
  /** Number of bytes. */
  length: number;
  /** Backing store: an ArrayBuffer, or a SharedArrayBuffer when other agents share it. */
  buffer: ArrayBufferLike;
  /** Byte offset of the region's first byte inside `buffer` (default 0). */
  offset?: number;
}

/**
 * One contiguous range of guest-physical memory, [base, end), backed by part of a buffer.
 *
 * Base and buffer offset are both multiples of 8 so that every naturally aligned guest field
 * maps to a naturally aligned typed-array element (needed for `Atomics`).
 */
export class GuestRegion {
  readonly base: number;
  readonly length: number;
  /** base + length: the first address past the region. */
  readonly end: number;
  readonly buffer: ArrayBufferLike;
  readonly offset: number;
  /** {@link buffer} is a SharedArrayBuffer (see `copyRangeAt`). */
  readonly shared: boolean;
  /** The region's bytes. Index 0 is guest address `base`. */
  readonly bytes: Uint8Array;
  /** Little-endian access to the region's bytes; offset 0 is guest address `base`. */
  readonly view: DataView;
  /**
   * The region's whole 4-byte words, in the host's order (little-endian, checked at load):
   * word `k` is bytes `[4k, 4k + 4)`. For word-at-a-time copies of aligned ranges.
   */
  readonly words: Int32Array;
  /** Guest-physical page number of the first page the region touches. */
  readonly firstPage: number;
  /**
   * One bit per guest page the region touches, set when the device writes to it while dirty
   * tracking is on (see {@link tracking}).
   */
  readonly dirty: Int32Array;
  /**
   * Word 0 is 1 while writes are recorded in {@link dirty}, 0 (the default) while they are not.
   * It lives in the same buffer as the bitmap, just after it, so every thread that shares the
   * region shares the switch.
   */
  readonly tracking: Int32Array;

  constructor(spec: RegionSpec, dirtyBuffer?: ArrayBufferLike) {
    const { base, length, buffer } = spec;
    const offset = spec.offset ?? 0;
    if (!Number.isSafeInteger(base) || base < 0) {
      throw new RangeError(`region base ${base} is not a non-negative safe integer`);
    }
    if (!Number.isSafeInteger(length) || length <= 0) {
      throw new RangeError(`region length ${length} must be a positive safe integer`);
    }
    if (length > Number.MAX_SAFE_INTEGER - base) {
      throw new RangeError(`region [${base}, +${length}) ends beyond 2^53 - 1`);
    }
    if (!(buffer instanceof ArrayBuffer || isSharedArrayBuffer(buffer))) {
      throw new TypeError('region buffer must be an ArrayBuffer or SharedArrayBuffer');
    }
    if ((buffer as { resizable?: boolean }).resizable === true) {
      // Shrinking it would take memory from under the device's views mid-chain.
      throw new TypeError('region buffer must not be a resizable ArrayBuffer (it could shrink)');
    }
    if (!Number.isSafeInteger(offset) || offset < 0) {
      throw new RangeError(`region offset ${offset} is not a non-negative integer`);
    }
    if (base % 8 !== 0 || offset % 8 !== 0) {
      throw new RangeError('region base and buffer offset must be multiples of 8');
    }
    if (offset > buffer.byteLength || length > buffer.byteLength - offset) {
      throw new RangeError(
        `region needs bytes [${offset}, ${offset + length}) but its buffer has ${buffer.byteLength}`,
      );
    }
    this.base = base;
    this.length = length;
    this.end = base + length;
    this.buffer = buffer;
    this.offset = offset;
    this.bytes = new Uint8Array(buffer, offset, length);
    this.view = new DataView(buffer, offset, length);
    this.words = new Int32Array(buffer, offset, Math.floor(length / 4));
    this.shared = isSharedArrayBuffer(buffer);
    this.firstPage = Math.floor(base / PAGE_SHIFT_DIVISOR);
    const pages = Math.floor((this.end - 1) / PAGE_SHIFT_DIVISOR) - this.firstPage + 1;
    const words = Math.ceil(pages / 32);
    // The bitmap, then the tracking switch.
    const bytes = (words + 1) * 4;
    let store: ArrayBufferLike;
    if (dirtyBuffer !== undefined) {
      if (dirtyBuffer.byteLength !== bytes) {
        throw new RangeError(
          `dirty bitmap needs ${bytes} bytes (${words} words and the switch), got ${dirtyBuffer.byteLength}`,
        );
      }
      store = dirtyBuffer;
    } else {
      store = isSharedArrayBuffer(buffer) ? new SharedArrayBuffer(bytes) : new ArrayBuffer(bytes);
    }
    this.dirty = new Int32Array(store, 0, words);
    this.tracking = new Int32Array(store, words * 4, 1);
  }

  /** Number of pages the dirty bitmap covers. */
  get pageCount(): number {
    return Math.floor((this.end - 1) / PAGE_SHIFT_DIVISOR) - this.firstPage + 1;
  }

  /** True when guest address `addr` lies in this region. */
  contains(addr: number): boolean {
    return addr >= this.base && addr < this.end;
  }

  /**
   * Marks the pages of [addr, addr + len) dirty, when tracking is on. The range must already
   * be known to lie in this region. `Atomics.or` keeps concurrent markers (another thread)
   * from losing bits. With tracking off this is one load and a branch.
   */
  markDirty(addr: number, len: number): void {
    if (this.tracking[0] === 0 || len <= 0) return;
    const first = Math.floor(addr / PAGE_SHIFT_DIVISOR) - this.firstPage;
    const last = Math.floor((addr + len - 1) / PAGE_SHIFT_DIVISOR) - this.firstPage;
    const d = this.dirty;
    for (let p = first; p <= last; p++) {
      Atomics.or(d, p >>> 5, 1 << (p & 31));
    }
  }

  /** Marks the page holding guest address `addr` dirty (the one-field fast path), when tracking is on. */
  markPageDirty(addr: number): void {
    if (this.tracking[0] === 0) return;
    const p = Math.floor(addr / PAGE_SHIFT_DIVISOR) - this.firstPage;
    Atomics.or(this.dirty, p >>> 5, 1 << (p & 31));
  }
}

export function isSharedArrayBuffer(b: unknown): b is SharedArrayBuffer {
  return typeof SharedArrayBuffer !== 'undefined' && b instanceof SharedArrayBuffer;
}
