import { IovecError } from '../errors.js';
import { copyRangeAt } from '../memory/shared-copy.js';
import type { DescriptorChain } from '../queue/chain.js';
import { ChainCursor, checkCount, checkSpan, SMALL_COPY_BYTES } from './cursor.js';
import type { ChainReader } from './reader.js';

const TWO_32 = 2 ** 32;

/**
 * Writes the device-writable part of a popped descriptor chain (the descriptors from
 * `chain.writableStart` on) as one stream of bytes, and counts what it consumed for the used
 * ring's length field.
 *
 * As with {@link ChainReader}, the chain was validated when it was popped (ordering rule,
 * total length at most 2^32, every buffer inside guest memory), so writing cannot leave guest
 * memory. Every write marks the guest pages it touches dirty (`GuestRegion.markDirty`), so a
 * live migration sees them.
 *
 * A device allocates one writer and calls {@link reset} for each chain. Typed writes allocate
 * nothing; a bulk write costs one `TypedArray.set` per piece (see {@link ChainReader} for what
 * a piece is), and copies of at most 32 bytes go byte by byte. Reset the writer after every
 * pop into the chain object it writes.
 *
 * Partial and exact operations:
 * - {@link write}, {@link fill}, {@link skip}, {@link copyFrom} move `min(asked, remaining)`
 *   bytes and return that count; the bytes that did not fit are simply not written.
 * - {@link writeExact}, {@link skipExact}, {@link copyFromExact}, {@link split} and the typed
 *   writes need the whole amount. When it is not there they throw {@link IovecError}
 *   (`IOVEC_SHORT`) and write nothing.
 * - Bad arguments from the host program are `RangeError`.
 */
export class ChainWriter extends ChainCursor {
  /** A writer over `chain`'s writable part, or over nothing until {@link reset}. */
  constructor(chain?: DescriptorChain) {
    super();
    this.bind(chain, false);
  }

  /**
   * Starts over at the beginning of `chain`'s device-writable part (no argument: over
   * nothing). Returns this writer.
   */
  reset(chain?: DescriptorChain): this {
    this.bind(chain, false);
    return this;
  }

  /**
   * Bytes this writer has moved past since the last {@link reset} (or since it was split off):
   * everything written, plus anything skipped. It is the length to put in the used ring when
   * one writer wrote the chain, because the used length is the extent of the writable part the
   * device has filled in, and skipped bytes lie inside it. After a split, the used length is
   * the front's `bytesWritten` plus the back's, once the front is complete.
   */
  get bytesWritten(): number {
    return this.consumed;
  }

  /**
   * Copies up to `length` bytes of `src` from `srcOffset` (default: all of `src`) into the
   * chain. Returns how many were written: `min(length, remaining)`.
   */
  write(src: Uint8Array, srcOffset = 0, length: number = src.length - srcOffset): number {
    checkSpan(src.length, srcOffset, length);
    const total = Math.min(length, this.left);
    this.copyIn(src, srcOffset, total);
    return total;
  }

  /**
   * Copies exactly `length` bytes of `src` from `srcOffset` (default: all of `src`), or throws
   * {@link IovecError} having written nothing.
   */
  writeExact(src: Uint8Array, srcOffset = 0, length: number = src.length - srcOffset): void {
    checkSpan(src.length, srcOffset, length);
    this.need(length, 'writeExact');
    this.copyIn(src, srcOffset, length);
  }

  private copyIn(src: Uint8Array, srcOffset: number, count: number): void {
    let n = count;
    let at = srcOffset;
    while (n > 0) {
      const k = Math.min(n, this.pLeft);
      const r = this.region!;
      const bytes = r.bytes;
      const p = this.pos;
      if (k <= SMALL_COPY_BYTES) {
        for (let j = 0; j < k; j++) bytes[p + j] = src[at + j]!;
      } else if (r.shared && src.buffer === r.buffer) {
        // A view of this very buffer: `set` copies as memmove does, overlap or not.
        bytes.set(src.subarray(at, at + k), p);
      } else {
        // `src` is taken to be plain memory (a shared one is copied right, only slower).
        copyRangeAt(r, p, this.user.of(src, r.shared ? src.byteOffset : 0, false), at, k);
        this.user.clear();
      }
      r.markDirty(r.base + p, k);
      this.advance(k);
      at += k;
      n -= k;
    }
  }

  /** Sets up to `length` bytes to `value` (default 0). Returns the count written. */
  fill(length: number, value = 0): number {
    checkCount(length, 'fill length');
    const total = Math.min(length, this.left);
    let n = total;
    while (n > 0) {
      const k = Math.min(n, this.pLeft);
      const r = this.region!;
      const p = this.pos;
      r.bytes.fill(value, p, p + k);
      r.markDirty(r.base + p, k);
      this.advance(k);
      n -= k;
    }
    return total;
  }

