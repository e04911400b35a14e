import {
  BLK_CONFIG,
  VIRTIO_BLK_F_BLK_SIZE,
  VIRTIO_BLK_F_DISCARD,
  VIRTIO_BLK_F_MQ,
  VIRTIO_BLK_F_RO,
  VIRTIO_BLK_F_SEG_MAX,
  VIRTIO_BLK_F_SIZE_MAX,
  VIRTIO_BLK_F_TOPOLOGY,
  VIRTIO_BLK_F_WRITE_ZEROES,
} from '../../devices/block/config.js';
import {
  BLK_HEADER_BYTES,
  BLK_ID_BYTES,
  SECTOR_BYTES,
  VIRTIO_BLK_S_OK,
  VIRTIO_BLK_T_DISCARD,
  VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_GET_ID,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
  VIRTIO_BLK_T_WRITE_ZEROES,
} from '../../devices/block/request.js';
import {
  featureBit,
  hasFeature,
  STATUS_DEVICE_NEEDS_RESET,
  VIRTIO_ID_BLOCK,
} from '../../devices/device.js';
import { VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1 } from '../../queue/constants.js';
import { INT_CONFIG_CHANGE } from '../../transport/mmio.js';
import type { MmioGuestDriver } from '../mmio.js';
import type { DriverQueue } from '../queue.js';
import type { DriverBuffer } from '../split.js';
import { Arena } from './block-arena.js';
import {
  type BlockCompletion,
  type BlockDriverConfig,
  type BlockDriverOptions,
  type BlockDriverRequest,
  BlockRequestAbortedError,
  BlockStatusError,
  type BlockTicket,
  encodeSegments,
} from './block-request.js';
import { type InterruptWaiter, sameThread } from './waiter.js';

interface Pending extends BlockTicket {
  request: BlockDriverRequest;
  base: number;
  bytes: number;
  dataAddr: number;
  dataLen: number;
  resolve(c: BlockCompletion): void;
  reject(e: Error): void;
}

/**
 * A minimal virtio-blk guest driver over {@link MmioGuestDriver}, for tests, demos and
 * benchmarks: negotiation, configuration, and asynchronous requests with any number in flight.
 *
 * Each request's header, status byte, indirect table and data live in one block of a guest
 * memory arena allocated once. {@link enqueue} makes a request available without notifying;
 * {@link notify} sends the notifications owed; {@link submit} does both and waits. Completions
 * are collected by {@link poll} (called while waiting) and matched to requests by id.
 */
export class BlockDriver {
  features = 0n;
  config: BlockDriverConfig | null = null;
  private readonly waiter: InterruptWaiter;
  private arena: Arena | null = null;
  private pending: (Pending | undefined)[][] = [];
  private owed: boolean[] = [];
  private nextQueue = 0;

  constructor(
    readonly mmio: MmioGuestDriver,
    private readonly options: BlockDriverOptions = {},
  ) {
    this.waiter = options.waiter ?? sameThread;
  }

  /** Queues in use. */
  get numQueues(): number {
    return this.pending.length;
  }

  /** The driver-side queue `i` (for tests that build chains by hand). */
  queue(i: number): DriverQueue {
    const q = this.mmio.queues[i];
    if (q === undefined) throw new RangeError(`queue ${i} is not set up`);
    return q;
  }

  /** Requests in flight. */
  get inFlight(): number {
    let n = 0;
    for (const p of this.pending) for (const x of p) if (x !== undefined) n++;
    return n;
  }

  /**
   * Probes, resets and initialises the device (§3.1.1): negotiates `wanted` (VERSION_1 is
   * added) intersected with what the device offers, reads the configuration, sets up the
   * queues and sets DRIVER_OK. Requests still in flight are aborted. Returns the features.
   */
  init(wanted: bigint): bigint {
    const id = this.mmio.probe();
    if (id !== VIRTIO_ID_BLOCK) throw new Error(`device id ${id} is not a block device`);
    this.abortAll('the driver re-initialised the device');
    this.features = 0n;
    this.config = null;
    const f = this.mmio.negotiate(wanted | featureBit(VIRTIO_F_VERSION_1));
    this.features = f;
    const config = this.readConfig();
    const n = hasFeature(f, VIRTIO_BLK_F_MQ)
      ? Math.min(config.numQueues, this.options.numQueues ?? config.numQueues)
      : 1;
    this.pending = [];
    this.owed = [];
    for (let i = 0; i < n; i++) {
      const q = this.mmio.setupQueue(i, this.options.queueSize);
      this.pending.push(new Array<Pending | undefined>(q.size).fill(undefined));
      this.owed.push(false);
    }
    if (this.arena === null) {
      const bytes = this.options.arenaBytes ?? 1 << 20;
      const base = this.mmio.alloc.alloc(bytes, 4096);
      this.arena = new Arena(base, base + bytes);
    } else {
      this.arena.reset();
    }
    this.nextQueue = 0;
    this.mmio.start();
    return f;
  }

