/**
 * Where a virtio-blk device keeps its bytes.
 *
 * The interface is synchronous: a device on the same thread as its emulator calls it from
 * `queueNotify` and completes each request only after the call returned, so a request the
 * driver sees completed with VIRTIO_BLK_S_OK has reached the backend (and, after a completed
 * flush, stable storage). A backend reports an I/O failure by throwing; the device turns any
 * exception from a backend call into VIRTIO_BLK_S_IOERR for that request and carries on.
 *
 * Offsets and lengths are byte counts (safe integers). The device checks every range against
 * {@link BlockBackend.size} before calling, so a backend never sees an access past its end.
 */
export interface BlockBackend {
  /** Size of the disk in bytes; the device exposes `floor(size / 512)` sectors. */
  readonly size: number;
  /** Writes are refused (the device offers VIRTIO_BLK_F_RO). */
  readonly readOnly: boolean;
  /** {@link flush} makes completed writes durable (the device offers VIRTIO_BLK_F_FLUSH). */
  readonly supportsFlush: boolean;
  /** {@link discard} is implemented (the device offers VIRTIO_BLK_F_DISCARD). */
  readonly supportsDiscard: boolean;
  /** {@link writeZeroes} is implemented (the device offers VIRTIO_BLK_F_WRITE_ZEROES). */
  readonly supportsWriteZeroes: boolean;
  /** A write-zeroes request with `unmap` may deallocate storage (config `write_zeroes_may_unmap`). */
  readonly writeZeroesMayUnmap: boolean;

  /** Copies `length` bytes at `offset` of the disk into `dst[dstOffset ..]`. */
  read(offset: number, dst: Uint8Array, dstOffset: number, length: number): void;
  /** Copies `src[srcOffset .. srcOffset + length)` to the disk at `offset`. */
  write(offset: number, src: Uint8Array, srcOffset: number, length: number): void;
  /**
   * Optional: fills `buffers`, in order, from the disk at `offset` onwards, as {@link read}
   * would one by one. A backend where each call is costly (a system call per request) offers
   * it so that a request scattered over many guest pages costs one call, not one per page.
   * The device passes at most {@link MAX_VECTOR_BUFFERS} buffers per call.
   */
  readv?(offset: number, buffers: readonly Uint8Array[]): void;
  /** Optional: writes `buffers`, in order, to the disk at `offset` onwards (see {@link readv}). */
  writev?(offset: number, buffers: readonly Uint8Array[]): void;
  /** Makes every write that returned before this call durable. */
  flush(): void;
  /**
   * Optional: the same transfers, asynchronous (see {@link AsyncBlockIo}). A device created
   * with `asyncIo` serves reads, writes and flushes through them, several at a time.
   */
  readonly async?: AsyncBlockIo;
  /** The range's contents become unspecified; storage may be released. */
  discard(offset: number, length: number): void;
  /** The range reads as zeroes afterwards; with `unmap`, storage may be released. */
  writeZeroes(offset: number, length: number, unmap: boolean): void;
}

/** How an asynchronous backend call ends: `null`, or the error that failed it. */
export type BlockIoDone = (error: Error | null) => void;

/**
 * Asynchronous transfers of a {@link BlockBackend}: each call starts the transfer and returns;
 * `done` runs later, on the caller's event loop, once the transfer has finished. Buffers are
 * views of guest memory that stay valid until then.
 */
export interface AsyncBlockIo {
  readv(offset: number, buffers: Uint8Array[], done: BlockIoDone): void;
  writev(offset: number, buffers: Uint8Array[], done: BlockIoDone): void;
  /** Makes every write whose `done` ran before this call durable. */
  flush(done: BlockIoDone): void;
}

/** Most buffers the device passes to one {@link BlockBackend.readv} / `writev` call (IOV_MAX). */
export const MAX_VECTOR_BUFFERS = 1024;

/** Options of {@link MemoryBackend}. */
export interface MemoryBackendOptions {
  readOnly?: boolean;
  /** Offer flush (default true; a flush of memory does nothing but is honest: memory is the store). */
  flush?: boolean;
  /** Offer discard (default true). */
  discard?: boolean;
  /** Offer write zeroes (default true). */
  writeZeroes?: boolean;
}

/**
 * A disk held in a `Uint8Array` (browser-safe). Discard zero-fills the range, so reads after a
 * discard return zeroes (the spec leaves them unspecified; zeroes are one valid answer). The
 * counters let tests see what the device asked for.
 */
export class MemoryBackend implements BlockBackend {
  readonly readOnly: boolean;
  readonly supportsFlush: boolean;
  readonly supportsDiscard: boolean;
  readonly supportsWriteZeroes: boolean;
  readonly writeZeroesMayUnmap = false;
  private data: Uint8Array;
  /** Calls made by the device. */
  flushes = 0;
  reads = 0;
  writes = 0;
  discards = 0;
  zeroings = 0;

  /** A disk of `size` zero bytes, or over `data` itself (not copied). */
  constructor(sizeOrData: number | Uint8Array, options: MemoryBackendOptions = {}) {
    if (typeof sizeOrData === 'number') {
      if (!Number.isSafeInteger(sizeOrData) || sizeOrData < 0) {
        throw new RangeError(`disk size ${sizeOrData} is not a non-negative safe integer`);
      }
      this.data = new Uint8Array(sizeOrData);
    } else {
      this.data = sizeOrData;
    }
    this.readOnly = options.readOnly ?? false;
    this.supportsFlush = options.flush ?? true;
    this.supportsDiscard = !this.readOnly && (options.discard ?? true);
    this.supportsWriteZeroes = !this.readOnly && (options.writeZeroes ?? true);
  }

  get size(): number {
    return this.data.length;
  }

  /** The disk's bytes (a live view). */
  get bytes(): Uint8Array {
    return this.data;
  }

  /** Grows or shrinks the disk, keeping the common prefix; call the device's `updateCapacity()`. */
  resize(size: number): void {
    if (!Number.isSafeInteger(size) || size < 0)
      throw new RangeError(`disk size ${size} is invalid`);
    const next = new Uint8Array(size);
    next.set(this.data.subarray(0, Math.min(size, this.data.length)));
    this.data = next;
  }

  read(offset: number, dst: Uint8Array, dstOffset: number, length: number): void {
    this.reads++;
    dst.set(this.data.subarray(offset, offset + length), dstOffset);
  }

  write(offset: number, src: Uint8Array, srcOffset: number, length: number): void {
    if (this.readOnly) throw new Error('memory backend is read-only');
    this.writes++;
    this.data.set(src.subarray(srcOffset, srcOffset + length), offset);
  }

  flush(): void {
    this.flushes++;
  }

  discard(offset: number, length: number): void {
    if (!this.supportsDiscard) throw new Error('memory backend does not discard');
    this.discards++;
    this.data.fill(0, offset, offset + length);
  }

  writeZeroes(offset: number, length: number, _unmap: boolean): void {
    if (!this.supportsWriteZeroes) throw new Error('memory backend does not write zeroes');
    this.zeroings++;
    this.data.fill(0, offset, offset + length);
  }
}
