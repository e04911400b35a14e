import { GuestMemoryError, IovecError } from '../errors.js';
import type { GuestMemory } from '../memory/guest-memory.js';
import type { GuestRegion } from '../memory/region.js';
import { ArrayEnd, copyRangeAt } from '../memory/shared-copy.js';
import type { DescriptorChain } from '../queue/chain.js';

const EMPTY_ADDRS = new Float64Array(0);
const EMPTY_LENS = new Uint32Array(0);
const EMPTY_REGIONS: readonly (GuestRegion | null)[] = [];

/**
 * Copies of at most this many bytes go byte by byte instead of through `subarray` + `set`:
 * that allocates nothing and, for a header-sized copy, is also the faster of the two.
 */
export const SMALL_COPY_BYTES = 32;

/** Throws RangeError unless `n` is a non-negative safe integer (a host programming error). */
export function checkCount(n: number, what: string): void {
  if (!Number.isSafeInteger(n) || n < 0) {
    throw new RangeError(`${what} ${n} is not a non-negative safe integer`);
  }
}

/** Throws RangeError unless [offset, offset + length) lies inside an array of `size`. */
export function checkSpan(size: number, offset: number, length: number): void {
  if (
    !Number.isSafeInteger(offset) ||
    !Number.isSafeInteger(length) ||
    offset < 0 ||
    length < 0 ||
    length > size - offset
  ) {
    throw new RangeError(`span [${offset}, +${length}) is outside an array of ${size}`);
  }
}

/**
 * A position inside a run of a chain's descriptors, the common part of {@link ChainReader}
 * and {@link ChainWriter}.
 *
 * The bytes ahead of the position are served as *pieces*: a piece is a run of bytes that lies
 * in one memory region and is contiguous there: one descriptor's buffer, or several when each
 * starts where the one before ends. A buffer that is contiguous in guest-physical space but
 * crosses from one region into the next is two pieces. The cursor keeps the current piece as
 * (region, offset into `region.bytes`, bytes left in it), so a typed access that fits in the
 * piece is one DataView call and a bulk copy is one `TypedArray.set` per piece.
 *
 * Nothing here validates guest data: the chain was checked when it was popped
 * (`DescriptorChain.push`: ordering rule, total length at most 2^32, every buffer inside guest
 * memory), and the cursor only ever walks descriptors that passed those checks.
 *
 * The cursor holds the chain's descriptor arrays as they were at {@link bind}. Popping another
 * chain into the same `DescriptorChain` object rewrites those arrays: reset the reader or
 * writer after every pop.
 */
export class ChainCursor {
  protected memory: GuestMemory | null = null;
  protected addrs: ArrayLike<number> = EMPTY_ADDRS;
  protected lens: ArrayLike<number> = EMPTY_LENS;
  protected regionsOf: ArrayLike<GuestRegion | null> = EMPTY_REGIONS;
  /** Chain position of the descriptor where the piece after the current one starts. */
  protected nextDi = 0;
  /** Offset in descriptor `nextDi` where the piece after the current one starts. */
  protected nextOff = 0;
  /** One past the last chain position this cursor may use. */
  protected dEnd = 0;
  /** Bytes left to this cursor, over every piece. */
  protected left = 0;
  /** Bytes consumed since the last reset or split. */
  protected consumed = 0;
  /** Region of the current piece (meaningful while `pLeft > 0`). */
  protected region: GuestRegion | null = null;
  /** Index of the current position in `region.bytes`. */
  protected pos = 0;
  /** Bytes left in the current piece, never more than `left`; > 0 whenever `left > 0`. */
  protected pLeft = 0;

  /**
   * The region holding the piece a successful `claim` returned an offset into: its `bytes`,
   * `view` and `words` take that offset. Valid until the next operation on this cursor.
   */
  claimedRegion: GuestRegion | null = null;
  /** @internal The caller's array as one end of a large copy into or out of guest memory. */
  protected readonly user = new ArrayEnd();

