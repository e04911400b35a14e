/**
 * virtio-blk 4 KiB random read and write IOPS through the virtio-mmio transport, with the
 * in-memory backend, driver and device on one thread (the device runs inside the driver's
 * notification write).
 *
 * One round: the driver makes `qd` requests available (4 KiB each, at random 4 KiB-aligned
 * sectors of a 64 MiB disk), notifies once, and collects the `qd` completions, checking every
 * status byte. EVENT_IDX is negotiated.
 *
 * Output: `virtq blk op=<read|write> ring=<split|packed> qd=<n> iops=<n> ns_per_io=<float>
 * checksum=<n>`, from the best of 5 runs of at least 0.5 s after a warm-up; the checksum sums
 * the sectors served, so a run that skipped requests cannot print a plausible figure.
 *
 * The pieces are exported for a two-thread variant: {@link createBlockDeviceSide} builds the
 * device and its transport over a given (shared) guest memory, {@link BlockBenchDriver} is the
 * driver half over any {@link MmioBus}, with {@link BlockBenchDriver.post} and
 * {@link BlockBenchDriver.reap} separate so a worker runner can wait in between.
 */

import {
  BlockDevice,
  MemoryBackend,
  VIRTIO_BLK_S_OK,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
} from '../../src/devices/block/index.js';
import { featureBit } from '../../src/devices/device.js';
import { GuestAllocator } from '../../src/driver/allocator.js';
import { type MmioBus, MmioGuestDriver } from '../../src/driver/mmio.js';
import type { DriverQueue } from '../../src/driver/queue.js';
import type { DriverBuffer } from '../../src/driver/split.js';
import { GuestMemory } from '../../src/memory/index.js';
import {
  silentLogger,
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_RING_PACKED,
  VIRTIO_F_VERSION_1,
} from '../../src/queue/index.js';
import { MmioTransport } from '../../src/transport/mmio.js';
import { type BenchCase, bestOf, describeRuns, fmt, nsPerUnit } from '../lib/harness.js';

export interface BlockBenchOptions {
  op: 'read' | 'write';
  ring: 'split' | 'packed';
  /** Requests in flight per round. */
  qd: number;
  eventIdx?: boolean;
  /** Disk size in bytes (default 64 MiB). */
  diskBytes?: number;
  /** Queue size (default 256). */
  queueSize?: number;
}

/** Guest memory the rig needs: rings, and one header/status/4 KiB data slot per request. */
export const BLOCK_BENCH_MEMORY_BYTES = 4 << 20;
const IO_BYTES = 4096;

/** The device half: a BlockDevice over a MemoryBackend behind an MmioTransport on `memory`. */
export function createBlockDeviceSide(
  memory: GuestMemory,
  o: BlockBenchOptions,
): { device: BlockDevice; transport: MmioTransport; backend: MemoryBackend } {
  const backend = new MemoryBackend(o.diskBytes ?? 64 << 20);
  const device = new BlockDevice({ backend, queueSize: o.queueSize ?? 256, logger: silentLogger });
  const transport = new MmioTransport(device, memory, { logger: silentLogger });
  return { device, transport, backend };
}

/**
 * The driver half: negotiates, sets up queue 0 and `qd` request slots, then posts rounds of
 * random 4 KiB requests and reaps their completions. Allocates nothing per request.
 */
export class BlockBenchDriver {
  readonly guest: MmioGuestDriver;
  private queue: DriverQueue | null = null;
  private readonly headers: number[] = [];
  private readonly statuses: number[] = [];
  private readonly readable: DriverBuffer[][] = [];
  private readonly writable: DriverBuffer[][] = [];
  private readonly sectorOfId: Float64Array;
  private readonly slotOfId: Int32Array;
  private readonly blocks: number;
  private rng = 0x9e3779b9;
  /** Requests completed, and the sum of their sectors. */
  completed = 0;
  checksum = 0;

  constructor(
    bus: MmioBus,
    readonly memory: GuestMemory,
    readonly options: BlockBenchOptions,
  ) {
    this.guest = new MmioGuestDriver(bus, memory, new GuestAllocator(memory, 0x1000, memory.size));
    this.sectorOfId = new Float64Array(options.queueSize ?? 256);
    this.slotOfId = new Int32Array(options.queueSize ?? 256);
    this.blocks = Math.floor((options.diskBytes ?? 64 << 20) / IO_BYTES);
  }

