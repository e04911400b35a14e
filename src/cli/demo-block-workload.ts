/** The demo guest's virtio-blk workload (see demo-workloads.ts for the others). */
import { readSync } from 'node:fs';
import { VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO } from '../devices/block/config.js';
import { SECTOR_BYTES, VIRTIO_BLK_S_OK } from '../devices/block/request.js';
import { featureBit, hasFeature } from '../devices/device.js';
import { BlockDriver } from '../driver/devices/block.js';
import type { BlockDriverRequest } from '../driver/devices/block-request.js';

import {
  DRAIN_MS,
  describeNegotiated,
  emptyReport,
  equal,
  type GuestDevice,
  pause,
  type Workload,
  Xorshift,
} from './demo-workloads.js';

/** Bytes of the built-in disk image. */
export const DEMO_DISK_BYTES = 8 << 20;
const BLOCK_BYTES = 4096;

/** Fills a fresh built-in disk image with a recognisable pattern. */
export function makeDiskImage(): SharedArrayBuffer {
  const sab = new SharedArrayBuffer(DEMO_DISK_BYTES);
  const words = new Uint32Array(sab);
  for (let i = 0; i < words.length; i++) words[i] = Math.imul(i, 2654435761) >>> 0;
  return sab;
}

/** Where the block workload finds the truth about the disk's contents. */
export type DiskTruth =
  /** The built-in image: what the guest believes the disk holds (it is the only writer). */
  | { kind: 'shadow'; bytes: Uint8Array }
  /** A read-only image file, read directly for comparison. */
  | { kind: 'file'; fd: number; size: number };

/**
 * virtio-blk: 32 random 4 KiB requests in flight (70% reads, 30% writes, and a flush every
 * 256 requests when negotiated; reads only on a read-only image), every read compared with
 * what the disk must hold.
 */
export class BlockWorkload implements Workload {
  readonly report = emptyReport('block');
  private readonly driver: BlockDriver;
  private flushes = false;

  constructor(
    private readonly dev: GuestDevice,
    private readonly truth: DiskTruth,
    private readonly seed: number,
  ) {
    this.driver = new BlockDriver(dev.mmio, {
      waiter: dev.waiter,
      queueSize: 128,
      arenaBytes: 1 << 20,
    });
  }

  init(wanted: bigint): void {
    const f = this.driver.init(
      wanted | featureBit(VIRTIO_BLK_F_FLUSH) | featureBit(VIRTIO_BLK_F_RO),
    );
    describeNegotiated(this.report, f);
    this.flushes = hasFeature(f, VIRTIO_BLK_F_FLUSH);
    const ro = this.driver.config?.readOnly === true;
    this.report.note = ro
      ? 'random 4 KiB reads, checked against the file'
      : '4 KiB random 70% read / 30% write, reads checked';
  }

  async run(deadline: number, tick: () => void): Promise<void> {
    const d = this.driver;
    const cfg = d.config!;
    const readOnly = cfg.readOnly;
    const blocks = Math.floor((cfg.capacity * SECTOR_BYTES) / BLOCK_BYTES);
    if (blocks === 0) throw new Error('the disk is smaller than 4 KiB');
    const rand = new Xorshift(this.seed);
    const busy = new Uint8Array(blocks);
    const depth = 32;
    let inflight = 0;
    let sinceFlush = 0;
    let rounds = 0;
    let failure: Error | null = null;
    let drainUntil = 0;
    const expected = new Uint8Array(BLOCK_BYTES);
    const complete = (
      block: number,
      write: Uint8Array | null,
      status: number,
      data: Uint8Array | null,
    ): void => {
      inflight--;
      busy[block] = 0;
      this.report.requests++;
      if (status !== VIRTIO_BLK_S_OK) {
        this.report.errors++;
        return;
      }
      this.report.bytes += BLOCK_BYTES;
      if (write !== null) {
        if (this.truth.kind === 'shadow') this.truth.bytes.set(write, block * BLOCK_BYTES);
        return;
      }
      this.expect(block, expected);
      if (data === null || !equal(data, expected)) {
        this.report.errors++;
        failure ??= new Error(
          `block ${block}: the data read back differs from what the disk holds`,
        );
      }
    };
    for (;;) {
      if (failure !== null) throw failure;
      const now = performance.now();
      const submitting = now < deadline;
      if (!submitting && inflight === 0) break;
      if (!submitting && drainUntil === 0) drainUntil = now + DRAIN_MS;
      if (drainUntil !== 0 && now > drainUntil)
        throw new Error(`${inflight} block requests never came back`);
      while (submitting && inflight < depth) {
        let block = rand.below(blocks);
        for (let k = 0; k < 8 && busy[block] !== 0; k++) block = rand.below(blocks);
        if (busy[block] !== 0) break;
        const sector = (block * BLOCK_BYTES) / SECTOR_BYTES;
        let request: BlockDriverRequest;
        let write: Uint8Array | null = null;
        if (this.flushes && !readOnly && ++sinceFlush >= 256) {
          sinceFlush = 0;
          request = { type: 'flush' };
        } else if (!readOnly && rand.below(10) < 3) {
          write = new Uint8Array(BLOCK_BYTES);
          const words = new Uint32Array(write.buffer);
          for (let i = 0; i < words.length; i++) words[i] = rand.next();
          request = { type: 'out', sector, data: write };
        } else {
          request = { type: 'in', sector, sectors: BLOCK_BYTES / SECTOR_BYTES };
        }
        if (!d.fits(request, 0)) break;
        const ticket = d.enqueue(request, 0);
        inflight++;
        if (request.type === 'flush') {
          ticket.promise.then(
            (c) => {
              inflight--;
              this.report.requests++;
              if (c.status !== VIRTIO_BLK_S_OK) this.report.errors++;
            },
            (e: unknown) => {
              failure ??= e instanceof Error ? e : new Error(String(e));
            },
          );
          continue;
        }
        busy[block] = 1;
        ticket.promise.then(
          (c) => complete(block, write, c.status, c.data),
          (e: unknown) => {
            failure ??= e instanceof Error ? e : new Error(String(e));
          },
        );
      }
      d.notify();
      const got = d.poll();
      tick();
      // Completions run as promise reactions: an await lets them run before the next round.
      if (got === 0 && inflight > 0) await this.dev.waiter.wait();
      else if ((++rounds & 15) === 0) await pause();
      else await Promise.resolve();
    }
  }

  /** What block `block` of the disk must hold, into `out`. */
  private expect(block: number, out: Uint8Array): void {
    const t = this.truth;
    if (t.kind === 'shadow') {
      out.set(t.bytes.subarray(block * BLOCK_BYTES, (block + 1) * BLOCK_BYTES));
      return;
    }
    let off = 0;
    while (off < out.length) {
      const n = readSync(t.fd, out, off, out.length - off, block * BLOCK_BYTES + off);
      if (n === 0) break;
      off += n;
    }
    out.fill(0, off);
  }

  finish(): void {
    this.driver.reset();
  }
}