  /** Bytes left to read or write. */
  get remaining(): number {
    return this.left;
  }

  /**
   * When the next `n` bytes (n > 0) lie in one piece: points {@link claimedRegion} at its
   * region, moves past them and returns their offset there. Else -1, moving nothing.
   */
  protected claimPiece(n: number): number {
    if (!(n > 0 && n <= this.pLeft)) return -1;
    const r = this.region!;
    const p = this.pos;
    this.claimedRegion = r;
    this.advance(n);
    return p;
  }

  /**
   * Moves past up to `n` bytes without touching them. Returns how many it moved past:
   * `min(n, remaining)`.
   */
  skip(n: number): number {
    checkCount(n, 'skip length');
    const k = Math.min(n, this.left);
    this.skipBytes(k);
    return k;
  }

  /** Moves past exactly `n` bytes; throws {@link IovecError} (and moves nowhere) if fewer are left. */
  skipExact(n: number): void {
    checkCount(n, 'skip length');
    if (n > this.left) throw new IovecError('skip', n, this.left);
    this.skipBytes(n);
  }

  /**
   * Points the cursor at descriptors [start, end) of `chain` (or nowhere when `chain` is
   * undefined). The length is summed from the descriptors themselves, so a chain whose pop
   * threw part-way exposes only the descriptors that passed validation.
   */
  protected bind(chain: DescriptorChain | undefined, readable: boolean): void {
    this.consumed = 0;
    this.nextOff = 0;
    this.pLeft = 0;
    this.region = null;
    this.pos = 0;
    if (chain === undefined || chain.memory === null) {
      this.memory = null;
      this.addrs = EMPTY_ADDRS;
      this.lens = EMPTY_LENS;
      this.regionsOf = EMPTY_REGIONS;
      this.nextDi = 0;
      this.dEnd = 0;
      this.left = 0;
      return;
    }
    const count = chain.count;
    // writableStart is -1 while a chain is being built (a pop that threw): no writable part.
    const ws = chain.writableStart < 0 || chain.writableStart > count ? count : chain.writableStart;
    const start = readable ? 0 : ws;
    const end = readable ? ws : count;
    const lens = chain.lens;
    let total = 0;
    for (let i = start; i < end; i++) total += lens[i]!;
    this.memory = chain.memory;
    this.addrs = chain.addrs;
    this.lens = lens;
    this.regionsOf = chain.regions;
    this.nextDi = start;
    this.dEnd = end;
    this.left = total;
    if (total > 0) this.settle();
  }

  /**
   * Loads the next non-empty piece, from (nextDi, nextOff). Called when the current piece is
   * used up and bytes are left. When a piece reaches the end of its descriptor, it takes in
   * the following descriptors for as long as they continue it in the same region (a driver
   * that splits one buffer into several descriptors), so adjacent buffers cost one copy.
   * Every loop here is bounded by the number of descriptors.
   */
  private settle(): void {
    const lens = this.lens;
    const addrs = this.addrs;
    const regions = this.regionsOf;
    const end = this.dEnd;
    let di = this.nextDi;
    let off = this.nextOff;
    while (di < end) {
      const len = lens[di]!;
      if (off < len) {
        const addr = addrs[di]! + off;
        let n = len - off;
        let r = regions[di] ?? null;
        if (r === null) {
          // The buffer spans regions (checked at pop with GuestMemory.covers): find the one
          // holding this position; the piece stops at that region's end.
          r = this.memory?.findRegion(addr) ?? null;
          if (r === null) throw new GuestMemoryError(addr, n, 'is not in guest memory any more');
          n = Math.min(n, r.end - addr);
        }
        if (off + n === len) {
          let j = di + 1;
          let next = addr + n;
          while (j < end) {
            const lj = lens[j]!;
            if (lj !== 0) {
              if (regions[j] !== r || addrs[j] !== next) break;
              n += lj;
              next += lj;
            }
            j++;
          }
          this.nextDi = j;
          this.nextOff = 0;
        } else {
          this.nextDi = di;
          this.nextOff = off + n;
        }
        this.region = r;
        this.pos = addr - r.base;
        this.pLeft = Math.min(n, this.left);
        return;
      }
      di++;
      off = 0;
    }
    this.nextDi = di;
    this.nextOff = 0;
    this.left = 0;
    this.pLeft = 0;
    this.region = null;
    throw new TypeError('the chain changed under this reader or writer: reset it after each pop');
  }