  setup(): void {
    const o = this.options;
    const g = this.guest;
    const wanted =
      (o.ring === 'packed' ? featureBit(VIRTIO_F_RING_PACKED) : 0n) |
      (o.eventIdx === false ? 0n : featureBit(VIRTIO_F_EVENT_IDX));
    g.negotiate(wanted | featureBit(VIRTIO_F_VERSION_1));
    this.queue = g.setupQueue(0, o.queueSize ?? 256);
    if (o.qd * 3 > this.queue.size)
      throw new RangeError(`qd ${o.qd} needs ${o.qd * 3} descriptors`);
    for (let i = 0; i < o.qd; i++) {
      const data = g.alloc.alloc(IO_BYTES, 4096);
      const header = g.alloc.alloc(16, 16);
      const status = g.alloc.alloc(1, 16);
      this.memory.writeU32(header, o.op === 'read' ? VIRTIO_BLK_T_IN : VIRTIO_BLK_T_OUT);
      this.headers.push(header);
      this.statuses.push(status);
      const h = { addr: header, len: 16 };
      const d = { addr: data, len: IO_BYTES };
      const s = { addr: status, len: 1 };
      this.readable.push(o.op === 'read' ? [h] : [h, d]);
      this.writable.push(o.op === 'read' ? [d, s] : [s]);
    }
    g.start();
  }

  private nextSector(): number {
    let x = this.rng;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.rng = x >>> 0;
    return (this.rng % this.blocks) * (IO_BYTES / 512);
  }

  /** Makes `qd` requests available and notifies (when the device asks for it). */
  post(): void {
    const q = this.queue!;
    const m = this.memory;
    for (let i = 0; i < this.options.qd; i++) {
      const sector = this.nextSector();
      m.writeU64(this.headers[i]! + 8, sector);
      m.writeU8(this.statuses[i]!, 0xff);
      const id = q.add(this.readable[i]!, this.writable[i]!);
      this.sectorOfId[id] = sector;
      this.slotOfId[id] = i;
    }
    this.guest.kick(0);
  }

  /** Collects completions; returns how many. Throws on any status but OK. */
  reap(): number {
    const q = this.queue!;
    this.guest.ackInterrupt();
    let n = 0;
    for (let id = q.popUsed(); id >= 0; id = q.popUsed()) {
      if (this.memory.readU8(this.statuses[this.slotOfId[id]!]!) !== VIRTIO_BLK_S_OK)
        throw new Error('block request failed');
      n++;
      this.checksum += this.sectorOfId[id]!;
    }
    this.completed += n;
    return n;
  }
}

/** Device and driver on one thread over one guest memory; `step(rounds)` runs whole rounds. */
export function createBlockBenchRig(o: BlockBenchOptions) {
  const memory = GuestMemory.create(BLOCK_BENCH_MEMORY_BYTES);
  const side = createBlockDeviceSide(memory, o);
  const driver = new BlockBenchDriver(side.transport, memory, o);
  driver.setup();
  return {
    ...side,
    memory,
    driver,
    step(rounds: number): void {
      for (let r = 0; r < rounds; r++) {
        driver.post();
        if (driver.reap() !== o.qd) throw new Error('a round did not complete');
      }
    },
  };
}

function blockCase(op: 'read' | 'write', ring: 'split' | 'packed', qd: number): BenchCase {
  return {
    name: `blk/${op}/${ring}/qd=${qd}`,
    run(ctx) {
      const rig = createBlockBenchRig({ op, ring, qd });
      const m = bestOf((rounds) => rig.step(rounds), { chunk: Math.max(16, 256 / qd) });
      if (rig.device.stats.requests !== rig.driver.completed || rig.device.needsReset) {
        throw new Error('device and driver disagree on the requests served');
      }
      const ns = nsPerUnit(m, qd);
      ctx.log(`blk ${op} ${ring} qd=${qd}: ${describeRuns(m, qd)}`);
      return `virtq blk op=${op} ring=${ring} qd=${qd} iops=${Math.round(1e9 / ns)} ns_per_io=${fmt(ns)} checksum=${rig.driver.checksum}`;
    },
  };
}

export const cases: BenchCase[] = (['read', 'write'] as const).flatMap((op) =>
  (['split', 'packed'] as const).flatMap((ring) => [1, 16].map((qd) => blockCase(op, ring, qd))),
);