  /** Resets the device (status 0); every request in flight is rejected. */
  reset(): void {
    this.mmio.reset();
    this.abortAll('the driver reset the device');
    this.pending = [];
    this.owed = [];
    this.arena?.reset();
  }

  /** Reads the configuration space (§5.2.4), fields of negotiated features only. */
  readConfig(): BlockDriverConfig {
    const m = this.mmio;
    const f = this.features;
    const has = (bit: number) => hasFeature(f, bit);
    const C = BLK_CONFIG;
    const u32 = (o: number) => m.readConfig(o, 4);
    const config: BlockDriverConfig = {
      capacity: Number(m.readConfigU64(C.CAPACITY)),
      readOnly: has(VIRTIO_BLK_F_RO),
      sizeMax: has(VIRTIO_BLK_F_SIZE_MAX) ? u32(C.SIZE_MAX) : null,
      segMax: has(VIRTIO_BLK_F_SEG_MAX) ? u32(C.SEG_MAX) : null,
      blkSize: has(VIRTIO_BLK_F_BLK_SIZE) ? u32(C.BLK_SIZE) : null,
      topology: has(VIRTIO_BLK_F_TOPOLOGY)
        ? {
            physicalBlockExp: m.readConfig(C.PHYSICAL_BLOCK_EXP, 1),
            alignmentOffset: m.readConfig(C.ALIGNMENT_OFFSET, 1),
            minIoSize: m.readConfig(C.MIN_IO_SIZE, 2),
            optIoSize: u32(C.OPT_IO_SIZE),
          }
        : null,
      numQueues: has(VIRTIO_BLK_F_MQ) ? m.readConfig(C.NUM_QUEUES, 2) : 1,
      discard: has(VIRTIO_BLK_F_DISCARD)
        ? {
            maxSectors: u32(C.MAX_DISCARD_SECTORS),
            maxSegments: u32(C.MAX_DISCARD_SEG),
            sectorAlignment: u32(C.DISCARD_SECTOR_ALIGNMENT),
          }
        : null,
      writeZeroes: has(VIRTIO_BLK_F_WRITE_ZEROES)
        ? {
            maxSectors: u32(C.MAX_WRITE_ZEROES_SECTORS),
            maxSegments: u32(C.MAX_WRITE_ZEROES_SEG),
            mayUnmap: m.readConfig(C.WRITE_ZEROES_MAY_UNMAP, 1) !== 0,
          }
        : null,
    };
    this.config = config;
    return config;
  }

  // ---- requests ----

  /**
   * Builds `request` in guest memory and makes it available on `queue` (default: round robin)
   * without notifying the device; {@link notify} sends the notification if one is owed.
   */
  enqueue(request: BlockDriverRequest, queue?: number): BlockTicket {
    const qi = queue ?? this.pickQueue();
    const list = this.pending[qi];
    if (list === undefined) throw new RangeError(`queue ${qi} is not in use`);
    const arena = this.arena!;
    const memory = this.mmio.memory;
    const q = this.queue(qi);
    const { type, sector, readable, writable, readLen, tableBytes, bytes, indirect, seg } =
      this.plan(request);
    const base = arena.alloc(bytes);
    const header = base;
    const status = base + BLK_HEADER_BYTES;
    const table = base + 32;
    const readAddr = table + tableBytes;
    const dataAddr = readAddr + readLen;
    memory.writeU32(header, type >>> 0);
    memory.writeU32(header + 4, 0);
    if (typeof sector === 'bigint') memory.writeBigU64(header + 8, sector);
    else memory.writeU64(header + 8, sector);
    memory.writeU8(status, 0xff);
    if (readable !== null) memory.write(readAddr, readable);
    const r: DriverBuffer[] = [{ addr: header, len: BLK_HEADER_BYTES }];
    split(r, readAddr, readLen, seg);
    const w: DriverBuffer[] = [];
    split(w, dataAddr, writable, seg);
    w.push({ addr: status, len: 1 });
    let id: number;
    try {
      id = indirect ? q.addIndirect(table, r, w) : q.add(r, w);
    } catch (e) {
      arena.release(base, bytes);
      throw e;
    }
    if (q.kick()) this.owed[qi] = true;

    let resolve!: (c: BlockCompletion) => void;
    let reject!: (e: Error) => void;
    const promise = new Promise<BlockCompletion>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    // A rejection nobody awaits (the caller dropped the ticket) must not crash the process.
    promise.catch(() => {});
    const p: Pending = {
      queue: qi,
      id,
      promise,
      settled: false,
      request,
      base,
      bytes,
      dataAddr,
      dataLen: writable,
      resolve,
      reject,
    };
    list[id] = p;
    return p;
  }

