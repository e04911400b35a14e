import { isVirtqError } from '../../errors.js';
import { ChainReader } from '../../iovec/reader.js';
import { ChainWriter } from '../../iovec/writer.js';
import { joinU64 } from '../../memory/guest-memory.js';
import { DescriptorChain } from '../../queue/chain.js';
import { consoleLogger, type Logger } from '../../queue/logger.js';
import type { Queue } from '../../queue/queue.js';
import { defaultScheduler } from '../budget.js';
import { type DeviceContext, hasFeature, VIRTIO_ID_BLOCK, VirtioDeviceBase } from '../device.js';
import { type AsyncOp, AsyncTransfers } from './async-io.js';
import type { BlockBackend } from './backend.js';
import {
  BLK_CONFIG,
  BLK_CONFIG_SIZE,
  type BlockOptions,
  capacityBytes,
  checkU32,
  type EraseLimits,
  planBlockDevice,
  VIRTIO_BLK_F_DISCARD,
  VIRTIO_BLK_F_FLUSH,
  VIRTIO_BLK_F_WRITE_ZEROES,
  writeBlockConfig,
} from './config.js';
import { DataCursor } from './data-cursor.js';
import {
  BLK_HEADER_BYTES,
  BLK_ID_BYTES,
  BLK_SEGMENT_BYTES,
  BlockRequestScratch,
  parseBlockRequest,
  SECTOR_BYTES,
  typeMask,
  VIRTIO_BLK_S_IOERR,
  VIRTIO_BLK_S_OK,
  VIRTIO_BLK_S_UNSUPP,
  VIRTIO_BLK_T_DISCARD,
  VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_GET_ID,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
  VIRTIO_BLK_T_WRITE_ZEROES,
  VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
} from './request.js';
import { RevivedRequests } from './revived.js';
import {
  type BlockState,
  type BlockStats,
  emptyBlockStats,
  readBlockState,
  reviveBlockRequests,
  savedRequest,
} from './state.js';

/**
 * virtio-blk (device id 2, VIRTIO 1.2 §5.2) over a pluggable {@link BlockBackend}.
 *
 * Requests are served synchronously inside `queueNotify`, each queue on its own, in the order
 * the driver made them available; a request is completed (status written, used entry
 * published) only after the backend call it needed has returned, so an OK the driver sees is
 * never ahead of the backend. Outcomes:
 *
 * - VIRTIO_BLK_S_UNSUPP: unknown types, GET_LIFETIME / SECURE_ERASE / zoned requests, FLUSH
 *   without backend support, DISCARD / WRITE_ZEROES without the feature negotiated, and
 *   segment flags the spec reserves (§5.2.6.2).
 * - VIRTIO_BLK_S_IOERR: a range beyond `capacity` (a sector at or above 2^53 included), a
 *   write, discard or write-zeroes on a read-only device (§5.2.6.2), a request whose framing
 *   breaks §5.2.6.1 but which still ends in a writable status byte (header shorter than 16
 *   bytes, data in the wrong direction, a length that is not a multiple of 512 / 16, a GET_ID
 *   buffer other than 20 bytes, too many or too large segments), and any exception a backend
 *   call throws.
 * - DEVICE_NEEDS_RESET (§2.1.2): a chain with no device-writable byte (there is nowhere to put
 *   a status, so the request can be neither completed nor reported), and every malformed
 *   descriptor chain the queue rejects. Requests completed before it in the same notification
 *   are published first.
 *
 * The used length is the number of bytes the device wrote: the data of a successful IN or
 * GET_ID plus the status byte, else 1.
 *
 * Write-back semantics: with VIRTIO_BLK_F_FLUSH negotiated, writes are durable after a
 * completed FLUSH. When the backend can flush but the driver did not negotiate FLUSH, the
 * device flushes after every write, discard and write-zeroes before completing it, as §5.2.6.2
 * requires of a device that offered FLUSH.
 */
export class BlockDevice extends VirtioDeviceBase {
  readonly backend: BlockBackend;
  readonly stats: BlockStats = emptyBlockStats();
  /** The last exception a backend call threw. */
  lastBackendError: unknown = null;

