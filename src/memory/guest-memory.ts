import { GuestMemoryError, requireSharedArrayBuffer } from '../errors.js';
import { GuestRegion, isSharedArrayBuffer, type RegionSpec } from './region.js';
import { copyRange } from './shared-copy.js';

/**
 * What `readU64` returns for a stored value that is not a safe integer (>= 2^53). Every region
 * ends below 2^53, so this value fails every bounds check, as any other bad address would.
 */
export const U64_UNSAFE = 2 ** 53;

/**
 * The u64 whose low and high u32 halves are `lo` and `hi`, as a number: exact below 2^53,
 * {@link U64_UNSAFE} from there on. The one place guest addresses and sectors are joined.
 */
export function joinU64(lo: number, hi: number): number {
  return hi >= 0x200000 ? U64_UNSAFE : hi * 0x100000000 + lo;
}

/**
 * {@link joinU64} for a value that a bounds check against guest memory decides on at once (the
 * ring walks' fast paths): the same below 2^53; from there some value of 2^53 or more, not
 * exactly {@link U64_UNSAFE}, which fails every such check all the same. It has no branch, so
 * V8 keeps the result a double; joinU64's two-way result made it test each one for an int,
 * about 10% of W1 (docs/PERFORMANCE.md, "Pops without begin").
 */
export function joinU64Unclamped(lo: number, hi: number): number {
  // The literal, not a module constant: V8 loads a module binding at every use with a check
  // of its value (a heap number here), on the pop path once per descriptor.
  return hi * 0x100000000 + lo;
}

const TWO_32 = 2 ** 32;

/** A piece of a guest range that lies inside one region. */
export interface MemoryPiece {
  region: GuestRegion;
  /** Guest-physical address of the piece. */
  addr: number;
  /** Length in bytes. */
  len: number;
}

/** Everything another thread needs to rebuild the same guest memory over shared buffers. */
export interface SharedMemoryHandle {
  regions: { base: number; length: number; buffer: SharedArrayBuffer; offset: number }[];
  dirty: SharedArrayBuffer[];
}

export interface DirtyBitmap {
  /** Guest-physical page number of bit 0. */
  firstPage: number;
  /** Number of valid bits. */
  pages: number;
  /** Bit i (word i >>> 5, bit i & 31) is set when page firstPage + i was written. */
  bits: Uint32Array;
}

/**
 * Guest-physical memory: one or more non-overlapping regions, each over an ArrayBuffer or
 * SharedArrayBuffer. Every access is checked: an access that touches no region or leaves its
 * region throws {@link GuestMemoryError}; nothing is clamped or wrapped.
 *
 * Zero-length accesses are valid at any address that lies in a region or at a region's end,
 * and touch nothing.
 */
export class GuestMemory {
  readonly regions: readonly GuestRegion[];
  private readonly bases: Float64Array;
  private last: GuestRegion;

  constructor(specs: readonly RegionSpec[], dirtyBuffers?: readonly ArrayBufferLike[]) {
    if (specs.length === 0) throw new RangeError('guest memory needs at least one region');
    if (dirtyBuffers !== undefined && dirtyBuffers.length !== specs.length) {
      throw new RangeError('one dirty bitmap buffer per region');
    }
    const regions = specs.map((s, i) => new GuestRegion(s, dirtyBuffers?.[i]));
    regions.sort((a, b) => a.base - b.base);
    for (let i = 1; i < regions.length; i++) {
      const prev = regions[i - 1]!;
      const cur = regions[i]!;
      if (cur.base < prev.end) {
        throw new RangeError(
          `regions [${prev.base}, ${prev.end}) and [${cur.base}, ${cur.end}) overlap`,
        );
      }
    }
    this.regions = regions;
    this.bases = Float64Array.from(regions, (r) => r.base);
    this.last = regions[0]!;
  }

  /**
   * A single region of `size` bytes at guest address `base`, over a fresh buffer; `shared`
   * for a SharedArrayBuffer, `trackDirty` to record written pages from the start (see
   * {@link setDirtyTracking}).
   */
  static create(
    size: number,
    options: { base?: number; shared?: boolean; trackDirty?: boolean } = {},
  ): GuestMemory {
    if (options.shared) requireSharedArrayBuffer('GuestMemory.create({ shared: true })');
    const buffer = options.shared ? new SharedArrayBuffer(size) : new ArrayBuffer(size);
    const memory = new GuestMemory([{ base: options.base ?? 0, length: size, buffer }]);
    if (options.trackDirty === true) memory.setDirtyTracking(true);
    return memory;
  }

