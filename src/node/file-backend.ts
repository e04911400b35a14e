import fs from 'node:fs';
import type { AsyncBlockIo, BlockBackend, BlockIoDone } from '../devices/block/backend.js';

export interface FileBackendOptions {
  /** Open the file read-only (the device then offers VIRTIO_BLK_F_RO). Default false. */
  readOnly?: boolean;
  /** Create the file when it does not exist (not with readOnly). Default false. */
  create?: boolean;
  /** Set the file to this many bytes after opening (extending with zeroes or truncating). */
  size?: number;
  /**
   * Releases a byte range of the file (`fallocate(fd, PUNCH_HOLE | KEEP_SIZE, ...)`, which
   * Node lacks; virtq/vhost-user's native addon has it). With it the device offers discard,
   * and write-zeroes with `unmap` may release the range too.
   */
  punchHole?: PunchHole;
}

/** Releases [offset, offset + length) of the file `fd`; afterwards it reads as zeroes. */
export type PunchHole = (fd: number, offset: number, length: number) => void;

/** The unit of a virtio-blk disk's capacity. */
const SECTOR = 512;

function roundUpToSector(bytes: number): number {
  return Math.ceil(bytes / SECTOR) * SECTOR;
}

/** Size of the zero buffer write-zeroes writes from (allocated once per backend). */
const ZERO_CHUNK = 64 * 1024;

/**
 * A disk image in a file, for Node (not browser-safe: import it from `virtq/node`).
 *
 * Reads and writes are positional (`fs.readSync` / `fs.writeSync` with a position, looping
 * over short transfers) on one file descriptor, so requests need no seek and no shared file
 * position. A request over several guest buffers is one `preadv` / `pwritev` (`readv` and
 * `writev`), not one call per buffer. `flush()` is `fs.fdatasyncSync`: after it returns,
 * every write that returned before it is on stable storage, which is what
 * VIRTIO_BLK_T_FLUSH promises the driver.
 *
 * Discard is offered only when the caller supplies `punchHole` (Node has no
 * `fallocate(PUNCH_HOLE)`; the vhost-user native addon does): a discard then releases the
 * range, and reads return zeroes. A file system that cannot punch holes gets zeroes written
 * instead, so a discard never fails for that reason. Write-zeroes writes zero bytes, or, with
 * `unmap` and `punchHole`, releases the range (`write_zeroes_may_unmap` is then 1).
 *
 * A file whose length is not a whole number of 512-byte sectors is served as the disk it starts:
 * {@link size} is rounded up to the next sector, the missing bytes of the last sector read as
 * zeroes, and a write there makes the file longer (as qemu-storage-daemon and QEMU's own
 * virtio-blk do), so no byte of the file is out of the guest's reach.
 *
 * The size is taken when the file is opened; after the file grows or shrinks, call
 * {@link refreshSize} and then the device's `updateCapacity()`. Every failing call throws the
 * `fs` error, which the device reports to the driver as VIRTIO_BLK_S_IOERR.
 */
export class FileBackend implements BlockBackend {
  readonly readOnly: boolean;
  readonly supportsFlush = true;
  readonly supportsDiscard: boolean;
  readonly supportsWriteZeroes: boolean;
  readonly writeZeroesMayUnmap: boolean;
  private readonly punchHole: PunchHole | null;
  private fdOrNull: number | null;
  /** The disk's size: the file's, rounded up to a whole sector. */
  private bytes: number;
  /** The file's own length, as far as this backend knows (it grows with writes past it). */
  private fileBytes: number;
  private zeroes: Uint8Array | null = null;

  /** Wraps an open descriptor (closed by {@link close}); `size` defaults to the file's size. */
  constructor(
    fd: number,
    options: { readOnly?: boolean; size?: number; punchHole?: PunchHole } = {},
  ) {
    this.fdOrNull = fd;
    this.readOnly = options.readOnly ?? false;
    this.supportsWriteZeroes = !this.readOnly;
    this.punchHole = this.readOnly ? null : (options.punchHole ?? null);
    this.supportsDiscard = this.punchHole !== null;
    this.writeZeroesMayUnmap = this.punchHole !== null;
    this.fileBytes = options.size ?? fs.fstatSync(fd).size;
    this.bytes = roundUpToSector(this.fileBytes);
  }