  /**
   * Copies up to `length` bytes (default: as many as fit) from `reader` into this writer,
   * piece to piece. Returns the count: `min(length, reader.remaining, this.remaining)`.
   */
  copyFrom(reader: ChainReader, length = Number.MAX_SAFE_INTEGER): number {
    return reader.copyTo(this, length);
  }

  /** Copies exactly `length` bytes from `reader`, or throws {@link IovecError} moving nothing. */
  copyFromExact(reader: ChainReader, length: number): void {
    reader.copyToExact(this, length);
  }

  /**
   * Splits this writer at `offset` bytes from its position: this writer keeps the first
   * `offset` bytes (say, a header to fill in last), and the returned one (`into` when given,
   * else a new writer) writes the rest. Beyond {@link remaining} throws {@link IovecError}.
   */
  split(offset: number, into?: ChainWriter): ChainWriter {
    const other = into ?? new ChainWriter();
    this.splitInto(other, offset);
    return other;
  }

  /**
   * Direct access for a device that writes a frame or a structure in place: when the next `n`
   * bytes (n > 0) lie in one piece, marks them dirty, moves past them (they count in
   * {@link bytesWritten}) and returns their offset in {@link claimedRegion}, where the caller
   * writes them at once; otherwise returns -1 and moves nothing (use the streaming writes then).
   */
  claim(n: number): number {
    const p = this.claimPiece(n);
    // The claimed region: `claimPiece` moved past the bytes, so the cursor's region is already
    // the next piece's when they ended the current one.
    if (p >= 0) this.claimedRegion!.markDirty(this.claimedRegion!.base + p, n);
    return p;
  }

  // ---- little-endian integers (each needs all its bytes, else IovecError) ----
  // Values are truncated to the field width as DataView does (modulo 2^bits). The fast paths
  // are kept small so that V8 inlines them; a value that straddles two pieces (or does not
  // fit) goes to a separate method.

  writeU8(value: number): void {
    if (this.pLeft === 0) this.need(1, 'writeU8');
    this.byte(value);
  }

  writeU16(value: number): void {
    if (this.pLeft < 2) {
      this.straddlingU16(value);
      return;
    }
    const r = this.region!;
    r.view.setUint16(this.pos, value, true);
    r.markDirty(r.base + this.pos, 2);
    this.advance(2);
  }

  writeU32(value: number): void {
    if (this.pLeft < 4) {
      this.straddlingU32(value);
      return;
    }
    const r = this.region!;
    r.view.setUint32(this.pos, value, true);
    r.markDirty(r.base + this.pos, 4);
    this.advance(4);
  }

  /** Writes a u64 given as a non-negative safe integer (else RangeError). */
  writeU64(value: number): void {
    if (!Number.isSafeInteger(value) || value < 0) {
      throw new RangeError(`writeU64 value ${value} is not a non-negative safe integer`);
    }
    const lo = value >>> 0;
    const hi = Math.floor(value / TWO_32);
    if (this.pLeft < 8) {
      this.straddlingU64(lo, hi, 'writeU64');
      return;
    }
    const r = this.region!;
    r.view.setUint32(this.pos, lo, true);
    r.view.setUint32(this.pos + 4, hi, true);
    r.markDirty(r.base + this.pos, 8);
    this.advance(8);
  }

  /** Writes a u64 given as a bigint, modulo 2^64. */
  writeBigU64(value: bigint): void {
    const v = BigInt.asUintN(64, value);
    if (this.pLeft < 8) {
      this.straddlingU64(Number(v & 0xffffffffn), Number(v >> 32n), 'writeBigU64');
      return;
    }
    const r = this.region!;
    r.view.setBigUint64(this.pos, v, true);
    r.markDirty(r.base + this.pos, 8);
    this.advance(8);
  }

  private straddlingU16(value: number): void {
    this.need(2, 'writeU16');
    this.byte(value);
    this.byte(value >>> 8);
  }

  private straddlingU32(value: number): void {
    this.need(4, 'writeU32');
    this.bytesU32(value);
  }

  private straddlingU64(lo: number, hi: number, operation: string): void {
    this.need(8, operation);
    this.bytesU32(lo);
    this.bytesU32(hi);
  }

  /** Writes one byte into the current piece; the caller has checked that it is there. */
  private byte(value: number): void {
    const r = this.region!;
    r.bytes[this.pos] = value;
    r.markPageDirty(r.base + this.pos);
    this.advance(1);
  }

  /** Writes a u32 byte by byte; the caller has checked that 4 bytes are left. */
  private bytesU32(value: number): void {
    this.byte(value);
    this.byte(value >>> 8);
    this.byte(value >>> 16);
    this.byte(value >>> 24);
  }
}
