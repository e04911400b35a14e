/**
 * The data part of a block request, moved between guest memory and the backend piece by
 * piece (see {@link DataCursor}).
 */
import { ChainCursor } from '../../iovec/cursor.js';
import type { DescriptorChain } from '../../queue/chain.js';
import { type BlockBackend, MAX_VECTOR_BUFFERS } from './backend.js';

/**
 * A cursor over the data part of a request that moves bytes between guest memory and the
 * backend piece by piece: the backend reads straight into, and writes straight from, guest
 * memory, with no bounce buffer and no allocation.
 */
export class DataCursor extends ChainCursor {
  /** Over the chain's device-readable part. */
  readable(chain: DescriptorChain): this {
    this.bind(chain, true);
    return this;
  }

  /** Over the chain's device-writable part. */
  writable(chain: DescriptorChain): this {
    this.bind(chain, false);
    return this;
  }

  /**
   * Views of the next `length` bytes of guest memory, piece by piece, for an asynchronous
   * transfer; their guest addresses go to `addrs` (to mark them dirty once written).
   */
  pieces(length: number, bufs: Uint8Array[], addrs: number[]): void {
    this.need(length, 'transfer');
    let n = length;
    while (n > 0) {
      const k = Math.min(n, this.pLeft);
      const r = this.region!;
      const p = this.pos;
      bufs.push(r.bytes.subarray(p, p + k));
      addrs.push(r.base + p);
      this.advance(k);
      n -= k;
    }
  }

  /** Views of the pieces of one vectored backend call (emptied after each call). */
  private readonly vector: Uint8Array[] = [];

  /** Fills the next `length` bytes of guest memory from the disk at `offset`. */
  fromBackend(backend: BlockBackend, offset: number, length: number): void {
    this.need(length, 'read from the disk');
    if (length > this.pLeft && backend.readv !== undefined) {
      this.vectored(backend, offset, length, true);
      return;
    }
    let n = length;
    let at = offset;
    while (n > 0) {
      const k = Math.min(n, this.pLeft);
      const r = this.region!;
      const p = this.pos;
      backend.read(at, r.bytes, p, k);
      r.markDirty(r.base + p, k);
      this.advance(k);
      at += k;
      n -= k;
    }
  }

  /** Writes the next `length` bytes of guest memory to the disk at `offset`. */
  toBackend(backend: BlockBackend, offset: number, length: number): void {
    this.need(length, 'write to the disk');
    if (length > this.pLeft && backend.writev !== undefined) {
      this.vectored(backend, offset, length, false);
      return;
    }
    let n = length;
    let at = offset;
    while (n > 0) {
      const k = Math.min(n, this.pLeft);
      backend.write(at, this.region!.bytes, this.pos, k);
      this.advance(k);
      at += k;
      n -= k;
    }
  }

  /**
   * Moves the next `length` bytes (more than one piece) with one `readv` / `writev` per
   * {@link MAX_VECTOR_BUFFERS} pieces: a request scattered over guest pages is one system
   * call for a file, not one per page.
   */
  private vectored(backend: BlockBackend, offset: number, length: number, read: boolean): void {
    const v = this.vector;
    let n = length;
    let at = offset;
    try {
      while (n > 0) {
        let bytes = 0;
        let count = 0;
        while (bytes < n && count < MAX_VECTOR_BUFFERS) {
          const k = Math.min(n - bytes, this.pLeft);
          const r = this.region!;
          const p = this.pos;
          v[count++] = r.bytes.subarray(p, p + k);
          if (read) r.markDirty(r.base + p, k);
          this.advance(k);
          bytes += k;
        }
        v.length = count;
        if (read) backend.readv!(at, v);
        else backend.writev!(at, v);
        at += bytes;
        n -= bytes;
      }
    } finally {
      // Holds no view of guest memory between requests.
      v.length = 0;
    }
  }
}
