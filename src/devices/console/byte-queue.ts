import type { ChainWriter } from '../../iovec/writer.js';

/**
 * A FIFO of bytes over one growable ring buffer: the console's input waiting for receive
 * buffers. It never drops bytes; its owner bounds it with a high-water mark.
 */
export class ByteQueue {
  private buf: Uint8Array;
  private start = 0;
  private n = 0;

  constructor(initialCapacity = 4096) {
    this.buf = new Uint8Array(Math.max(16, initialCapacity));
  }

  /** Bytes queued. */
  get length(): number {
    return this.n;
  }

  /** Appends a copy of `bytes`. */
  push(bytes: Uint8Array): void {
    const len = bytes.length;
    if (this.n + len > this.buf.length) this.grow(this.n + len);
    const cap = this.buf.length;
    const end = (this.start + this.n) % cap;
    const first = Math.min(len, cap - end);
    this.buf.set(first === len ? bytes : bytes.subarray(0, first), end);
    if (first < len) this.buf.set(bytes.subarray(first), 0);
    this.n += len;
  }

  private grow(need: number): void {
    let cap = this.buf.length;
    while (cap < need) cap *= 2;
    const next = new Uint8Array(cap);
    this.copyOut(next, this.n);
    this.buf = next;
    this.start = 0;
  }

  /** Copies the oldest `count` bytes into `dst` (from 0) without removing them. */
  private copyOut(dst: Uint8Array, count: number): void {
    const cap = this.buf.length;
    const first = Math.min(count, cap - this.start);
    dst.set(this.buf.subarray(this.start, this.start + first), 0);
    if (first < count) dst.set(this.buf.subarray(0, count - first), first);
  }

  /** Moves up to `max` of the oldest bytes into `writer`; returns how many. */
  writeTo(writer: ChainWriter, max: number): number {
    const count = Math.min(max, this.n, writer.remaining);
    const cap = this.buf.length;
    const first = Math.min(count, cap - this.start);
    writer.write(this.buf, this.start, first);
    if (first < count) writer.write(this.buf, 0, count - first);
    this.start = (this.start + count) % cap;
    this.n -= count;
    if (this.n === 0) this.start = 0;
    return count;
  }

  /** A copy of every queued byte. */
  toBytes(): Uint8Array {
    const out = new Uint8Array(this.n);
    this.copyOut(out, this.n);
    return out;
  }

  clear(): void {
    this.start = 0;
    this.n = 0;
  }
}