  /** Rebuilds, in another thread, a memory made of shared buffers (see {@link toShared}). */
  static fromShared(handle: SharedMemoryHandle): GuestMemory {
    return new GuestMemory(handle.regions, handle.dirty);
  }

  /** A structured-clone-safe description of this memory; every region must be shared. */
  toShared(): SharedMemoryHandle {
    const regions: SharedMemoryHandle['regions'] = [];
    const dirty: SharedArrayBuffer[] = [];
    for (const r of this.regions) {
      if (!isSharedArrayBuffer(r.buffer) || !isSharedArrayBuffer(r.dirty.buffer)) {
        throw new TypeError('toShared() needs every region backed by a SharedArrayBuffer');
      }
      regions.push({ base: r.base, length: r.length, buffer: r.buffer, offset: r.offset });
      dirty.push(r.dirty.buffer);
    }
    return { regions, dirty };
  }

  /** Total bytes over all regions. */
  get size(): number {
    let n = 0;
    for (const r of this.regions) n += r.length;
    return n;
  }

  /** The region containing `addr`, or undefined. Binary search, with a one-entry cache. */
  findRegion(addr: number): GuestRegion | undefined {
    const last = this.last;
    if (addr >= last.base && addr < last.end) return last;
    const bases = this.bases;
    let lo = 0;
    let hi = bases.length - 1;
    if (!(addr >= bases[0]!)) return undefined; // also rejects NaN
    while (lo < hi) {
      const mid = (lo + hi + 1) >>> 1;
      if (bases[mid]! <= addr) lo = mid;
      else hi = mid - 1;
    }
    const r = this.regions[lo]!;
    if (addr < r.end) {
      this.last = r;
      return r;
    }
    return undefined;
  }

  /**
   * The region that holds all of [addr, addr + len), or throws. A zero-length range may sit at
   * a region's end.
   */
  checkRange(addr: number, len: number): GuestRegion {
    const r = this.regionFor(addr, len);
    if (r === undefined) throw new GuestMemoryError(addr, len);
    return r;
  }

  /** True when [addr, addr + len) lies inside one region. */
  isValidRange(addr: number, len: number): boolean {
    return this.regionFor(addr, len) !== undefined;
  }

  /**
   * True when every byte of [addr, addr + len) lies in guest memory, possibly across regions
   * that are contiguous in guest-physical space. Allocates nothing.
   */
  covers(addr: number, len: number): boolean {
    if (!(len >= 0) || !Number.isSafeInteger(addr) || !Number.isSafeInteger(len)) return false;
    if (len === 0) return this.regionFor(addr, 0) !== undefined;
    let a = addr;
    let left = len;
    // Each step consumes a whole region, so the loop runs at most regions.length times.
    while (left > 0) {
      const r = this.findRegion(a);
      if (r === undefined) return false;
      const room = r.end - a;
      if (left <= room) return true;
      left -= room;
      a = r.end;
    }
    return true;
  }

  private regionFor(addr: number, len: number): GuestRegion | undefined {
    if (!(len >= 0) || !Number.isSafeInteger(addr) || !Number.isSafeInteger(len)) return undefined;
    let r = this.findRegion(addr);
    if (r === undefined && len === 0) r = this.findRegion(addr - 1);
    if (r === undefined) return undefined;
    // Compare against the remaining room, never compute addr + len first (it may round).
    return len <= r.end - addr ? r : undefined;
  }

  // ---- little-endian scalars ----

  readU8(addr: number): number {
    const r = this.checkRange(addr, 1);
    return r.bytes[addr - r.base]!;
  }

  readU16(addr: number): number {
    const r = this.checkRange(addr, 2);
    return r.view.getUint16(addr - r.base, true);
  }

  readU32(addr: number): number {
    const r = this.checkRange(addr, 4);
    return r.view.getUint32(addr - r.base, true);
  }

  /** Reads a u64 as a number; values >= 2^53 read as {@link U64_UNSAFE}. */
  readU64(addr: number): number {
    const r = this.checkRange(addr, 8);
    const off = addr - r.base;
    const lo = r.view.getUint32(off, true);
    const hi = r.view.getUint32(off + 4, true);
    return joinU64(lo, hi);
  }

  /** Reads a u64 exactly, as a bigint (for feature words and other non-address fields). */
  readBigU64(addr: number): bigint {
    const r = this.checkRange(addr, 8);
    return r.view.getBigUint64(addr - r.base, true);
  }