  /** Consumes `k` bytes of the current piece (0 < k <= pLeft). */
  protected advance(k: number): void {
    this.pos += k;
    this.left -= k;
    this.consumed += k;
    this.pLeft -= k;
    if (this.pLeft === 0 && this.left > 0) this.settle();
  }

  /** Consumes `n` bytes (n <= left), piece by piece. */
  protected skipBytes(n: number): void {
    let k = n;
    while (k > 0) {
      const step = Math.min(k, this.pLeft);
      this.advance(step);
      k -= step;
    }
  }

  /** Throws {@link IovecError} unless `n` bytes are left. */
  protected need(n: number, operation: string): void {
    if (n > this.left) throw new IovecError(operation, n, this.left);
  }

  /**
   * Makes `other` a cursor over everything after the next `offset` bytes, and limits this one
   * to those `offset` bytes. `other` counts consumed bytes from zero; this one keeps its count.
   */
  protected splitInto(other: ChainCursor, offset: number): void {
    checkCount(offset, 'split offset');
    if (other === this) throw new RangeError('cannot split a cursor into itself');
    if (offset > this.left) throw new IovecError('split', offset, this.left);
    other.memory = this.memory;
    other.addrs = this.addrs;
    other.lens = this.lens;
    other.regionsOf = this.regionsOf;
    other.nextDi = this.nextDi;
    other.nextOff = this.nextOff;
    other.dEnd = this.dEnd;
    other.left = this.left;
    other.region = this.region;
    other.pos = this.pos;
    other.pLeft = this.pLeft;
    other.skipBytes(offset);
    other.consumed = 0;
    this.left = offset;
    if (this.pLeft > offset) this.pLeft = offset;
  }

  /**
   * Copies up to `max` bytes from this cursor's pieces into `dst`'s pieces, marking the
   * destination pages dirty. Returns the count: `min(max, this.left, dst.left)`.
   */
  protected transferTo(dst: ChainCursor, max: number): number {
    if (dst === this) throw new RangeError('cannot copy a cursor onto itself');
    const total = Math.min(max, this.left, dst.left);
    let n = total;
    while (n > 0) {
      let k = Math.min(n, this.pLeft);
      if (k > dst.pLeft) k = dst.pLeft;
      const sr = this.region!;
      const dr = dst.region!;
      const sp = this.pos;
      const dp = dst.pos;
      if (sr === dr) {
        // Same backing array: copyWithin behaves as memmove and allocates nothing.
        dr.bytes.copyWithin(dp, sp, sp + k);
      } else if (k <= SMALL_COPY_BYTES) {
        const s = sr.bytes;
        const d = dr.bytes;
        for (let j = 0; j < k; j++) d[dp + j] = s[sp + j]!;
      } else if (sr.buffer === dr.buffer) {
        // Two regions over one buffer: the guest may make the two pieces overlap, and `set`
        // copies within one buffer as memmove does (copyRangeAt's staging steps would not).
        dr.bytes.set(sr.bytes.subarray(sp, sp + k), dp);
      } else {
        copyRangeAt(dr, dp, sr, sp, k);
      }
      dr.markDirty(dr.base + dp, k);
      this.advance(k);
      dst.advance(k);
      n -= k;
    }
    return total;
  }
}