  /** Opens (optionally creating and sizing) the image at `path`. */
  static open(path: string, options: FileBackendOptions = {}): FileBackend {
    const readOnly = options.readOnly ?? false;
    if (readOnly && (options.create === true || options.size !== undefined)) {
      throw new TypeError('a read-only image cannot be created or resized');
    }
    const flags = readOnly
      ? 'r'
      : options.create === true
        ? fs.constants.O_RDWR | fs.constants.O_CREAT
        : 'r+';
    const fd = fs.openSync(path, flags, 0o644);
    try {
      if (options.size !== undefined) fs.ftruncateSync(fd, options.size);
      return new FileBackend(fd, {
        readOnly,
        ...(options.punchHole !== undefined ? { punchHole: options.punchHole } : {}),
      });
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
  }

  private get fd(): number {
    if (this.fdOrNull === null) throw new Error('file backend is closed');
    return this.fdOrNull;
  }

  get size(): number {
    return this.bytes;
  }

  /** Re-reads the file's size (after it was resized from outside). */
  refreshSize(): number {
    this.fileBytes = fs.fstatSync(this.fd).size;
    this.bytes = roundUpToSector(this.fileBytes);
    return this.bytes;
  }

  read(offset: number, dst: Uint8Array, dstOffset: number, length: number): void {
    const fd = this.fd;
    let done = 0;
    while (done < length) {
      const n = fs.readSync(fd, dst, dstOffset + done, length - done, offset + done);
      if (n === 0) {
        const at = offset + done;
        // The padding of a last sector the file does not fill reads as zeroes; anything else
        // means the file shrank under the device: report it, do not invent data.
        if (at < this.fileBytes || offset + length > this.bytes) {
          throw new Error(`short read at byte ${at} of the image`);
        }
        dst.fill(0, dstOffset + done, dstOffset + length);
        return;
      }
      done += n;
    }
  }

  write(offset: number, src: Uint8Array, srcOffset: number, length: number): void {
    if (this.readOnly) throw new Error('file backend is read-only');
    const fd = this.fd;
    let done = 0;
    while (done < length) {
      done += fs.writeSync(fd, src, srcOffset + done, length - done, offset + done);
    }
    this.wrote(offset + length);
  }

  /** A write ending at `end` may have made the file longer (the last sector's padding). */
  private wrote(end: number): void {
    if (end > this.fileBytes) this.fileBytes = end;
  }

  /**
   * One `preadv` for all of `buffers` (what the device calls for a request over several guest
   * pages); a short transfer is finished buffer by buffer.
   */
  readv(offset: number, buffers: readonly Uint8Array[]): void {
    const n = fs.readvSync(this.fd, buffers as Uint8Array[], offset);
    this.finishVector(offset, buffers, n, true);
  }

  /** One `pwritev` for all of `buffers`; a short transfer is finished buffer by buffer. */
  writev(offset: number, buffers: readonly Uint8Array[]): void {
    if (this.readOnly) throw new Error('file backend is read-only');
    const n = fs.writevSync(this.fd, buffers as Uint8Array[], offset);
    this.finishVector(offset, buffers, n, false);
    this.wrote(offset + n);
  }

  /**
   * Asynchronous `preadv` / `pwritev` / `fdatasync` on libuv's thread pool (`fs.readv`,
   * `fs.writev`, `fs.fdatasync`), so a device can have several requests under way; a short
   * transfer is finished synchronously, buffer by buffer.
   */
  readonly async: AsyncBlockIo = {
    readv: (offset, buffers, done) => {
      fs.readv(this.fd, buffers, offset, (err, n) =>
        this.vectorDone(err, offset, buffers, n, true, done),
      );
    },
    writev: (offset, buffers, done) => {
      if (this.readOnly) {
        queueMicrotask(() => done(new Error('file backend is read-only')));
        return;
      }
      fs.writev(this.fd, buffers, offset, (err, n) =>
        this.vectorDone(err, offset, buffers, n, false, done),
      );
    },
    flush: (done) => {
      fs.fdatasync(this.fd, (err) => done(err));
    },
  };

  private vectorDone(
    err: Error | null,
    offset: number,
    buffers: Uint8Array[],
    n: number,
    read: boolean,
    done: BlockIoDone,
  ): void {
    if (err !== null) {
      done(err);
      return;
    }
    try {
      this.finishVector(offset, buffers, n, read);
      if (!read) this.wrote(offset + n);
    } catch (e) {
      done(e as Error);
      return;
    }
    done(null);
  }

  /** Moves whatever a vectored call left undone: the buffers past its first `done` bytes. */
  private finishVector(
    offset: number,
    buffers: readonly Uint8Array[],
    done: number,
    read: boolean,
  ): void {
    let at = 0;
    for (const b of buffers) {
      const len = b.length;
      const skip = Math.min(len, Math.max(0, done - at));
      if (skip < len) {
        if (read) this.read(offset + at + skip, b, skip, len - skip);
        else this.write(offset + at + skip, b, skip, len - skip);
      }
      at += len;
    }
  }

  flush(): void {
    fs.fdatasyncSync(this.fd);
  }

  discard(offset: number, length: number): void {
    if (this.punchHole === null) throw new Error('file backend does not support discard');
    this.release(offset, length);
  }

  writeZeroes(offset: number, length: number, unmap: boolean): void {
    if (this.readOnly) throw new Error('file backend is read-only');
    if (unmap && this.punchHole !== null) {
      this.release(offset, length);
      return;
    }
    this.fillZeroes(offset, length);
  }

  /** Punches a hole, or writes zeroes where the file system cannot. */
  private release(offset: number, length: number): void {
    if (length === 0) return;
    try {
      this.punchHole!(this.fd, offset, length);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code !== 'EOPNOTSUPP' && code !== 'ENOTSUP') throw e;
      this.fillZeroes(offset, length);
    }
  }

  private fillZeroes(offset: number, length: number): void {
    this.zeroes ??= new Uint8Array(ZERO_CHUNK);
    let done = 0;
    while (done < length) {
      const n = Math.min(ZERO_CHUNK, length - done);
      this.write(offset + done, this.zeroes, 0, n);
      done += n;
    }
  }

  /** Closes the file; later calls throw (and the device answers IOERR). */
  close(): void {
    if (this.fdOrNull === null) return;
    const fd = this.fdOrNull;
    this.fdOrNull = null;
    fs.closeSync(fd);
  }
}
