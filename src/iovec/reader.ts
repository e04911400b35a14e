import { type DescriptorError, IovecError } from '../errors.js';
import { joinU64 } from '../memory/guest-memory.js';
import { copyRangeAt } from '../memory/shared-copy.js';
import type { DescriptorChain } from '../queue/chain.js';
import { ChainCursor, checkCount, checkSpan, SMALL_COPY_BYTES } from './cursor.js';
import type { ChainWriter } from './writer.js';

/**
 * Reads the device-readable part of a popped descriptor chain (the descriptors before
 * `chain.writableStart`) as one stream of bytes, without copying the chain first.
 *
 * Validation happened when the chain was popped: `DescriptorChain.push` rejects a readable
 * descriptor after a writable one (`DESC_WRITABLE_BEFORE_READABLE`), a chain of more than
 * 2^32 bytes (`DESC_CHAIN_LENGTH_OVERFLOW`) and a buffer outside guest memory
 * (`DESC_BUFFER_OUT_OF_MEMORY`), so reading cannot leave guest memory.
 *
 * A device allocates one reader and calls {@link reset} for each chain. Typed reads allocate
 * nothing (except the bigint of {@link readBigU64}; and, as for any JS function, V8 boxes a
 * returned value of 2^30 or more as a heap number when it does not inline the call); a bulk
 * read costs one `TypedArray.set` per piece, and copies of at most 32 bytes go byte by byte,
 * allocating nothing. A piece is one descriptor's buffer, or a run of buffers that each start
 * where the one before ends in the same memory region; a buffer that crosses from one region
 * into the next is two pieces.
 *
 * Reset the reader after every pop into the chain object it reads: it holds the chain's
 * descriptor arrays, which the next pop rewrites. A chain whose pop threw a
 * {@link DescriptorError} should not be read at all; if it is, the reader sees only the
 * descriptors that passed validation before the error.
 *
 * Partial and exact operations:
 * - {@link read}, {@link skip}, {@link copyTo} move `min(asked, remaining)` bytes and return
 *   that count; asking for more than is left is not an error.
 * - {@link readExact}, {@link skipExact}, {@link copyToExact}, {@link split} and the typed
 *   reads need the whole amount. When it is not there they throw {@link IovecError}
 *   (`IOVEC_SHORT`, a guest-caused error: the driver's buffers are too short) and consume
 *   nothing.
 * - Bad arguments from the host program (negative lengths, spans outside `dst`) are
 *   `RangeError`.
 *
 * Guest memory may be shared with a running guest: the bytes read are whatever the guest
 * holds at that moment, and a value that straddles two pieces is read byte by byte.
 */
export class ChainReader extends ChainCursor {
  /** A reader over `chain`'s readable part, or over nothing until {@link reset}. */
  constructor(chain?: DescriptorChain) {
    super();
    this.bind(chain, true);
  }

  /**
   * Starts over at the beginning of `chain`'s device-readable part (no argument: over nothing,
   * dropping references to the previous chain). Returns this reader.
   */
  reset(chain?: DescriptorChain): this {
    this.bind(chain, true);
    return this;
  }

  /** Bytes read or skipped since the last {@link reset} (or since this reader was split off). */
  get bytesRead(): number {
    return this.consumed;
  }

  /**
   * Copies up to `length` bytes into `dst` at `dstOffset` (default: fill `dst` from 0).
   * Returns how many were copied: `min(length, remaining)`.
   */
  read(dst: Uint8Array, dstOffset = 0, length: number = dst.length - dstOffset): number {
    checkSpan(dst.length, dstOffset, length);
    const total = Math.min(length, this.left);
    this.copyOut(dst, dstOffset, total);
    return total;
  }

  /**
   * Copies exactly `length` bytes into `dst` at `dstOffset` (default: fill `dst` from 0), or
   * throws {@link IovecError} having consumed and copied nothing.
   */
  readExact(dst: Uint8Array, dstOffset = 0, length: number = dst.length - dstOffset): void {
    checkSpan(dst.length, dstOffset, length);
    this.need(length, 'readExact');
    this.copyOut(dst, dstOffset, length);
  }

  /**
   * Direct access for a device that reads a frame or a structure in place: when the next `n`
   * bytes (n > 0) lie in one piece, moves past them and returns their offset in
   * {@link claimedRegion}, where the caller reads them; otherwise returns -1 and moves nothing
   * (use the streaming reads then). The bytes are guest memory: a driver may change them at
   * any time, so copy before you check.
   */
  claim(n: number): number {
    return this.claimPiece(n);
  }