  /** What `request` needs: its header fields, buffers, guest bytes and ring slots. */
  private plan(request: BlockDriverRequest) {
    let type: number;
    let sector: number | bigint = 0;
    let readable: Uint8Array | null = null;
    let writable = 0;
    switch (request.type) {
      case 'in':
        type = VIRTIO_BLK_T_IN;
        sector = request.sector;
        writable = request.sectors * SECTOR_BYTES;
        break;
      case 'out':
        type = VIRTIO_BLK_T_OUT;
        sector = request.sector;
        readable = request.data;
        break;
      case 'flush':
        type = VIRTIO_BLK_T_FLUSH;
        break;
      case 'get-id':
        type = VIRTIO_BLK_T_GET_ID;
        writable = BLK_ID_BYTES;
        break;
      case 'discard':
      case 'write-zeroes':
        type = request.type === 'discard' ? VIRTIO_BLK_T_DISCARD : VIRTIO_BLK_T_WRITE_ZEROES;
        readable = encodeSegments(request.segments);
        break;
      case 'raw':
        type = request.requestType;
        sector = request.sector ?? 0;
        readable = request.readable ?? null;
        writable = request.writableBytes ?? 0;
        break;
    }
    const readLen = readable !== null ? readable.length : 0;
    const seg = this.options.segmentBytes ?? 0;
    const pieces = (n: number) => (n === 0 ? 0 : seg > 0 ? Math.ceil(n / seg) : 1);
    const descs = pieces(readLen) + pieces(writable) + 2;
    const indirect =
      (this.options.useIndirect ?? true) && hasFeature(this.features, VIRTIO_F_INDIRECT_DESC);
    const tableBytes = indirect ? 16 * descs : 0;
    // Layout of the block: header, status (padded to 16), indirect table, readable data, writable data.
    const bytes = 32 + tableBytes + readLen + writable;
    return {
      type,
      sector,
      readable,
      writable,
      readLen,
      tableBytes,
      bytes,
      indirect,
      seg,
      descs,
      slots: indirect ? 1 : descs,
    };
  }

  /**
   * True when `request` fits on `queue` now (ring slots and guest memory); RangeError when it
   * never can.
   */
  fits(request: BlockDriverRequest, queue: number): boolean {
    const p = this.plan(request);
    const q = this.queue(queue);
    // §2.7.13.1 / §2.8.17 (and §2.7.5.3.1 for indirect tables): no chain longer than the queue.
    if (p.descs > q.size || p.bytes > this.arena!.size) {
      throw new RangeError(
        `a request of ${p.descs} descriptors and ${p.bytes} bytes can never fit queue ${queue}`,
      );
    }
    return q.numFree >= p.slots && this.arena!.canAlloc(p.bytes);
  }

  /** Sends the available-buffer notifications owed (all queues, or one). */
  notify(queue?: number): void {
    for (let i = 0; i < this.owed.length; i++) {
      if ((queue === undefined || queue === i) && this.owed[i] === true) {
        this.owed[i] = false;
        this.mmio.notify(i);
      }
    }
  }

  /**
   * Acknowledges the interrupt and collects every used buffer; returns how many requests
   * completed. A device in DEVICE_NEEDS_RESET aborts every request in flight; a configuration
   * change interrupt re-reads {@link config}.
   */
  poll(): number {
    const bits = this.mmio.ackInterrupt();
    let n = 0;
    for (let qi = 0; qi < this.pending.length; qi++) {
      const q = this.mmio.queues[qi];
      const list = this.pending[qi]!;
      if (q === undefined) continue;
      for (let id = q.popUsed(); id >= 0; id = q.popUsed()) {
        const p = list[id];
        if (p === undefined)
          throw new Error(`device completed id ${id} on queue ${qi}, which is not in flight`);
        list[id] = undefined;
        this.complete(p, q.lastUsedLen);
        n++;
      }
    }
    if ((bits & INT_CONFIG_CHANGE) !== 0 || n === 0) {
      if ((this.mmio.status & STATUS_DEVICE_NEEDS_RESET) !== 0) {
        this.abortAll('the device needs a reset');
      } else if ((bits & INT_CONFIG_CHANGE) !== 0 && this.config !== null) {
        // §5.2.6.1: the driver SHOULD re-read capacity after a configuration change.
        this.readConfig();
      }
    }
    return n;
  }