  private readonly logger: Logger;
  private readonly idBytes: Uint8Array;
  /** Discard and write-zeroes limits, as the configuration space shows them. */
  private readonly limits: EraseLimits;
  private capacitySectors: number;

  // One set of per-request objects for the whole device.
  private readonly chain = new DescriptorChain();
  private readonly reader = new ChainReader();
  private readonly writer = new ChainWriter();
  private readonly data = new DataCursor();
  private readonly request = new BlockRequestScratch();
  /** Discard / write-zeroes segments of the request being served. */
  private readonly segments: Uint8Array;
  private readonly segmentView: DataView;

  /** Request types served in this driver session (bit `1 << type`). */
  private served = 0;
  /** FLUSH offered but not negotiated: every write is flushed before it completes. */
  private writeThrough = false;
  private readonly asyncIo: boolean;
  private readonly asyncMinBytes: number;
  /** Asynchronous transfers under way and their completions (`asyncIo`). */
  private readonly transfers: AsyncTransfers;
  /** Requests a restored state had under way, served again before the ring's next ones. */
  private readonly revived = new RevivedRequests();

  constructor(options: BlockOptions) {
    const plan = planBlockDevice(options);
    super(
      VIRTIO_ID_BLOCK,
      new Array<number>(plan.numQueues).fill(plan.queueSize),
      plan.features,
      BLK_CONFIG_SIZE,
      options,
    );
    const backend = options.backend;
    this.backend = backend;
    this.logger = options.logger ?? consoleLogger;
    this.asyncIo = options.asyncIo === true && backend.async !== undefined;
    this.asyncMinBytes = checkU32('asyncMinBytes', options.asyncMinBytes ?? 64 * 1024);
    this.transfers = new AsyncTransfers(
      {
        current: () => this.generation,
        accepting: () => this.ctx !== null && !this.needsReset,
        failed: (error, op) => this.backendFailed(error, op),
        transferred: (kind, length) => {
          if (kind === 'in') this.stats.bytesRead += length;
          else if (kind === 'out') this.stats.bytesWritten += length;
          else this.stats.flushes++;
        },
        countStatus: (status) => this.countStatus(status),
        publish: (index) => this.publish(index),
        fail: (e) => this.fail(e),
        logger: this.logger,
      },
      options.defer ?? ((callback) => defaultScheduler(callback, 0)),
    );
    this.limits = plan.limits;
    this.idBytes = plan.idBytes;
    this.segments = new Uint8Array(plan.maxSegments * BLK_SEGMENT_BYTES);
    this.segmentView = new DataView(this.segments.buffer);
    this.capacitySectors = writeBlockConfig(this.config, plan, options);
  }

  /** Capacity in 512-byte sectors, as the configuration space shows it. */
  get capacity(): number {
    return this.capacitySectors;
  }

  /**
   * Re-reads the backend's size after it changed; when the capacity differs, updates the
   * configuration space and sends a configuration change notification (§5.2.6.2). Returns
   * whether it changed.
   */
  updateCapacity(): boolean {
    const cap = Math.floor(this.backend.size / SECTOR_BYTES);
    if (cap === this.capacitySectors) return false;
    this.capacitySectors = cap;
    this.updateConfig(BLK_CONFIG.CAPACITY, capacityBytes(cap));
    return true;
  }

  protected override onActivate(ctx: DeviceContext): void {
    const f = ctx.features;
    const ro = this.backend.readOnly;
    let served = typeMask(VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_GET_ID);
    if (this.backend.supportsFlush) served |= 1 << VIRTIO_BLK_T_FLUSH;
    // A read-only device answers every modifying request with IOERR (§5.2.6.2), so those parse
    // as themselves even when their feature is not there.
    if (ro || hasFeature(f, VIRTIO_BLK_F_DISCARD)) served |= 1 << VIRTIO_BLK_T_DISCARD;
    if (ro || hasFeature(f, VIRTIO_BLK_F_WRITE_ZEROES)) served |= 1 << VIRTIO_BLK_T_WRITE_ZEROES;
    this.served = served >>> 0;
    // §5.2.6.2 (write becomes stable, case 1): FLUSH offered but not negotiated.
    this.writeThrough = this.backend.supportsFlush && !hasFeature(f, VIRTIO_BLK_F_FLUSH);
  }

