/**
 * What the demo's simulated guest does with each device: a guest driver per device, talking
 * to the device only through its virtio-mmio registers and the rings in guest memory, and
 * checking every answer.
 */
import { readSync } from 'node:fs';
import { VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO } from '../devices/block/device.js';
import { SECTOR_BYTES, VIRTIO_BLK_S_OK } from '../devices/block/request.js';
import { featureBit, hasFeature } from '../devices/device.js';
import {
  VIRTIO_NET_F_MAC,
  VIRTIO_NET_F_MRG_RXBUF,
  VIRTIO_NET_F_STATUS,
} from '../devices/net/request.js';
import type { GuestAllocator } from '../driver/allocator.js';
import { BlockDriver, type BlockDriverRequest } from '../driver/devices/block.js';
import { ConsoleGuestDriver } from '../driver/devices/console.js';
import { NetGuestDriver } from '../driver/devices/net.js';
import type { InterruptWaiter } from '../driver/devices/waiter.js';
import type { MmioBus, MmioGuestDriver } from '../driver/mmio.js';
import {
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_IN_ORDER,
  VIRTIO_F_INDIRECT_DESC,
  VIRTIO_F_RING_PACKED,
} from '../queue/constants.js';
import type { DemoDevice, DeviceReport } from './demo-protocol.js';

/** One device as the guest sees it: its registers, a slot of guest RAM, and how to wait for it. */
export interface GuestDevice {
  /** The transport's register window. */
  bus: MmioBus;
  /** The generic driver over `bus` (device drivers that build their own use `bus` and `alloc`). */
  mmio: MmioGuestDriver;
  alloc: GuestAllocator;
  waiter: InterruptWaiter;
}

/** A guest driver's job in one phase. */
export interface Workload {
  readonly report: DeviceReport;
  /** Probes, negotiates `wanted` (ring features) and starts the device. */
  init(wanted: bigint): void;
  /** Drives the device until `deadline` (performance.now()), then collects what is in flight. */
  run(deadline: number, tick: () => void): Promise<void>;
  /** Resets the device (the guest is done with it). */
  finish(): void;
}