  writeU8(addr: number, value: number): void {
    const r = this.checkRange(addr, 1);
    r.bytes[addr - r.base] = value;
    r.markPageDirty(addr);
  }

  writeU16(addr: number, value: number): void {
    const r = this.checkRange(addr, 2);
    r.view.setUint16(addr - r.base, value, true);
    r.markDirty(addr, 2);
  }

  writeU32(addr: number, value: number): void {
    const r = this.checkRange(addr, 4);
    r.view.setUint32(addr - r.base, value, true);
    r.markDirty(addr, 4);
  }

  /** Writes a u64 given as a safe non-negative integer. */
  writeU64(addr: number, value: number): void {
    if (!Number.isSafeInteger(value) || value < 0) {
      throw new RangeError(`writeU64 value ${value} is not a non-negative safe integer`);
    }
    const r = this.checkRange(addr, 8);
    const off = addr - r.base;
    r.view.setUint32(off, value >>> 0, true);
    r.view.setUint32(off + 4, Math.floor(value / TWO_32), true);
    r.markDirty(addr, 8);
  }

  writeBigU64(addr: number, value: bigint): void {
    const r = this.checkRange(addr, 8);
    r.view.setBigUint64(addr - r.base, BigInt.asUintN(64, value), true);
    r.markDirty(addr, 8);
  }

  // ---- byte ranges ----

  /**
   * Copies guest bytes [addr, addr + dst.length) into `dst`. The range may span regions that
   * are contiguous in guest-physical space; a gap anywhere in it throws before anything is
   * copied.
   */
  read(addr: number, dst: Uint8Array): void {
    if (dst.length === 0) {
      this.checkRange(addr, 0);
      return;
    }
    const r = this.regionFor(addr, dst.length);
    if (r !== undefined) {
      copyRange(dst, 0, r.bytes, addr - r.base, dst.length);
      return;
    }
    let done = 0;
    this.forEachPiece(addr, dst.length, (region, a, len) => {
      copyRange(dst, done, region.bytes, a - region.base, len);
      done += len;
    });
  }

  /** Copies `src` into guest memory at `addr` (may span contiguous regions) and marks pages dirty. */
  write(addr: number, src: Uint8Array): void {
    if (src.length === 0) {
      this.checkRange(addr, 0);
      return;
    }
    const r = this.regionFor(addr, src.length);
    if (r !== undefined) {
      copyRange(r.bytes, addr - r.base, src, 0, src.length);
      r.markDirty(addr, src.length);
      return;
    }
    let done = 0;
    this.forEachPiece(addr, src.length, (region, a, len) => {
      copyRange(region.bytes, a - region.base, src, done, len);
      region.markDirty(a, len);
      done += len;
    });
  }

  /** Sets `len` bytes at `addr` to `value` (may span contiguous regions). */
  fill(addr: number, len: number, value = 0): void {
    this.forEachPiece(addr, len, (region, a, n) => {
      const off = a - region.base;
      region.bytes.fill(value, off, off + n);
      region.markDirty(a, n);
    });
  }

  /**
   * A zero-copy view of [addr, addr + len), which must lie in one region. Writing through the
   * view is not tracked: use {@link writableSlice} for that.
   */
  slice(addr: number, len: number): Uint8Array {
    const r = this.checkRange(addr, len);
    const off = addr - r.base;
    return r.bytes.subarray(off, off + len);
  }

  /**
   * A zero-copy typed-array view of `count` elements at `addr` (for ring structures). The range
   * must lie in one region and `addr` must be aligned to the element size; region bases and
   * buffer offsets are multiples of 8, so the view is then aligned in its buffer too. Writes
   * through the view are not tracked (mark them with {@link markDirty}).
   */
  typedView<T extends Uint16Array | Uint32Array>(
    ctor: {
      new (buffer: ArrayBufferLike, byteOffset: number, length: number): T;
      readonly BYTES_PER_ELEMENT: number;
    },
    addr: number,
    count: number,
  ): T {
    const r = this.checkRange(addr, count * ctor.BYTES_PER_ELEMENT);
    if (addr % ctor.BYTES_PER_ELEMENT !== 0) {
      throw new GuestMemoryError(
        addr,
        count * ctor.BYTES_PER_ELEMENT,
        `is not ${ctor.BYTES_PER_ELEMENT}-byte aligned`,
      );
    }
    return new ctor(r.buffer, r.offset + (addr - r.base), count);
  }