  protected override onReset(): void {
    // The base class moved to a new generation: a transfer that ends now completes nothing.
    this.transfers.reset();
    this.revived.clear();
    this.served = 0;
    this.writeThrough = false;
    this.reader.reset();
    this.writer.reset();
  }

  protected processQueue(index: number, queue: Queue): void {
    const chain = this.chain;
    let done = 0;
    try {
      // A turn takes at most its budget of chains and bytes (a guest can keep the ring full,
      // or make each completed read make the next request available); the rest is served
      // in a later turn the device schedules itself.
      while (this.withinBudget(index)) {
        // popOrEnableNotification keeps avail_event current with EVENT_IDX (§2.7.10, §2.8.10).
        const c =
          this.revived.left === 0
            ? queue.popOrEnableNotification(chain)
            : (this.revived.take(index) ?? queue.popOrEnableNotification(chain));
        if (c === null) break;
        if (this.asyncIo && this.startAsync(index, queue, c)) continue;
        const len = this.serve(c);
        queue.addUsed(c.head, len);
        done++;
      }
    } finally {
      // Requests served before a broken one are completed, not lost.
      if (this.transfers.takeUnpublished(index) || done > 0) {
        this.publish(index);
      }
    }
  }

  /** Reads, writes and flushes go asynchronous (`asyncIo` with a backend that can). */
  get asyncTransfers(): boolean {
    return this.asyncIo;
  }

  /** Asynchronous transfers under way ({@link BlockOptions.asyncIo}). */
  get inFlight(): number {
    return this.transfers.pending;
  }

  /** Calls `callback` once no asynchronous transfer is under way (at once if none is). */
  whenIdle(callback: () => void): void {
    this.transfers.whenIdle(callback);
  }

  /**
   * Starts a read, write or flush asynchronously and returns true; false leaves the request to
   * the synchronous path (other types, errors found before any transfer, write-through).
   * The request is completed by the {@link AsyncTransfers} engine.
   */
  private startAsync(index: number, queue: Queue, c: DescriptorChain): boolean {
    const io = this.backend.async!;
    const req = parseBlockRequest(c, this.reader, this.served, this.request);
    const kind = req.kind;
    if (kind !== 'in' && kind !== 'out' && kind !== 'flush') return false;
    let length = 0;
    let offset = 0;
    if (kind !== 'flush') {
      length = req.dataLength;
      offset = req.sector * SECTOR_BYTES;
      if (length < this.asyncMinBytes || length === 0) return false;
      if (!this.inRange(req.sector, length / SECTOR_BYTES)) return false;
      if (kind === 'out' && (this.backend.readOnly || this.writeThrough)) return false;
    }
    this.spend(length);
    const bufs: Uint8Array[] = [];
    const addrs: number[] = [];
    if (kind === 'in') this.data.writable(c).pieces(length, bufs, addrs);
    else if (kind === 'out') {
      const d = this.data.readable(c);
      d.skipExact(BLK_HEADER_BYTES);
      d.pieces(length, bufs, addrs);
    }
    // The status byte: the last device-writable byte (§5.2.6).
    const statusBufs: Uint8Array[] = [];
    const statusAddrs: number[] = [];
    const st = this.data.writable(c);
    st.skipExact(this.request.statusOffset);
    st.pieces(1, statusBufs, statusAddrs);
    const op: AsyncOp = {
      index,
      queue,
      head: c.head,
      kind,
      length,
      bufs,
      addrs,
      status: statusBufs[0]!,
      statusAddr: statusAddrs[0]!,
      generation: this.generation,
      memory: this.ctx!.memory,
      saved: savedRequest(index, c),
    };
    this.transfers.start(op, io, offset);
    return true;
  }

