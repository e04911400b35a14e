import { hasFeature } from '../devices/device.js';
import type { GuestAllocator } from '../driver/allocator.js';
import { ConsoleGuestDriver } from '../driver/devices/console.js';
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
export const DRAIN_MS = 5000;

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

export function describeNegotiated(report: DeviceReport, f: bigint): void {
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

/** Byte-for-byte equality. */
export function equal(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