  private complete(p: Pending, usedLen: number): void {
    const memory = this.mmio.memory;
    const status = memory.readU8(p.base + BLK_HEADER_BYTES);
    let data: Uint8Array | null = null;
    if (p.dataLen > 0 && (status === VIRTIO_BLK_S_OK || p.request.type === 'raw')) {
      data = new Uint8Array(p.dataLen);
      memory.read(p.dataAddr, data);
    }
    this.arena!.release(p.base, p.bytes);
    p.settled = true;
    p.resolve({ status, usedLen, data });
  }

  /** Waits until `ticket` completes (polling between waits) and returns its completion. */
  async wait(ticket: BlockTicket): Promise<BlockCompletion> {
    const max = this.options.maxWaits ?? 10000;
    for (let n = 0; !ticket.settled; n++) {
      this.poll();
      if (ticket.settled) break;
      if (n >= max)
        throw new Error(`block request ${ticket.id} on queue ${ticket.queue} did not complete`);
      await this.waiter.wait();
    }
    return ticket.promise;
  }

  /**
   * Enqueues (first waiting for room when the ring or the arena is full), notifies and waits:
   * the request's completion, whatever its status.
   */
  async submit(request: BlockDriverRequest, queue?: number): Promise<BlockCompletion> {
    const qi = queue ?? this.pickQueue();
    // A full ring or arena: let the device catch up, collecting completions, then retry.
    const max = this.options.maxWaits ?? 10000;
    for (let n = 0; !this.fits(request, qi); n++) {
      if (n >= max) throw new Error(`no room for a block request on queue ${qi}`);
      this.notify();
      if (this.poll() === 0) await this.waiter.wait();
    }
    const t = this.enqueue(request, qi);
    this.notify(t.queue);
    return this.wait(t);
  }

  private async ok(request: BlockDriverRequest, queue?: number): Promise<BlockCompletion> {
    const c = await this.submit(request, queue);
    if (c.status !== VIRTIO_BLK_S_OK) throw new BlockStatusError(c.status, request.type);
    return c;
  }

  /** Reads `sectors` sectors from `sector`. */
  async read(sector: number, sectors: number, queue?: number): Promise<Uint8Array> {
    const c = await this.ok({ type: 'in', sector, sectors }, queue);
    return c.data ?? new Uint8Array(0);
  }

  /** Writes `data` (a multiple of 512 bytes) at `sector`. */
  async write(sector: number, data: Uint8Array, queue?: number): Promise<void> {
    await this.ok({ type: 'out', sector, data }, queue);
  }

  async flush(queue?: number): Promise<void> {
    await this.ok({ type: 'flush' }, queue);
  }

  /** The device ID string (up to 20 ASCII characters). */
  async getId(queue?: number): Promise<string> {
    const c = await this.ok({ type: 'get-id' }, queue);
    const b = c.data ?? new Uint8Array(0);
    let end = b.indexOf(0);
    if (end < 0) end = b.length;
    return String.fromCharCode(...b.subarray(0, end));
  }

  async discard(sector: number, sectors: number, queue?: number): Promise<void> {
    await this.ok({ type: 'discard', segments: [{ sector, sectors }] }, queue);
  }

  async writeZeroes(sector: number, sectors: number, unmap = false, queue?: number): Promise<void> {
    await this.ok({ type: 'write-zeroes', segments: [{ sector, sectors, unmap }] }, queue);
  }

  private pickQueue(): number {
    const n = this.pending.length;
    if (n === 0) throw new Error('the block driver is not initialised');
    const q = this.nextQueue % n;
    this.nextQueue = q + 1;
    return q;
  }

  private abortAll(reason: string): void {
    for (const list of this.pending) {
      for (let id = 0; id < list.length; id++) {
        const p = list[id];
        if (p === undefined) continue;
        list[id] = undefined;
        p.settled = true;
        p.reject(new BlockRequestAbortedError(reason));
      }
    }
  }
}

/** Appends descriptors covering [addr, addr + len), each at most `seg` bytes (0: one). */
function split(out: DriverBuffer[], addr: number, len: number, seg: number): void {
  const step = seg > 0 ? seg : len;
  for (let off = 0; off < len; off += step)
    out.push({ addr: addr + off, len: Math.min(step, len - off) });
}
