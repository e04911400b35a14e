import { type ByteSpan, LARGE_COPY_BYTES, SourceCopier, spanOver } from '../../iovec/copy.js';
import type { NetHeader } from './request.js';

/** Header fields stored per frame: flags, gsoType, hdrLen, gsoSize, csumStart, csumOffset. */
const HDR_FIELDS = 6;

/**
 * A bounded FIFO of frames waiting for the guest's receive buffers, with no allocation per
 * frame: frame bytes live in one preallocated byte arena used as a ring (a frame is stored
 * contiguously, so the end of the arena may be skipped when a frame does not fit there), and
 * the per-frame lengths, offsets and header fields live in typed arrays with one slot per
 * frame. The ring is bounded both in frames and in bytes; {@link canFit} says whether one more
 * frame fits.
 */
export class FrameRing {
  /** Frame bytes. A frame's bytes are `data[offsetAt(i), offsetAt(i) + lengthAt(i))`. */
  readonly data: Uint8Array;
  /** The span over {@link data}. */
  readonly span: ByteSpan;
  readonly maxFrames: number;
  private readonly offs: Uint32Array;
  private readonly lens: Uint32Array;
  private readonly hdrs: Uint16Array;
  private head = 0;
  private n = 0;
  /** Copies frames in from the views of its own buffer that a backend hands over. */
  private readonly source = new SourceCopier();
  /** One past the last byte of the newest frame. */
  private wr = 0;
  private usedBytes = 0;

  constructor(maxFrames: number, capacityBytes: number) {
    if (!Number.isInteger(maxFrames) || maxFrames < 1)
      throw new RangeError(`maxFrames ${maxFrames} must be a positive integer`);
    if (!Number.isInteger(capacityBytes) || capacityBytes < 1) {
      throw new RangeError(`capacity ${capacityBytes} must be a positive integer`);
    }
    this.maxFrames = maxFrames;
    this.span = spanOver(new Uint8Array(capacityBytes));
    this.data = this.span.bytes;
    this.offs = new Uint32Array(maxFrames);
    this.lens = new Uint32Array(maxFrames);
    this.hdrs = new Uint16Array(maxFrames * HDR_FIELDS);
  }

  /** Frames waiting. */
  get length(): number {
    return this.n;
  }

  /** Bytes of the waiting frames. */
  get bytes(): number {
    return this.usedBytes;
  }

  get capacity(): number {
    return this.data.length;
  }

  /**
   * The slot of the `i`-th oldest frame (`i` at most maxFrames): a compare, not `%`, which V8
   * compiles to a division (the ring's size need not be a power of two), several per frame.
   */
  private slot(i: number): number {
    const s = this.head + i;
    return s < this.maxFrames ? s : s - this.maxFrames;
  }

  /** Where a frame of `len` bytes would go, or -1 when it does not fit now. */
  private place(len: number): number {
    const cap = this.data.length;
    if (len > cap || this.n === this.maxFrames) return -1;
    if (this.n === 0) return 0;
    const rd = this.offs[this.head]!;
    const newest = this.offs[this.slot(this.n - 1)]!;
    if (newest >= rd) {
      // Not wrapped: free space is [wr, cap) and [0, rd).
      if (len <= cap - this.wr) return this.wr;
      if (len <= rd) return 0;
      return -1;
    }
    // Wrapped: free space is [wr, rd).
    return len <= rd - this.wr ? this.wr : -1;
  }

  /** True when a frame of `len` bytes (at least 1) can be pushed now. */
  canFit(len: number): boolean {
    return this.place(len) >= 0;
  }

  /**
   * Copies `src[0, len)` in as the newest frame, with its header (null: a plain frame).
   * Returns false, storing nothing, when it does not fit. `len` must be at least 1.
   */
  push(src: Uint8Array, len: number, header: NetHeader | null): boolean {
    if (len < 1) throw new RangeError('a frame has at least one byte');
    const at = this.place(len);
    if (at < 0) return false;
    const slot = this.slot(this.n);
    if (len < LARGE_COPY_BYTES) {
      // Neither a view of part of `src` (an allocation per frame) nor a call into `set`.
      this.source.copy(this.span, at, src, len);
    } else if (len === src.length) this.data.set(src, at);
    else this.data.set(src.subarray(0, len), at);
    this.offs[slot] = at;
    this.lens[slot] = len;
    const h = slot * HDR_FIELDS;
    const hdrs = this.hdrs;
    if (header === null) {
      // Six stores, not fill(): fill is a call into the runtime, per frame.
      hdrs[h] = 0;
      hdrs[h + 1] = 0;
      hdrs[h + 2] = 0;
      hdrs[h + 3] = 0;
      hdrs[h + 4] = 0;
      hdrs[h + 5] = 0;
    } else {
      hdrs[h] = header.flags;
      hdrs[h + 1] = header.gsoType;
      hdrs[h + 2] = header.hdrLen;
      hdrs[h + 3] = header.gsoSize;
      hdrs[h + 4] = header.csumStart;
      hdrs[h + 5] = header.csumOffset;
    }
    this.n++;
    this.wr = at + len;
    this.usedBytes += len;
    return true;
  }

  /** Offset in {@link data} of the `i`-th oldest frame (0: the oldest). */
  offsetAt(i: number): number {
    return this.offs[this.slot(i)]!;
  }

  /** Length of the `i`-th oldest frame. */
  lengthAt(i: number): number {
    return this.lens[this.slot(i)]!;
  }

  /** Copies the header of the `i`-th oldest frame into `out`. */
  headerAt(i: number, out: NetHeader): NetHeader {
    const h = this.slot(i) * HDR_FIELDS;
    const hdrs = this.hdrs;
    out.flags = hdrs[h]!;
    out.gsoType = hdrs[h + 1]!;
    out.hdrLen = hdrs[h + 2]!;
    out.gsoSize = hdrs[h + 3]!;
    out.csumStart = hdrs[h + 4]!;
    out.csumOffset = hdrs[h + 5]!;
    return out;
  }

  /** Replaces the oldest frame's flags (after its checksum was completed in place). */
  setOldestFlags(flags: number): void {
    this.hdrs[this.head * HDR_FIELDS] = flags;
  }

  /** Drops the oldest frame (no-op when empty). */
  shift(): void {
    if (this.n === 0) return;
    this.usedBytes -= this.lens[this.head]!;
    this.head = this.slot(1);
    this.n--;
    if (this.n === 0) {
      this.head = 0;
      this.wr = 0;
    }
  }

  /** Drops every frame. */
  clear(): void {
    this.head = 0;
    this.n = 0;
    this.wr = 0;
    this.usedBytes = 0;
  }
}