  /** Serves one request and writes its status; returns the used length. */
  private serve(c: DescriptorChain): number {
    const req = parseBlockRequest(c, this.reader, this.served, this.request);
    let status: number;
    let written = 0;
    switch (req.kind) {
      case 'in':
        status = this.readData(c, req.sector, req.dataLength);
        if (status === VIRTIO_BLK_S_OK) written = req.dataLength;
        break;
      case 'out':
        status = this.writeData(c, req.sector, req.dataLength);
        break;
      case 'flush':
        status = this.flush();
        break;
      case 'get-id':
        this.writer.reset(c).writeExact(this.idBytes);
        status = VIRTIO_BLK_S_OK;
        written = BLK_ID_BYTES;
        break;
      case 'discard':
      case 'write-zeroes':
        status = this.eraseSegments(c, req.kind === 'discard', req.segments);
        break;
      case 'unsupported':
        status = VIRTIO_BLK_S_UNSUPP;
        break;
      case 'invalid':
        status = VIRTIO_BLK_S_IOERR;
        break;
    }
    // Reads and writes count against the turn's byte budget (erasures count in eraseSegments).
    if (req.kind === 'in' || req.kind === 'out' || req.kind === 'get-id')
      this.spend(req.dataLength);
    // §5.2.6: the status is the last device-writable byte.
    const w = this.writer.reset(c);
    w.skipExact(this.request.statusOffset);
    w.writeU8(status);
    this.countStatus(status);
    return written + 1;
  }

  /** Counts a completed request by its status (both the synchronous and asynchronous paths). */
  private countStatus(status: number): void {
    const s = this.stats;
    s.requests++;
    if (status === VIRTIO_BLK_S_IOERR) s.ioErrors++;
    else if (status === VIRTIO_BLK_S_UNSUPP) s.unsupported++;
  }

  /** True when sectors [sector, sector + count) lie inside the disk. */
  private inRange(sector: number, count: number): boolean {
    return sector <= this.capacitySectors && count <= this.capacitySectors - sector;
  }

  private readData(c: DescriptorChain, sector: number, length: number): number {
    // §5.2.6.1: a driver MUST NOT read beyond capacity; the device refuses with IOERR.
    if (!this.inRange(sector, length / SECTOR_BYTES)) return VIRTIO_BLK_S_IOERR;
    if (length === 0) return VIRTIO_BLK_S_OK;
    try {
      this.data.writable(c).fromBackend(this.backend, sector * SECTOR_BYTES, length);
    } catch (e) {
      return this.backendFailed(e, 'read');
    }
    this.stats.bytesRead += length;
    return VIRTIO_BLK_S_OK;
  }

  private writeData(c: DescriptorChain, sector: number, length: number): number {
    // §5.2.6.2: with VIRTIO_BLK_F_RO offered, a write fails with IOERR and writes nothing.
    if (this.backend.readOnly) return VIRTIO_BLK_S_IOERR;
    // §5.2.6.1: a driver MUST NOT write beyond capacity; the device refuses with IOERR.
    if (!this.inRange(sector, length / SECTOR_BYTES)) return VIRTIO_BLK_S_IOERR;
    if (length === 0) return VIRTIO_BLK_S_OK;
    try {
      const d = this.data.readable(c);
      d.skipExact(BLK_HEADER_BYTES);
      d.toBackend(this.backend, sector * SECTOR_BYTES, length);
    } catch (e) {
      return this.backendFailed(e, 'write');
    }
    this.stats.bytesWritten += length;
    return this.writeThrough ? this.flush() : VIRTIO_BLK_S_OK;
  }

  private flush(): number {
    try {
      this.backend.flush();
    } catch (e) {
      return this.backendFailed(e, 'flush');
    }
    this.stats.flushes++;
    return VIRTIO_BLK_S_OK;
  }