/** Gives other tasks of the guest thread (other drivers, the progress timer) a turn. */
export function pause(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/** Waits (in rounds of the device's waiter) for at most this long when draining. */
const DRAIN_MS = 5000;

export function emptyReport(device: DemoDevice): DeviceReport {
  return {
    device,
    ring: 'none',
    features: '',
    requests: 0,
    bytes: 0,
    errors: 0,
    failure: null,
    note: '',
  };
}

/** "EVENT_IDX INDIRECT" for the ring features in `f`. */
export function ringFeatureNames(f: bigint): string {
  const names: string[] = [];
  if (hasFeature(f, VIRTIO_F_EVENT_IDX)) names.push('EVENT_IDX');
  if (hasFeature(f, VIRTIO_F_INDIRECT_DESC)) names.push('INDIRECT');
  if (hasFeature(f, VIRTIO_F_IN_ORDER)) names.push('IN_ORDER');
  return names.length === 0 ? '-' : names.join(' ');
}

function describeNegotiated(report: DeviceReport, f: bigint): void {
  report.ring = hasFeature(f, VIRTIO_F_RING_PACKED) ? 'packed' : 'split';
  report.features = ringFeatureNames(f);
}

/** A small, fast, deterministic generator (xorshift32). */
export class Xorshift {
  constructor(private s: number) {
    if (this.s === 0) this.s = 0x9e3779b9;
  }
  next(): number {
    let x = this.s;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.s = x >>> 0;
    return this.s;
  }
  below(n: number): number {
    return this.next() % n;
  }
}

// ---- rng ----

/**
 * virtio-rng: keeps the request queue full of 256-byte device-writable buffers (through an
 * indirect table when negotiated) and checks that every request comes back filled.
 */
export class RngWorkload implements Workload {
  readonly report = emptyReport('rng');
  private features = 0n;
  private base = 0;

  constructor(private readonly dev: GuestDevice) {}

  init(wanted: bigint): void {
    const m = this.dev.mmio;
    m.probe();
    this.features = m.negotiate(wanted);
    describeNegotiated(this.report, this.features);
    const q = m.setupQueue(0, 128);
    // One 512-byte slot per ring entry: the buffer, then its indirect table.
    this.base = m.alloc.alloc(q.size * 512, 4096);
    m.start();
    this.report.note = 'every answer filled in full';
  }

  async run(deadline: number, tick: () => void): Promise<void> {
    const m = this.dev.mmio;
    const q = m.queues[0]!;
    const len = 256;
    const indirect = hasFeature(this.features, VIRTIO_F_INDIRECT_DESC);
    const slots = q.size;
    const free: number[] = [];
    for (let s = slots - 1; s >= 0; s--) free.push(s);
    const slotOf = new Int32Array(slots * 2).fill(-1);
    let inflight = 0;
    let rounds = 0;
    let drainUntil = 0;
    for (;;) {
      const now = performance.now();
      const submitting = now < deadline;
      if (!submitting && inflight === 0) break;
      if (!submitting && drainUntil === 0) drainUntil = now + DRAIN_MS;
      if (drainUntil !== 0 && now > drainUntil)
        throw new Error(`${inflight} entropy requests never came back`);
      let added = 0;
      while (submitting && free.length > 0 && q.numFree > 0) {
        const s = free.pop()!;
        const at = this.base + s * 512;
        this.dev.mmio.memory.writeU32(at, 0);
        const buf = [{ addr: at, len }];
        const id = indirect ? q.addIndirect(at + len, [], buf) : q.add([], buf);
        slotOf[id] = s;
        inflight++;
        added++;
      }
      if (added > 0) m.kick(0);
      let got = 0;
      for (let id = q.popUsed(); id >= 0; id = q.popUsed()) {
        const s = slotOf[id]!;
        if (s < 0)
          throw new Error(`the device returned entropy request ${id}, which was not in flight`);
        slotOf[id] = -1;
        free.push(s);
        inflight--;
        got++;
        this.report.requests++;
        const n = q.lastUsedLen;
        this.report.bytes += n;
        if (n !== len) this.report.errors++;
      }
      tick();
      if (got === 0 && inflight > 0) await this.dev.waiter.wait();
      else if ((++rounds & 15) === 0) await pause();
    }
  }

  finish(): void {
    this.dev.mmio.reset();
  }
}

// ---- block ----

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

// ---- console ----

/** Printable bytes, so the stream would make sense on a terminal too. */
function printable(rand: Xorshift): number {
  return 0x20 + rand.below(0x5f);
}

/**
 * virtio-console: writes a stream of printable bytes to port 0 (at most 32 KiB ahead of what
 * came back) through a backend that echoes it as input, and checks that the input is the
 * same stream, byte for byte.
 */
export class ConsoleWorkload implements Workload {
  readonly report = emptyReport('console');
  private readonly driver: ConsoleGuestDriver;

  constructor(
    private readonly dev: GuestDevice,
    private readonly seed: number,
  ) {
    this.driver = new ConsoleGuestDriver(dev.bus, dev.mmio.memory, dev.alloc, {
      waiter: dev.waiter,
      queueSize: 64,
    });
  }

  init(wanted: bigint): void {
    describeNegotiated(this.report, this.driver.init(wanted));
    this.report.note = 'output echoed back as input by the backend, checked byte for byte';
  }

  async run(deadline: number, tick: () => void): Promise<void> {
    const d = this.driver;
    const sizes = new Xorshift(this.seed ^ 0x5a5a5a5a);
    const out = new Xorshift(this.seed);
    const expect = new Xorshift(this.seed);
    const chunk = new Uint8Array(4096);
    let chunkLen = 0;
    let chunkAt = 0;
    let written = 0;
    let echoed = 0;
    let rounds = 0;
    let drainUntil = 0;
    const ahead = 32 * 1024;
    for (;;) {
      const now = performance.now();
      const submitting = now < deadline;
      if (!submitting && echoed === written && d.txPending === 0) break;
      if (!submitting && drainUntil === 0) drainUntil = now + DRAIN_MS;
      if (drainUntil !== 0 && now > drainUntil)
        throw new Error(`${written - echoed} bytes never came back`);
      let progressed = false;
      if (submitting && written - echoed < ahead) {
        if (chunkAt === chunkLen) {
          chunkLen = 1 + sizes.below(chunk.length);
          for (let i = 0; i < chunkLen; i++) chunk[i] = printable(out);
          chunkAt = 0;
        }
        const n = d.tryWrite(chunk.subarray(chunkAt, chunkLen));
        if (n > 0) {
          chunkAt += n;
          written += n;
          this.report.requests += Math.ceil(n / 1024);
          progressed = true;
        }
      }
      const input = d.tryRead();
      if (input !== null) {
        for (let i = 0; i < input.length; i++) {
          if (input[i] !== printable(expect)) {
            this.report.errors++;
            throw new Error(`console byte ${echoed + i} differs from what the guest wrote`);
          }
        }
        echoed += input.length;
        this.report.bytes += input.length;
        progressed = true;
      } else if (!submitting && d.txPending > 0) {
        await d.flush();
      }
      tick();
      if (!progressed) await this.dev.waiter.wait();
      else if ((++rounds & 15) === 0) await pause();
    }
  }

  finish(): void {
    this.driver.reset();
  }
}

// ---- net ----

const ETHERTYPE_DEMO = 0x88b5; // IEEE local experimental
const FRAME_HEADER = 14;

/**
 * virtio-net: two devices joined by an in-process cable; each guest driver sends frames of
 * random length (60 to 1514 bytes) to the other, at most 64 ahead, and checks that every
 * frame arrives once, in order, with its bytes intact.
 */
export class NetWorkload implements Workload {
  readonly report = emptyReport('net');
  private readonly a: NetGuestDriver;
  private readonly b: NetGuestDriver;

  constructor(
    private readonly devs: [GuestDevice, GuestDevice],
    private readonly seed: number,
  ) {
    const [a, b] = devs;
    this.a = new NetGuestDriver(a.bus, a.mmio.memory, a.alloc, {
      waiter: a.waiter,
      queueSize: 128,
    });
    this.b = new NetGuestDriver(b.bus, b.mmio.memory, b.alloc, {
      waiter: b.waiter,
      queueSize: 128,
    });
  }

  init(wanted: bigint): void {
    const net =
      wanted |
      featureBit(VIRTIO_NET_F_MAC) |
      featureBit(VIRTIO_NET_F_STATUS) |
      featureBit(VIRTIO_NET_F_MRG_RXBUF);
    const fa = this.a.init(net);
    this.b.init(net);
    describeNegotiated(this.report, fa);
    if (this.a.mac === null || this.b.mac === null)
      throw new Error('the net devices did not offer MAC addresses');
    if (!this.a.linkUp || !this.b.linkUp) throw new Error('the link is down');
    this.report.note =
      'frames of 60 to 1514 bytes both ways over the cable, each checked once, in order';
  }

  async run(deadline: number, tick: () => void): Promise<void> {
    // `frame` holds the next frame to send (`len` bytes; 0: not made yet): a frame the
    // driver had no room for is offered again as it was.
    const end = (drv: NetGuestDriver, peer: NetGuestDriver, txSeed: number, rxSeed: number) => ({
      drv,
      peer,
      tx: new Xorshift(txSeed),
      rx: new Xorshift(rxSeed),
      frame: new Uint8Array(1514),
      len: 0,
      sent: 0,
      got: 0,
    });
    const ends = [
      end(this.a, this.b, this.seed, this.seed + 1),
      end(this.b, this.a, this.seed + 1, this.seed),
    ];
    const want = new Uint8Array(1514);
    let rounds = 0;
    let drainUntil = 0;
    const waiters = [this.devs[0].waiter, this.devs[1].waiter];
    for (;;) {
      const now = performance.now();
      const submitting = now < deadline;
      const inflight = ends[0]!.sent - ends[1]!.got + (ends[1]!.sent - ends[0]!.got);
      if (!submitting && inflight === 0) break;
      if (!submitting && drainUntil === 0) drainUntil = now + DRAIN_MS;
      if (drainUntil !== 0 && now > drainUntil) throw new Error(`${inflight} frames never arrived`);
      let progressed = false;
      for (let e = 0; e < 2; e++) {
        const me = ends[e]!;
        const other = ends[1 - e]!;
        // Send: at most 64 frames ahead of what the other end received.
        while (submitting && me.sent - other.got < 64) {
          if (me.len === 0) me.len = makeFrame(me.frame, me.peer.mac!, me.drv.mac!, me.sent, me.tx);
          if (!me.drv.trySend(me.frame.subarray(0, me.len))) break;
          me.len = 0;
          me.sent++;
          progressed = true;
        }
        // Receive what the other end sent, in order.
        for (let f = me.drv.tryReceive(); f !== null; f = me.drv.tryReceive()) {
          const len = makeFrame(want, me.drv.mac!, me.peer.mac!, me.got, me.rx);
          if (!equal(f.data, want.subarray(0, len))) {
            this.report.errors++;
            throw new Error(
              `frame ${me.got} to ${e === 0 ? 'A' : 'B'} arrived damaged or out of order`,
            );
          }
          me.got++;
          this.report.requests++;
          this.report.bytes += len;
          progressed = true;
        }
      }
      this.report.errors = this.a.rxErrors + this.b.rxErrors;
      tick();
      if (!progressed) await Promise.race([waiters[0]!.wait(), waiters[1]!.wait()]);
      else if ((++rounds & 15) === 0) await pause();
    }
  }

  finish(): void {
    this.a.reset();
    this.b.reset();
  }
}

/** Frame `seq` of a stream: Ethernet header, the sequence number, then bytes from `rand`. */
function makeFrame(
  out: Uint8Array,
  dst: Uint8Array,
  src: Uint8Array,
  seq: number,
  rand: Xorshift,
): number {
  const len = 60 + rand.below(1514 - 60 + 1);
  out.set(dst, 0);
  out.set(src, 6);
  out[12] = ETHERTYPE_DEMO >> 8;
  out[13] = ETHERTYPE_DEMO & 0xff;
  new DataView(out.buffer, out.byteOffset).setUint32(FRAME_HEADER, seq, true);
  for (let i = FRAME_HEADER + 4; i < len; i++) out[i] = rand.next() & 0xff;
  return len;
}

function equal(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