  private copyOut(dst: Uint8Array, dstOffset: number, count: number): void {
    let n = count;
    let at = dstOffset;
    while (n > 0) {
      const k = Math.min(n, this.pLeft);
      const bytes = this.region!.bytes;
      const p = this.pos;
      if (k <= SMALL_COPY_BYTES) {
        for (let j = 0; j < k; j++) dst[at + j] = bytes[p + j]!;
      } else {
        // `dst` is taken to be plain memory (a shared one is copied right, only slower), unless
        // it is a view of this very buffer: `set` then copies as memmove does, overlap or not.
        const r = this.region!;
        if (r.shared && dst.buffer === r.buffer) dst.set(bytes.subarray(p, p + k), at);
        else {
          copyRangeAt(this.user.of(dst, r.shared ? dst.byteOffset : 0, false), at, r, p, k);
          this.user.clear();
        }
      }
      this.advance(k);
      at += k;
      n -= k;
    }
  }

  /**
   * Copies up to `length` bytes (default: as many as fit) from this reader into `writer`,
   * piece to piece, without an intermediate buffer. Returns the count:
   * `min(length, this.remaining, writer.remaining)`.
   */
  copyTo(writer: ChainWriter, length = Number.MAX_SAFE_INTEGER): number {
    checkCount(length, 'copy length');
    return this.transferTo(writer, length);
  }

  /**
   * Copies exactly `length` bytes into `writer`, or throws {@link IovecError} (nothing read or
   * written) when either side has fewer left.
   */
  copyToExact(writer: ChainWriter, length: number): void {
    checkCount(length, 'copy length');
    this.need(length, 'copy from the readable part');
    if (length > writer.remaining) {
      throw new IovecError('copy into the writable part', length, writer.remaining);
    }
    this.transferTo(writer, length);
  }

  /**
   * Splits this reader at `offset` bytes from its position: this reader keeps the first
   * `offset` bytes, and the returned one (`into` when given, else a new reader) reads the rest.
   * `offset` may equal {@link remaining} (the rest is empty); beyond it throws
   * {@link IovecError} and changes nothing.
   */
  split(offset: number, into?: ChainReader): ChainReader {
    const other = into ?? new ChainReader();
    this.splitInto(other, offset);
    return other;
  }

  // ---- little-endian integers (each needs all its bytes, else IovecError) ----
  // The fast paths are kept small so that V8 inlines them into the device's loop; a value that
  // straddles two pieces (or is not there) goes to a separate method.

  readU8(): number {
    if (this.pLeft === 0) this.need(1, 'readU8');
    return this.byte();
  }

  readU16(): number {
    if (this.pLeft < 2) return this.straddlingU16();
    const v = this.region!.view.getUint16(this.pos, true);
    this.advance(2);
    return v;
  }

  readU32(): number {
    if (this.pLeft < 4) return this.straddlingU32();
    const v = this.region!.view.getUint32(this.pos, true);
    this.advance(4);
    return v;
  }

  /**
   * Reads a u64 as a number. A value of 2^53 or more reads as `U64_UNSAFE` (2^53), which fails
   * every guest-memory bounds check, as addresses do everywhere in virtq.
   */
  readU64(): number {
    if (this.pLeft < 8) return this.straddlingU64();
    const view = this.region!.view;
    const lo = view.getUint32(this.pos, true);
    const hi = view.getUint32(this.pos + 4, true);
    this.advance(8);
    return joinU64(lo, hi);
  }

  /** Reads a u64 exactly, as a bigint (allocates the bigint). */
  readBigU64(): bigint {
    if (this.pLeft < 8) return this.straddlingBigU64();
    const v = this.region!.view.getBigUint64(this.pos, true);
    this.advance(8);
    return v;
  }

  private straddlingU16(): number {
    this.need(2, 'readU16');
    return this.byte() | (this.byte() << 8);
  }

  private straddlingU32(): number {
    this.need(4, 'readU32');
    return this.bytesU32();
  }

  private straddlingU64(): number {
    this.need(8, 'readU64');
    const lo = this.bytesU32();
    const hi = this.bytesU32();
    return joinU64(lo, hi);
  }

  private straddlingBigU64(): bigint {
    this.need(8, 'readBigU64');
    const lo = this.bytesU32();
    const hi = this.bytesU32();
    return (BigInt(hi) << 32n) | BigInt(lo);
  }

  /** One byte from the current piece; the caller has checked that it is there. */
  private byte(): number {
    const v = this.region!.bytes[this.pos]!;
    this.advance(1);
    return v;
  }

  /** A u32 assembled byte by byte; the caller has checked that 4 bytes are left. */
  private bytesU32(): number {
    const b0 = this.byte();
    const b1 = this.byte();
    const b2 = this.byte();
    const b3 = this.byte();
    return b0 + b1 * 0x100 + b2 * 0x10000 + b3 * 0x1000000;
  }
}