  /** DISCARD or WRITE_ZEROES: check every segment, then run them in order. */
  private eraseSegments(c: DescriptorChain, discard: boolean, count: number): number {
    // §5.2.6.2: a read-only device fails modifying requests with IOERR.
    if (this.backend.readOnly) return VIRTIO_BLK_S_IOERR;
    // §5.2.6.1: at most max_discard_seg / max_write_zeroes_seg segments.
    if (count > (discard ? this.limits.maxDiscardSegments : this.limits.maxWriteZeroesSegments))
      return VIRTIO_BLK_S_IOERR;
    const r = this.reader.reset(c);
    r.skipExact(BLK_HEADER_BYTES);
    r.readExact(this.segments, 0, count * BLK_SEGMENT_BYTES);
    const v = this.segmentView;
    for (let i = 0; i < count; i++) {
      const flags = v.getUint32(i * BLK_SEGMENT_BYTES + 12, true);
      // §5.2.6.2: UNSUPP for any unknown flag, and for unmap on a discard.
      if ((flags & ~VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP) !== 0) return VIRTIO_BLK_S_UNSUPP;
      if (discard && flags !== 0) return VIRTIO_BLK_S_UNSUPP;
    }
    const maxSectors = discard ? this.limits.maxDiscardSectors : this.limits.maxWriteZeroesSectors;
    for (let i = 0; i < count; i++) {
      const o = i * BLK_SEGMENT_BYTES;
      const n = v.getUint32(o + 8, true);
      // §5.2.4 limits and §5.2.6.1: nothing beyond max_*_sectors or beyond capacity.
      if (n > maxSectors || !this.inRange(segmentSector(v, o), n)) return VIRTIO_BLK_S_IOERR;
    }
    const b = this.backend;
    try {
      for (let i = 0; i < count; i++) {
        const o = i * BLK_SEGMENT_BYTES;
        const n = v.getUint32(o + 8, true);
        if (n === 0) continue;
        const at = segmentSector(v, o) * SECTOR_BYTES;
        this.spend(n * SECTOR_BYTES);
        if (discard) b.discard(at, n * SECTOR_BYTES);
        else
          b.writeZeroes(
            at,
            n * SECTOR_BYTES,
            (v.getUint32(o + 12, true) & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP) !== 0,
          );
      }
    } catch (e) {
      // §5.2.6: after an IOERR the segments' state is indeterminate.
      return this.backendFailed(e, discard ? 'discard' : 'write zeroes');
    }
    return this.writeThrough ? this.flush() : VIRTIO_BLK_S_OK;
  }

  /** A backend call threw: the request fails with IOERR; guest-caused errors go on up. */
  private backendFailed(e: unknown, op: string): number {
    if (isVirtqError(e)) throw e;
    this.stats.backendErrors++;
    this.lastBackendError = e;
    this.logger.warn(`block backend ${op} failed; request completed with IOERR`, {
      error: e instanceof Error ? e.message : String(e),
    });
    return VIRTIO_BLK_S_IOERR;
  }

  protected override saveDevice(): BlockState {
    return {
      capacity: this.capacitySectors,
      stats: { ...this.stats },
      // Under way on the backend, and revived by a restore but not yet served again.
      inFlight: [...this.transfers.underWay(), ...this.revived.save()],
    };
  }

  /**
   * See `VirtioDevice.queueStopped`: the driver stopped using queue `index` (MMIO QueueReady
   * 0). Requests revived from it are dropped, and so are completions written to it and not yet
   * published (publishing would touch a ring the device must leave alone).
   */
  queueStopped(index: number): void {
    this.transfers.queueStopped(index);
    this.revived.drop(index);
  }

  protected override prepareDevice(state: unknown, ctx: DeviceContext | null): () => void {
    const s = readBlockState(state, this.queueMaxSizes.length, Math.max(...this.queueMaxSizes));
    const revived = reviveBlockRequests(s.inFlight ?? [], ctx);
    return () => {
      Object.assign(this.stats, s.stats);
      // Served by the pass over every ring that follows a restore (before new requests).
      this.revived.set(revived);
      // The backend may have changed size while the snapshot was stored: tell the driver (a
      // new configuration generation, §2.5.1, even before DRIVER_OK: a driver between
      // reading the configuration and DRIVER_OK may have read the old capacity; and an
      // interrupt once it is live).
      if (s.capacity !== this.capacitySectors)
        this.updateConfig(BLK_CONFIG.CAPACITY, capacityBytes(this.capacitySectors));
    };
  }
}

function segmentSector(v: DataView, o: number): number {
  return joinU64(v.getUint32(o, true), v.getUint32(o + 4, true));
}