  /** Like {@link slice}, and marks the range dirty because the caller will write to it. */
  writableSlice(addr: number, len: number): Uint8Array {
    const r = this.checkRange(addr, len);
    r.markDirty(addr, len);
    const off = addr - r.base;
    return r.bytes.subarray(off, off + len);
  }

  /**
   * Splits [addr, addr + len) into per-region pieces, in order. Throws before calling `fn` at
   * all if any byte of the range lies outside guest memory.
   */
  forEachPiece(
    addr: number,
    len: number,
    fn: (region: GuestRegion, addr: number, len: number) => void,
  ): void {
    const pieces = this.pieces(addr, len);
    for (const p of pieces) fn(p.region, p.addr, p.len);
  }

  /** The per-region pieces of [addr, addr + len); throws if any byte is outside memory. */
  pieces(addr: number, len: number): MemoryPiece[] {
    if (!Number.isSafeInteger(len) || len < 0) throw new GuestMemoryError(addr, len);
    const out: MemoryPiece[] = [];
    if (len === 0) {
      this.checkRange(addr, 0);
      return out;
    }
    let a = addr;
    let left = len;
    while (left > 0) {
      const r = Number.isSafeInteger(a) ? this.findRegion(a) : undefined;
      if (r === undefined) throw new GuestMemoryError(addr, len, 'is not all inside guest memory');
      const n = Math.min(left, r.end - a);
      out.push({ region: r, addr: a, len: n });
      a += n;
      left -= n;
    }
    return out;
  }

  // ---- dirty pages ----

  /**
   * Switches dirty tracking on or off (it starts off). While on, every write the library
   * makes to guest memory (`write*`, `fill`, `writableSlice`, chain writers, used ring
   * updates) marks its pages before the used index that publishes it moves; while off, the
   * hot paths pay one load and a branch. Threads that share this memory share the switch
   * (it lives beside the bitmaps); another thread sees a change at its next synchronisation
   * with this one (a notification, a lifecycle call), so switch it on before the writes that
   * must be recorded: the vhost-user back-end does while the front-end logs, a snapshot user
   * before the first pass of its copy. Switching it off keeps the bits already recorded.
   */
  setDirtyTracking(on: boolean): void {
    for (const r of this.regions) Atomics.store(r.tracking, 0, on ? 1 : 0);
  }

  /** True while written pages are recorded (see {@link setDirtyTracking}). */
  get dirtyTracking(): boolean {
    return Atomics.load(this.regions[0]!.tracking, 0) !== 0;
  }

  /** Marks [addr, addr + len) dirty without writing (for writes made through a raw view). */
  markDirty(addr: number, len: number): void {
    this.forEachPiece(addr, len, (r, a, n) => r.markDirty(a, n));
  }

  /** True when the page holding `addr` has been written since the last clear. */
  isPageDirty(addr: number): boolean {
    const page = Math.floor(addr / 4096);
    // Neighbouring regions can share a page (bases need only be multiples of 8), each with its
    // own bit for it: the page is dirty when any of them marked it.
    for (const r of this.regions) {
      const p = page - r.firstPage;
      if (!(p >= 0 && p < r.pageCount)) continue; // also rejects NaN
      if ((Atomics.load(r.dirty, p >>> 5) & (1 << (p & 31))) !== 0) return true;
    }
    return false;
  }

  /** Guest-physical page numbers of every dirty page, ascending, each once. */
  dirtyPages(): number[] {
    const out: number[] = [];
    for (const r of this.regions) {
      const pages = r.pageCount;
      for (let p = 0; p < pages; p++) {
        if ((Atomics.load(r.dirty, p >>> 5) & (1 << (p & 31))) === 0) continue;
        // Two regions can share a page (bases need only be multiples of 8): list it once.
        const page = r.firstPage + p;
        if (out[out.length - 1] !== page) out.push(page);
      }
    }
    return out;
  }

  /**
   * Returns a copy of every region's dirty bitmap and clears it, word by word with
   * `Atomics.exchange`, so a page dirtied concurrently lands in this copy or the next one.
   */
  takeDirtyBitmaps(): DirtyBitmap[] {
    return this.regions.map((r) => {
      const bits = new Uint32Array(r.dirty.length);
      for (let i = 0; i < bits.length; i++) bits[i] = Atomics.exchange(r.dirty, i, 0) >>> 0;
      return { firstPage: r.firstPage, pages: r.pageCount, bits };
    });
  }

  /** Clears every dirty bit. */
  clearDirty(): void {
    for (const r of this.regions) {
      for (let i = 0; i < r.dirty.length; i++) Atomics.store(r.dirty, i, 0);
    }
  }
}
